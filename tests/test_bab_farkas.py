"""Branch and Bound prunes a domain as empty only with a Farkas certificate checked with rigorous float64 error
bounds: exact rational arithmetic (``fractions``) is the reference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipbound.farkas import EmptinessProver, farkas_certifies


def _exact_value(a, b, lo, hi, y) -> Fraction:
    """``min_{lo <= x <= hi} (a^T y)^T x - y^T b`` in exact rationals (``y`` clipped at 0)."""
    yq = [Fraction(max(float(v), 0.0)) for v in y]
    total = Fraction(0)
    for i in range(a.shape[1]):
        g = sum((Fraction(float(a[r, i])) * yq[r] for r in range(a.shape[0])), Fraction(0))
        total += min(g * Fraction(float(lo[i])), g * Fraction(float(hi[i])))
    return total - sum((Fraction(float(b[r])) * yq[r] for r in range(a.shape[0])), Fraction(0))


def test_a_real_certificate_is_accepted():
    a, b = np.array([[1.0, 1.0]]), np.array([-2.5])  # x1 + x2 <= -2.5 on [-1, 1]^2: empty
    lo, hi = -np.ones(2), np.ones(2)
    assert farkas_certifies(a, b, lo, hi, np.array([1.0]))
    assert _exact_value(a, b, lo, hi, [1.0]) > 0


def test_certificates_of_feasible_or_touching_systems_are_refused():
    lo, hi = -np.ones(2), np.ones(2)
    assert not farkas_certifies(np.array([[1.0, 1.0]]), np.array([-1.5]), lo, hi, np.array([1.0]))  # feasible
    # x1 <= 0.1 and x1 >= 0.1: the point x1 = 0.1 is feasible; y = (1, 1) gives exactly 0, not > 0
    a, b = np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([0.1, -0.1])
    assert not farkas_certifies(a, b, lo, hi, np.array([1.0, 1.0]))
    assert not farkas_certifies(a, b, lo, hi, np.array([np.nan, 1.0]))


def test_a_fake_certificate_that_fools_plain_float_arithmetic_is_refused():
    # (1e16 + 2) x1 + x2 <= 0, -1e16 x1 <= 0 on x1 in [-1, 1], x2 in [0.1, 1]. With y = (1, 1 + 2^-52) the float
    # value of a^T y is (0, 1) (1e16 (1 + 2^-52) rounds to 1e16 + 2), which would "prove" emptiness with margin 0.1,
    # but exactly a^T y = (2 - 2.22, 1) and the true minimum is 0.1 - 0.22 < 0: not a certificate.
    a = np.array([[1e16 + 2, 1.0], [-1e16, 0.0]])
    b = np.zeros(2)
    lo, hi = np.array([-1.0, 0.1]), np.array([1.0, 1.0])
    y = np.array([1.0, 1.0 + 2.0**-52])
    g = (a * y[:, None]).sum(0)  # products rounded one by one (a BLAS with fused multiply-add may be exact here)
    naive = float(np.minimum(g * lo, g * hi).sum() - y @ b)
    assert naive > 0.05  # plain float64 evaluation is fooled
    assert _exact_value(a, b, lo, hi, y) < 0
    assert not farkas_certifies(a, b, lo, hi, y)
    assert not farkas_certifies(a, b, lo, hi, y, exact=False)
    # with the second row -(1e16 + 2) x1 <= 0 instead, y = (1, 1) is a real certificate (exact a^T y = (0, 1))
    a[1, 0] = -(1e16 + 2)
    assert _exact_value(a, b, lo, hi, [1.0, 1.0]) > 0
    assert farkas_certifies(a, b, lo, hi, np.array([1.0, 1.0]))  # decided in exact rationals
    assert not farkas_certifies(a, b, lo, hi, np.array([1.0, 1.0]), exact=False)  # float64 bound: too large


@pytest.mark.parametrize("scale", [1.0, 1e8])
def test_every_accepted_certificate_is_exactly_valid(scale):
    rng = np.random.default_rng(0)
    accepted = refused_positive = 0
    for _ in range(300):
        r, n = rng.integers(1, 5), rng.integers(1, 5)
        a = rng.normal(size=(r, n)) * scale * rng.choice([1.0, 1e-8], size=(r, n))
        lo = -rng.random(n)
        hi = rng.random(n)
        y = rng.random(r)
        # put b so that the exact value sits within a few rounding errors of 0 (either side)
        g = a.T @ y
        target = float(np.minimum(g * lo, g * hi).sum())
        b = rng.normal(size=r)
        b[0] = 0.0
        b[0] = (target - float(y @ b)) / y[0] * (1 + rng.normal() * 1e-13)
        ok = farkas_certifies(a, b, lo, hi, y, exact=False)
        exact = _exact_value(a, b, lo, hi, y)
        assert not ok or exact > 0
        accepted += ok
        refused_positive += (not ok) and exact > 0
        # comfortably positive certificates (margin far above the rounding of the terms' magnitudes) pass
        mag = float(np.abs(a).T @ y @ np.maximum(np.abs(lo), np.abs(hi)) + y @ np.abs(b)) + 1.0
        b2 = b.copy()
        b2[0] -= 1e-8 * mag / y[0]
        assert _exact_value(a, b2, lo, hi, y) > 0
        assert farkas_certifies(a, b2, lo, hi, y, exact=False)
        assert farkas_certifies(a, b, lo, hi, y) == (exact > 0)  # the exact fallback decides exactly
    assert refused_positive > 0  # the near-boundary cases are really near the boundary (some true ones refused)
    assert accepted > 0


def test_the_prover_never_prunes_a_feasible_system_and_proves_empty_ones():
    rng = np.random.default_rng(1)
    prover = EmptinessProver()
    for _ in range(60):
        r, n = rng.integers(1, 6), rng.integers(1, 6)
        a = rng.normal(size=(r, n))
        lo, hi = -rng.random(n) - 0.1, rng.random(n) + 0.1
        x = lo + rng.random(n) * (hi - lo)
        b = a @ x + rng.random(r) * 1e-12  # x is feasible (up to rounding of a @ x, covered by the slack)
        assert not prover.empty(a, b + 1e-9, lo, hi)
        # add the opposite of row 0 shifted by a gap: {a0 x <= b0, -a0 x <= -b0 - gap} is empty
        a2 = np.vstack([a, -a[:1]])
        b2 = np.concatenate([b, -b[:1] - 0.1])
        assert prover.empty(a2, b2, lo, hi)
    assert prover.stats.certified == 60 and prover.stats.refused == 0
