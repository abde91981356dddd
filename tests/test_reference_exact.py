"""The independent references agree with each other: MILP == region enumeration on tiny ReLU nets, and both are
>= sampled gradient norms (and <= the global product bound)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.reference.exact import (
    dual_norm,
    enumerate_regions,
    exact_local_lipschitz_milp,
    exact_local_lipschitz_milp_solution,
    global_lipschitz_upper,
    sampled_gradient_norm,
)
from tests.reference.nets import tiny_relu_mlp

CASES = [  # (layer sizes, seed, eps, margin c or None)
    ((2, 4, 4, 1), 1, 0.3, None),
    ((2, 6, 6, 1), 2, 1.0, None),
    ((2, 6, 6, 1), 5, 0.3, None),
    ((3, 5, 4, 2), 2, 1.0, (1.0, -1.0)),
    ((3, 6, 6, 2), 7, 0.5, (1.0, -1.0)),
    ((1, 8, 1), 3, 1.0, None),
    ((4, 3, 3, 3, 1), 4, 0.8, None),
]


def _box(sizes, seed, eps):
    x0 = np.random.default_rng(seed).normal(size=sizes[0])
    return x0 - eps, x0 + eps


@pytest.mark.parametrize(("sizes", "seed", "eps", "c"), CASES)
def test_milp_equals_enumeration(sizes, seed, eps, c):
    model, w, b = tiny_relu_mlp(sizes, seed)
    lo, hi = _box(sizes, seed, eps)
    c_np = None if c is None else np.asarray(c)
    regions, _ = enumerate_regions(w, b, lo, hi, c_np)
    assert len(regions) >= 1
    for norm in ("inf", "1"):
        enum = max(float(dual_norm(r.gradient, norm)) for r in regions)
        milp = exact_local_lipschitz_milp(w, b, lo, hi, c_np, norm)
        assert milp == pytest.approx(enum, rel=1e-7, abs=1e-9), (sizes, seed, norm)
    # the l2 value: every region gradient is attained, the sampled max cannot exceed the enumeration
    c_t = None if c is None else torch.tensor(c, dtype=torch.float64)
    xl, xh = torch.tensor(lo)[None], torch.tensor(hi)[None]
    for norm in ("inf", 2, 1):
        enum = max(float(dual_norm(r.gradient, norm)) for r in regions)
        samp = sampled_gradient_norm(model, xl, xh, c_t, norm, n=3000).item()
        glob = global_lipschitz_upper(model, (sizes[0],), norm, c_t).item()
        assert samp <= enum * (1 + 1e-9) + 1e-12, (sizes, seed, norm, samp, enum)
        assert enum <= glob * (1 + 1e-9), (sizes, seed, norm, enum, glob)
        # dense sampling in low dimension finds (nearly) the exact value: the references are not vacuous
        if sizes[0] <= 2:
            assert samp >= 0.9 * enum, (sizes, seed, norm, samp, enum)


def test_milp_maximiser_is_a_point_of_the_box():
    model, w, b = tiny_relu_mlp((2, 8, 8, 1), 11)
    lo, hi = _box((2,), 11, 0.7)
    sol = exact_local_lipschitz_milp_solution(w, b, lo, hi, None, "inf")
    assert np.all(sol.x >= lo - 1e-9) and np.all(sol.x <= hi + 1e-9)
    assert sol.value == pytest.approx(sol.objective, rel=1e-6)
    # near the maximiser, inside its region, autograd reproduces the value (general position)
    xs = torch.tensor(sol.x)[None] + 1e-7 * torch.randn(
        64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    xs = torch.minimum(torch.maximum(xs, torch.tensor(lo)), torch.tensor(hi)).requires_grad_(True)
    (g,) = torch.autograd.grad(model(xs).sum(), xs)
    assert g.abs().sum(dim=1).max().item() == pytest.approx(sol.value, rel=1e-6)


def test_enumeration_matches_a_hand_computed_net():
    """f(x) = relu(x) - 2 relu(x - 1) on [-1, 2]: gradients 0, 1, -1 -> Clarke max |f'| = 1; on [-1, 0.5]: 1."""
    w = [np.array([[1.0], [1.0]]), np.array([[1.0, -2.0]])]
    b = [np.array([0.0, -1.0]), np.array([0.0])]
    regions, _ = enumerate_regions(w, b, np.array([-1.0]), np.array([2.0]))
    grads = sorted(float(r.gradient[0]) for r in regions)
    assert grads == pytest.approx([-1.0, 0.0, 1.0])
    assert exact_local_lipschitz_milp(w, b, np.array([-1.0]), np.array([2.0])) == pytest.approx(1.0)
    # f(x) = relu(x) + relu(x - 1) on [0.5, 2]: slopes 1 and 2 -> 2
    w2 = [np.array([[1.0], [1.0]]), np.array([[1.0, 1.0]])]
    assert exact_local_lipschitz_milp(w2, b, np.array([0.5]), np.array([2.0])) == pytest.approx(2.0)
    assert exact_local_lipschitz_milp(w2, b, np.array([-2.0]), np.array([0.5])) == pytest.approx(1.0)
