"""Certified numbers bound the EXACT real-number quantity, rounding included (exact rational references).

Cases from the soundness audit: large cancelling weights (a result-relative margin is not enough), Python constants
in float64 graphs (must not pass through float32), float32 models bounded in float64 (BatchNorm folded in float64).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from lipbound.engine.rounding import gamma, unit_roundoff


def _exact_dual_norm(g: list[Fraction], norm: str) -> Fraction:
    """||g||_q for the dual q of ``norm``; for l2 the SQUARE of the norm (compared as squares)."""
    if norm == "inf":
        return sum((abs(x) for x in g), Fraction(0))
    if norm == "1":
        return max(abs(x) for x in g)
    return sum((x * x for x in g), Fraction(0))


def _certifies(upper: float, exact: Fraction, norm: str) -> bool:
    return Fraction(upper) ** 2 >= exact if norm == "2" else Fraction(upper) >= exact


def _cancelling_pair(rng, n: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``W1`` with nearly equal rows ~1e8 and ``w2`` summing to 0: ``w2 W1`` is O(1) while ``|w2| |W1|`` is 1e8."""
    w1 = rng.normal(size=(1, n)) * 1e8 + rng.normal(size=(h, n))
    w2 = rng.normal(size=(1, h))
    w2[0, -1] = -w2[0, :-1].sum()
    return w1, w2


def _exact_gradient(w1: np.ndarray, w2: np.ndarray) -> list[Fraction]:
    h, n = w1.shape
    return [sum(Fraction(float(w2[0, j])) * Fraction(float(w1[j, i])) for j in range(h)) for i in range(n)]


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_cancelling_linear_layers(norm: str) -> None:
    rng = np.random.default_rng({"inf": 0, "2": 1, "1": 2}[norm])
    ratios = []
    for _ in range(40):
        n, h = int(rng.integers(1, 5)), int(rng.integers(2, 6))
        w1, w2 = _cancelling_pair(rng, n, h)
        model = nn.Sequential(nn.Linear(n, h), nn.Linear(h, 1)).double()
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(w1))
            model[1].weight.copy_(torch.from_numpy(w2))
        up = lipbound.local_lipschitz(model, torch.zeros(1, n, dtype=torch.float64), eps=1.0, norm=norm, lower=False)
        exact = _exact_dual_norm(_exact_gradient(w1, w2), norm)
        assert _certifies(up.upper.item(), exact, norm)
        ratios.append(up.upper.item() / (float(exact) ** 0.5 if norm == "2" else float(exact)))
    assert max(ratios) < 1 + 1e-3  # rigour costs digits only where cancellation destroyed them


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_cancelling_weights_through_active_relus(norm: str) -> None:
    """Same cancellation behind ReLUs that are active on the whole box (large biases): the relaxation path."""
    rng = np.random.default_rng(7)
    for _ in range(25):
        n, h = int(rng.integers(1, 4)), int(rng.integers(2, 5))
        w1, w2 = _cancelling_pair(rng, n, h)
        model = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, 1)).double()
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(w1))
            model[0].bias.copy_(torch.from_numpy(np.abs(w1).sum(1) * 4 + 1.0))  # every neuron active for |x| <= 1
            model[2].weight.copy_(torch.from_numpy(w2))
        x0 = torch.zeros(1, n, dtype=torch.float64)
        r = lipbound.local_lipschitz(model, x0, eps=1.0, norm=norm, lower=False)
        assert _certifies(r.upper.item(), _exact_dual_norm(_exact_gradient(w1, w2), norm), norm)


def test_python_constants_stay_float64() -> None:
    class Scale(nn.Module):
        def forward(self, x):
            return 0.7 * (x + 0.1) * 1.3 - 0.2

    r = lipbound.local_lipschitz(Scale(), torch.zeros(1, 1, dtype=torch.float64), eps=0.5, lower=False)
    # 0.7 and 1.3 are the float64 numbers the user wrote; their float32 roundings would give a smaller product
    assert Fraction(r.upper.item()) >= Fraction(0.7) * Fraction(1.3)
    assert r.upper.item() == pytest.approx(0.91, rel=1e-9)


def test_float32_batchnorm_bounded_in_float64() -> None:
    """|w gamma| / sqrt(var + eps) exactly (as rationals, compared squared), for float32 parameters."""
    for seed in range(60):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)).eval()
        with torch.no_grad():
            model[1].running_var.uniform_(0.1, 3.0)
            model[1].running_mean.normal_()
            model[1].weight.normal_()
        w, g = Fraction(model[0].weight.item()), Fraction(model[1].weight.item())
        var, eps = Fraction(model[1].running_var.item()), Fraction(model[1].eps)
        r = lipbound.local_lipschitz(model, torch.zeros(1, 1), eps=0.1, dtype=torch.float64, lower=False)
        assert Fraction(r.upper.item()) ** 2 * (var + eps) >= (w * g) ** 2, seed
        assert r.details["dtype"] == "float64"


def test_gamma_matches_higham() -> None:
    u = unit_roundoff(torch.float64)
    assert u == 2.0**-53
    assert gamma(10, torch.float64) == pytest.approx(2 * 10 * u / (1 - 10 * u), rel=1e-15)
    assert gamma(2**30, torch.float32) == float("inf")  # n u >= 1/2: no finite guarantee


def test_round_up_and_down_are_directed_conversions() -> None:
    """``round_up(x, float32)`` is the smallest float32 >= x (exactly, checked with Fractions), ``round_down`` the
    largest <= x; a to-nearest conversion would be below x for about half of these values."""
    from lipbound.engine.rounding import round_down, round_up

    x = torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(
        -20, 20, (2000,), generator=torch.Generator().manual_seed(1)
    )
    up, down = round_up(x, torch.float32), round_down(x, torch.float32)
    assert up.dtype == down.dtype == torch.float32
    for xi, ui, di in zip(x.tolist(), up.tolist(), down.tolist(), strict=True):
        fx = Fraction(xi)
        assert Fraction(di) <= fx <= Fraction(ui)
        below = torch.nextafter(torch.tensor(ui, dtype=torch.float32), torch.tensor(-float("inf"))).item()
        above = torch.nextafter(torch.tensor(di, dtype=torch.float32), torch.tensor(float("inf"))).item()
        assert (Fraction(below) < fx and Fraction(above) > fx) or ui == di == xi  # the nearest directed values
