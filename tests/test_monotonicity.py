"""Certified monotonicity: never certified where a sampled partial derivative has the wrong sign."""

from __future__ import annotations

import torch
from torch import nn

from lipbound.monotonicity import certify_monotonicity


def _positive_net() -> nn.Module:
    """Non-negative weights and monotone activations: non-decreasing in every feature everywhere."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    for m in net:
        if isinstance(m, nn.Linear):
            m.weight.data.abs_()
    net[0].weight.data[:, 2] = 0.0  # feature 2 is ignored: bounds [-1e-13, 1e-13] (rounding), not certified
    return net.eval()


def test_positive_net_is_certified_increasing():
    x0 = torch.rand(4, 3, dtype=torch.float64)
    r = certify_monotonicity(_positive_net(), x0, 0.5)
    assert r.increasing.shape == (4, 1, 3)
    assert r.increasing[..., :2].all()
    assert not r.decreasing.any()
    # an unused feature: its derivative is 0, but the rigorous bounds straddle 0 by the rounding pad, and no
    # tolerance may turn that into a certificate (a tolerance certified -1e-8 derivatives in the fuzz campaign)
    assert not r.increasing[..., 2].any() and not r.violated_increasing[..., 2].any()
    assert (r.lower[..., 2] <= 0).all() and (r.lower[..., 2] > -1e-12).all()
    assert not r.violated_increasing.any()
    assert (r.lower[..., :2] > 0).all()


def test_never_certified_against_a_counterexample_and_bisection_helps():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).double().eval()
    x0 = torch.rand(6, 2, dtype=torch.float64)
    plain = certify_monotonicity(net, x0, 0.2)
    split = certify_monotonicity(net, x0, 0.2, bisections=4)
    for r in (plain, split):
        assert not (r.increasing & r.violated_increasing).any()
        assert not (r.decreasing & r.violated_decreasing).any()
    assert (split.lower >= plain.lower - 1e-9).all() and (split.upper <= plain.upper + 1e-9).all()
    assert split.increasing.sum() + split.decreasing.sum() >= plain.increasing.sum() + plain.decreasing.sum()
    assert split.parts == 16
