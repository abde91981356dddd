"""The engine against exact local Lipschitz values of tiny ReLU nets (independent MILP / region enumeration).

For each net, box and norm with exact value ``E``: ``crown >= E``, ``crown+optimize >= E``, ``interval >= crown``
and ``lower <= E`` (lower is attained at a point of the box). The gaps ``upper / E`` are printed (``pytest -s``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.reference.exact import exact_by_enumeration, exact_local_lipschitz_milp
from tests.reference.nets import TINY_EXACT_CASES, tiny_relu_mlp

TOL = 1e-6
CASES = TINY_EXACT_CASES
NORMS = ("inf", 2, 1)


def _exact(w, b, lo, hi, c, norm) -> float:
    if norm == 2:  # not MILP-representable: enumerate regions (nets here have <= 24 ReLUs)
        return exact_by_enumeration(w, b, lo, hi, c, norm)
    return exact_local_lipschitz_milp(w, b, lo, hi, c, norm)


@pytest.mark.parametrize(("sizes", "seed", "eps", "margin"), CASES)
@pytest.mark.parametrize("norm", NORMS)
def test_engine_against_exact_value(lip, sizes, seed, eps, margin, norm):
    model, w, b = tiny_relu_mlp(sizes, seed)
    x0 = torch.tensor(np.random.default_rng(seed).normal(size=(1, sizes[0])))
    lo, hi = (x0 - eps)[0].numpy(), (x0 + eps)[0].numpy()
    c = None
    if margin is not None:
        c = torch.zeros(sizes[-1], dtype=torch.float64)
        c[margin[0]], c[margin[1]] = 1.0, -1.0
    exact = _exact(w, b, lo, hi, None if c is None else c.numpy(), norm)

    crown = lip.local_lipschitz(model, x0, eps, norm=norm, c=c)
    interval = lip.local_lipschitz(model, x0, eps, norm=norm, c=c, method="interval", lower=False)
    alpha = lip.local_lipschitz(model, x0, eps, norm=norm, c=c, optimize=True, lower=False)
    up, ib, op, low = crown.upper.item(), interval.upper.item(), alpha.upper.item(), crown.lower.item()
    name = f"{'-'.join(map(str, sizes))} seed={seed} eps={eps} c={margin} norm={norm}"
    print(
        f"\n{name}: exact {exact:.6f} | crown {up:.6f} ({up / exact:.3f}x) | crown+opt {op:.6f} ({op / exact:.3f}x)"
        f" | interval {ib:.6f} ({ib / exact:.3f}x) | lower {low:.6f} ({low / exact:.3f}x)"
    )
    assert up >= exact - TOL * max(1.0, exact), f"UNSOUND crown: {name}: {up} < exact {exact}"
    assert op >= exact - TOL * max(1.0, exact), f"UNSOUND crown+optimize: {name}: {op} < exact {exact}"
    assert ib >= exact - TOL * max(1.0, exact), f"UNSOUND interval: {name}: {ib} < exact {exact}"
    assert ib >= up - 1e-9 * max(1.0, up), f"interval tighter than crown: {name}: {ib} < {up}"
    assert low <= exact + TOL * max(1.0, exact), f"lower not attained: {name}: {low} > exact {exact}"
