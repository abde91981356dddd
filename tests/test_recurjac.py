"""``method="interval"`` is the published RecurJac / Fast-Lip recursion (issue 8 item 6).

The engine's interval relaxation of the Jacobian gates (exact planes where the gate or the sign of the upstream
gradient is fixed, constants only where the gradient changes sign) is pinned against the independent plain-torch
recursion of :mod:`tests.reference.recurjac` on random ReLU MLPs: the elementwise Jacobian bounds and the l_inf
local bound agree to 1e-9 (relative). Both start from the same forward pre-activation bounds.
"""

from __future__ import annotations

import pytest
import torch
from tests.reference.nets import tiny_relu_mlp
from tests.reference.recurjac import recurjac_bounds, recurjac_linf

from lipbound.engine.forward import forward_bounds, relaxed_inputs
from lipbound.problem import make_problem

CASES = [
    ((4, 10, 10, 3), 0, 0.3),
    ((5, 16, 16, 16, 2), 1, 0.2),
    ((3, 8, 8, 8, 8, 1), 2, 0.5),
    ((6, 20, 20, 4), 3, 0.1),
    ((2, 12, 12, 12, 2), 4, 1.0),
]


def _problem(sizes, seed):
    model, w, _ = tiny_relu_mlp(sizes, seed)
    x0 = torch.randn(1, sizes[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = torch.zeros(sizes[-1], dtype=torch.float64)
    c[0] = 1.0
    if sizes[-1] > 1:
        c[1] = -1.0
    return model, [torch.tensor(a) for a in w], x0, c


@pytest.mark.parametrize(("sizes", "seed", "eps"), CASES)
def test_interval_method_is_recurjac(lip, sizes, seed, eps):
    model, weights, x0, c = _problem(sizes, seed)
    pr = make_problem(model, x0, eps, None, None, c, torch.float64)
    fb = forward_bounds(pr.graph, pr.xl, pr.xu)
    pre = [(fb[id(n)][0][0], fb[id(n)][1][0]) for n in relaxed_inputs(pr.graph)]
    assert len(pre) == len(sizes) - 2
    _, (ref_lo, ref_hi) = recurjac_bounds(weights, pre, c)
    ref = recurjac_linf(weights, pre, c)

    lo, hi = lip.jacobian_bounds(model, x0, eps, c=c, method="interval")
    scale = float(torch.maximum(ref_lo.abs(), ref_hi.abs()).max())
    assert torch.allclose(lo[0, 0], ref_lo, rtol=0, atol=1e-9 * scale), (lo[0, 0] - ref_lo).abs().max()
    assert torch.allclose(hi[0, 0], ref_hi, rtol=0, atol=1e-9 * scale), (hi[0, 0] - ref_hi).abs().max()

    r = lip.local_lipschitz(model, x0, eps, c=c, method="interval", use_global=False, lower=False)
    assert r.upper.item() == pytest.approx(ref, rel=1e-9)
    assert r.upper.item() >= ref  # rounding margins only widen
    crown = lip.local_lipschitz(model, x0, eps, c=c, use_global=False, lower=False)
    assert crown.upper.item() <= r.upper.item() * (1 + 1e-12)
