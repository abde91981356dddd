"""The attained lower bound's contract, checked independently: the witness ``lower_point`` lies in the box (also
when ``lo + (hi - lo)`` rounds above ``hi``), and ``lower`` never exceeds the exact (rational) Lipschitz constant,
also for a float32 model bound in float32 with large cancelling weights (regressions found by ``scripts/fuzz.py``).
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn


def _box_with_rounding_up(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate ``[lo, hi]`` (float64) with ``lo + (hi - lo) > hi`` in floating point.

    Candidates ``i / 97, j / 89`` on a grid: about a fifth of the pairs round up (checked when built).
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = [], []
    while len(lo) < d:
        i = int(torch.randint(-300, 300, (), generator=gen))
        j = i + int(torch.randint(1, 300, (), generator=gen))
        a, b = i / 97.0, j / 89.0
        if a < b and a + (b - a) > b:
            lo.append(a)
            hi.append(b)
    return torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)


def test_lower_point_stays_inside_the_box(lip):
    xl, xu = _box_with_rounding_up(3, 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    for norm in ("inf", 2, 1):
        r = lip.local_lipschitz(model, x_lower=xl, x_upper=xu, norm=norm)
        pt = r.lower_point.reshape(1, -1)
        assert bool(((pt >= xl) & (pt <= xu)).all()), (norm, pt - xu)
        assert r.lower.item() > 0
    # the maximiser is the corner x_upper (every ReLU active only within 1e-9 of the top of its side), which the
    # vertex samples lo + (hi - lo) reach only up to rounding: they must be clamped into the box
    corner = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        corner[0].weight.copy_(torch.eye(3, dtype=torch.float64))
        corner[0].bias.copy_(-(xu - 1e-9 * (xu - xl)).reshape(-1))
        corner[2].weight.fill_(1.0)
    r = lip.local_lipschitz(corner, x_lower=xl, x_upper=xu, norm="inf")
    pt = r.lower_point.reshape(1, -1)
    assert r.lower.item() == 3.0 and bool(((pt >= xl) & (pt <= xu)).all()), pt - xu


def _cancelling_linear(big: float, seed: int) -> nn.Sequential:
    """Linear(2, 6) -> Linear(6, 1): rows ``big v + noise`` in pairs, the second layer takes their differences."""
    gen = torch.Generator().manual_seed(seed)
    first, second = nn.Linear(2, 6), nn.Linear(6, 1)
    with torch.no_grad():
        v = torch.randn(2, generator=gen)
        for i in range(0, 6, 2):
            first.weight[i] = big * v + torch.randn(2, generator=gen)
            first.weight[i + 1] = big * v + torch.randn(2, generator=gen)
            second.weight[0, i] = float(torch.randn((), generator=gen))
            second.weight[0, i + 1] = -second.weight[0, i]
    return nn.Sequential(first, second).float().eval()


def _exact_l1_gradient(model: nn.Sequential) -> Fraction:
    w1 = [[Fraction(float(e)) for e in row] for row in model[0].weight.detach().double().tolist()]
    w2 = [Fraction(float(e)) for e in model[1].weight.detach().double()[0].tolist()]
    g = [sum((w2[i] * w1[i][j] for i in range(len(w2))), Fraction(0)) for j in range(len(w1[0]))]
    return sum((abs(e) for e in g), Fraction(0))


def test_float32_lower_does_not_exceed_the_exact_constant(lip):
    bad = 0
    for seed in range(12):
        model = _cancelling_linear(3e7, seed)
        exact = _exact_l1_gradient(model)
        x0 = torch.zeros(1, 2)
        r = lip.local_lipschitz(model, x0, 0.01, dtype=torch.float32)
        up = lip.local_lipschitz(model, x0, 0.01, dtype=torch.float32, lower=False).upper.item()
        assert Fraction(up) >= exact  # the certified bound holds for the exact network
        bad += Fraction(r.lower.item()) > exact * (1 + Fraction(1, 10**6))
    assert bad == 0, f"{bad} of 12 float32 lower bounds exceed the exact Lipschitz constant"
