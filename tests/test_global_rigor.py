"""Global bounds are upper bounds of the exact real-number Lipschitz constant, rounding included (issue 7 item 1).

float32 Linear -> BatchNorm1d (eval): the exact map is ``diag(gamma / sqrt(var + eps)) W``, irrational in general.
Its l2 and l_inf operator norms are computed in 60-digit Decimal arithmetic on single-row / single-column weights
(where both are closed forms) and every global method must stay at or above them, and within 1e-9 relative
(1e-6 on compositions that cancel to 1e-6 of their terms). Without the rounding bounds of the segment matrices,
a quarter of the cancelling draws fall below the exact value.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import pytest
import torch
from torch import nn

from lipbound.global_bounds.api import METHODS, applicable, global_lipschitz
from lipbound.global_bounds.network import extract

decimal.getcontext().prec = 60


def _draw(seed: int) -> tuple[nn.Module, int, int]:
    g = torch.Generator().manual_seed(seed)
    n, m = (
        (int(torch.randint(2, 7, (1,), generator=g)), 1)
        if seed % 2
        else (1, int(torch.randint(2, 7, (1,), generator=g)))
    )
    lin = nn.Linear(n, m)
    bn = nn.BatchNorm1d(m)
    scale = 10.0 ** float(torch.randint(-3, 4, (1,), generator=g))
    with torch.no_grad():
        lin.weight.copy_(torch.randn(m, n, generator=g) * scale)
        bn.weight.copy_(torch.randn(m, generator=g) * 10.0 ** float(torch.randint(-2, 3, (1,), generator=g)))
        bn.running_var.copy_(torch.rand(m, generator=g) * 10.0 ** float(torch.randint(-4, 3, (1,), generator=g)))
        bn.running_mean.copy_(torch.randn(m, generator=g))
    return nn.Sequential(lin, bn).eval(), n, m


def _cancelling(seed: int) -> tuple[nn.Module, int, int]:
    """Linear(n, 2) -> BatchNorm1d(2) -> Linear(2, 1) = [1, -1]: two nearly equal rows that cancel (the composed
    row is ~1e-7 of its terms, so rounding of the composition is visible at the 1e-9 level)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n = int(torch.randint(2, 6, (1,), generator=g))
    lin, bn, out = nn.Linear(n, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)
    with torch.no_grad():
        row = torch.randn(n, generator=g) * 10.0 ** float(torch.randint(-2, 3, (1,), generator=g))
        lin.weight.copy_(torch.stack([row, row * (1 + 2**-20 * torch.randn(n, generator=g))]))
        var = torch.rand(1, generator=g) + 0.1
        bn.running_var.copy_(torch.cat([var, var * (1 + 2**-21)]))
        bn.weight.copy_(torch.randn(1, generator=g).expand(2))
        out.weight.copy_(torch.tensor([[1.0, -1.0]]))
    return nn.Sequential(lin, bn, out).eval(), n, 1


def _exact(model: nn.Module) -> dict[str, Decimal]:
    lin, bn = model[0], model[1]
    w = [[Decimal(float(v)) for v in row] for row in lin.weight.detach().double().tolist()]
    s = [
        Decimal(float(gm)) / (Decimal(float(var)) + Decimal(bn.eps)).sqrt()
        for gm, var in zip(bn.weight.detach().double().tolist(), bn.running_var.detach().double().tolist(), strict=True)
    ]
    a = [[s[i] * v for v in row] for i, row in enumerate(w)]
    if len(model) == 3:  # a final Linear(m, 1): one row
        w2 = [Decimal(float(v)) for v in model[2].weight.detach().double().reshape(-1).tolist()]
        a = [[sum(w2[i] * a[i][j] for i in range(len(a))) for j in range(len(a[0]))]]
    if len(a) == 1:  # one row: l2 = its l2 norm, l_inf = its l1 norm
        return {"2": sum(v * v for v in a[0]).sqrt(), "inf": sum(abs(v) for v in a[0])}
    col = [row[0] for row in a]  # one column: l2 = its l2 norm, l_inf = its largest entry
    return {"2": sum(v * v for v in col).sqrt(), "inf": max(abs(v) for v in col)}


@pytest.mark.parametrize("block", range(4))
def test_float32_linear_batchnorm_every_method_above_exact(block: int) -> None:
    """200 seeded draws (4 blocks of 50): 3/4 plain Linear -> BatchNorm1d, 1/4 the cancelling composition."""
    violations, checked = [], 0
    for seed in range(block * 50, block * 50 + 50):
        model, n, _m = _draw(seed) if seed % 4 else _cancelling(seed)
        tight = Decimal("1e-9") if seed % 4 else Decimal("1e-6")  # cancelling: terms are ~1e6 x the result
        exact = _exact(model)
        net = extract(model, (n,))
        for norm in ("2", "inf"):
            ok = applicable(net, norm)
            for method in METHODS:
                if ok[method] is not None:
                    continue
                r = global_lipschitz(net, norm, method)
                checked += 1
                if Decimal(r.upper) < exact[norm] or Decimal(r.upper) > exact[norm] * (1 + tight):
                    violations.append((seed, norm, method, r.upper, float(exact[norm])))
    assert not violations, violations[:5]
    assert checked >= 50 * 8  # every l2 method and the l_inf ones ran on every draw
