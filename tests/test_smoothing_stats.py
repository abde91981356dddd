"""Statistics and simplex maps of lipbound.smoothing against scipy, closed forms and numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

from lipbound.smoothing import stats as S
from lipbound.smoothing.maps import Candidate, apply_maps, default_candidates, map_lipschitz, sparsemax


def test_clopper_pearson_matches_beta_quantiles_and_coverage_definition():
    k, n, a = np.array([0, 1, 37, 99, 100]), 100, 0.01
    lo, up = S.clopper_pearson_lower(k, n, a), S.clopper_pearson_upper(k, n, a)
    assert lo[0] == 0.0 and up[-1] == 1.0
    np.testing.assert_allclose(lo[1:], stats.beta.ppf(a, k[1:], n - k[1:] + 1), rtol=1e-12)
    np.testing.assert_allclose(up[:-1], stats.beta.ppf(1 - a, k[:-1] + 1, n - k[:-1]), rtol=1e-12)
    # defining property: P_{p = lower}(X >= k) = alpha and P_{p = upper}(X <= k) = alpha
    np.testing.assert_allclose(stats.binom.sf(k[1:] - 1, n, lo[1:]), a, rtol=1e-6)
    np.testing.assert_allclose(stats.binom.cdf(k[:-1], n, up[:-1]), a, rtol=1e-6)
    # all votes for c_A: alpha^(1/n); the Cohen maximum radius 3.81 sigma at n = 1e5, alpha = 1e-3
    assert S.clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert S.max_radius(100_000, 0.001, 1.0) == pytest.approx(3.8, abs=0.02)
    with pytest.raises(ValueError, match="alpha"):
        S.clopper_pearson_lower(3, 10, 1.5)


def test_binomial_pvalue_is_scipy_two_sided_test():
    assert S.binomial_two_sided_pvalue(10, 10) == pytest.approx(2 * 0.5**10)
    assert S.binomial_two_sided_pvalue(60, 100) == pytest.approx(stats.binomtest(60, 100, 0.5).pvalue)
    assert S.binomial_two_sided_pvalue(0, 0) == 1.0


def test_bernstein_reference_numbers_and_formula():
    # note's reference numbers: n = 1e5, alpha = 1e-3 / K with K = 10
    a = 1e-3 / 10
    assert S.bernstein_shift(0.0, 100_000, a) == pytest.approx(2.3e-4, rel=0.03)
    assert S.bernstein_shift(0.01**2, 100_000, a) == pytest.approx(3.7e-4, rel=0.03)
    assert S.bernstein_shift(0.05**2, 100_000, a) == pytest.approx(9.3e-4, rel=0.03)
    log = math.log(2 / 0.05)
    assert S.bernstein_shift(0.2, 50, 0.05) == pytest.approx(math.sqrt(2 * 0.2 * log / 50) + 7 * log / (3 * 49))
    # Bernoulli votes: Bernstein slightly looser than Clopper-Pearson (p_hat = 0.9)
    n, k = 100_000, 90_000
    v = k * (n - k) / (n * (n - 1))
    bern, cp = S.bernstein_lower(k / n, v, n, 1e-3), S.clopper_pearson_lower(k, n, 1e-3)
    assert bern < cp and bern == pytest.approx(0.8961, abs=2e-4) and cp == pytest.approx(0.8970, abs=2e-4)
    with pytest.raises(ValueError, match="n >= 2"):
        S.bernstein_shift(0.1, 1, 0.1)


def test_streaming_variance_equals_numpy_ddof1_over_uneven_batches():
    rng = np.random.default_rng(0)
    data = rng.random((1003, 3, 4))
    sm = S.StreamingMoments()
    for a, b in [(0, 1), (1, 500), (500, 517), (517, 1003)]:
        sm.update(torch.as_tensor(data[a:b]), dim=0)
    assert sm.count == 1003
    np.testing.assert_allclose(sm.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sm.variance.numpy(), data.var(0, ddof=1), rtol=1e-10)
    # the average of within-batch variances (what the public code does) is a different number
    bad = sum((b - a) * data[a:b].var(0) for a, b in [(0, 500), (500, 1003)]) / 1003
    shifted = np.concatenate([data[:500] * 0.2, data[500:] * 0.2 + 0.8])
    sm2 = S.StreamingMoments()
    sm2.update(torch.as_tensor(shifted[:500]))
    sm2.update(torch.as_tensor(shifted[500:]))
    np.testing.assert_allclose(sm2.variance.numpy(), shifted.var(0, ddof=1), rtol=1e-10)
    assert not np.allclose(bad * 0.04, shifted.var(0, ddof=1))


def test_phi_radius_closed_form_monotone_and_dominates_linear_form():
    assert S.phi_radius(0.8, 0.15, 0.25) == pytest.approx(0.125 * (special.ndtri(0.8) - special.ndtri(0.15)))
    assert S.phi_radius(0.8, 0.15, 0.25) == pytest.approx(0.235, abs=1e-3)
    # Cohen's radius is the case p_B_upper = 1 - p_A_lower
    assert S.phi_radius(0.9, 0.1, 0.5) == pytest.approx(0.5 * special.ndtri(0.9))
    assert S.phi_radius(0.4, 0.45, 1.0) == 0.0 and S.phi_radius(0.5, 0.5, 1.0) == 0.0
    rng = np.random.default_rng(1)
    pa, pb = rng.random(10_000), rng.random(10_000)
    r = S.phi_radius(pa, pb, 0.5)
    eps = 1e-3
    assert np.all(S.phi_radius(np.minimum(pa + eps, 1), pb, 0.5) >= r)  # increasing in p_A_lower
    assert np.all(S.phi_radius(pa, np.maximum(pb - eps, 0), 0.5) >= r)  # decreasing in p_B_upper
    ok = pa > pb
    assert np.all(r[ok] >= 0.5 * math.sqrt(math.pi / 2) * (pa - pb)[ok] - 1e-12)


def _smoothed_ramp_slope(l: float, width: float, sigma: float) -> float:
    """d/dx at 0 of (clip(l x, -w/2, w/2) * N(0, sigma^2)) by quadrature: int h'(y) phi_sigma(y) dy."""
    a = width / (2 * l)
    return l * integrate.quad(lambda y: stats.norm.pdf(y, scale=sigma), -a, a, epsabs=1e-13)[0]


@pytest.mark.parametrize("l", [0.3, 1.0, 4.0, 50.0])
def test_erf_lipschitz_bound_is_attained_by_the_clipped_ramp(l):
    assert S.smoothed_lipschitz(l, 1.0, 0.4) == pytest.approx(_smoothed_ramp_slope(l, 1.0, 0.4), rel=1e-8)
    assert S.smoothed_lipschitz(l, 2.0, 0.25) == pytest.approx(_smoothed_ramp_slope(l, 2.0, 0.25), rel=1e-8)


def test_erf_bound_never_below_smoothed_slope_of_random_bounded_functions():
    # h(x) = clip(sum_j a_j sin(b_j x), -1, 1): values in width 2, Lip(h) <= l = sum |a_j b_j|
    rng = np.random.default_rng(2)
    ys, dy = np.linspace(-8, 8, 20001, retstep=True)
    for _ in range(20):
        a, b, sigma = rng.normal(size=3), rng.normal(size=3) * 3, rng.uniform(0.1, 1)
        h = np.clip((a[:, None] * np.sin(b[:, None] * ys)).sum(0), -1, 1)
        l = float(np.abs(a * b).sum())
        x = np.linspace(-1, 1, 41)
        smooth = np.array([(h * stats.norm.pdf(ys - xi, scale=sigma)).sum() * dy for xi in x])
        slope = np.abs(np.diff(smooth) / np.diff(x)).max()
        assert slope <= S.smoothed_lipschitz(l, 2.0, sigma) * (1 + 1e-3)


def test_erf_radius_tends_to_gaussian_only_radius_and_is_decreasing_in_l():
    sigma, pa, pb = 0.25, 0.8, 0.15
    limit = sigma * math.sqrt(math.pi / 2) * (pa - pb)
    ls = np.array([0.5, 1, 2, 8, 1e2, 1e4, 1e6])
    r = S.lipschitz_radius(pa, pb, ls, sigma)
    assert np.all(np.diff(r) < 0) and r[-1] == pytest.approx(limit, rel=1e-6)
    assert S.lipschitz_radius(pa, pb, math.inf, sigma) == pytest.approx(limit)
    # note's example values
    np.testing.assert_allclose(r[:4], [0.92, 0.46, 0.27, 0.21], atol=0.01)
    assert S.lipschitz_radius(pa, pb, 1e6, sigma) <= S.phi_radius(pa, pb, sigma)
    assert S.lipschitz_radius(0.3, 0.4, 1.0, sigma) == 0.0


def _simplex_projection_reference(v: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by bisection on tau in sum(max(v - tau, 0)) = 1 (independent method)."""
    tau = optimize.brentq(lambda t: np.maximum(v - t, 0).sum() - 1, v.min() - 1, v.max())
    return np.maximum(v - tau, 0)


def test_sparsemax_is_the_simplex_projection():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 7)) * rng.choice([0.1, 1, 10], size=(200, 1))
    p = sparsemax(torch.as_tensor(z)).numpy()
    ref = np.stack([_simplex_projection_reference(v) for v in z])
    np.testing.assert_allclose(p, ref, atol=1e-9)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-12)
    assert (p >= 0).all()
    # idempotent on the simplex and 1-Lipschitz on random pairs
    np.testing.assert_allclose(sparsemax(torch.as_tensor(p)).numpy(), p, atol=1e-12)
    z2 = z + rng.normal(size=z.shape) * 0.3
    p2 = sparsemax(torch.as_tensor(z2)).numpy()
    assert np.all(np.linalg.norm(p - p2, axis=1) <= np.linalg.norm(z - z2, axis=1) + 1e-12)


def test_map_lipschitz_constants_numerically():
    torch.manual_seed(0)
    z = torch.randn(300, 5, dtype=torch.float64) * 3
    # softmax: spectral norm of diag(p) - p p^T <= 1/2, and close to 1/2 at p = (1/2, 1/2, 0, ...)
    jac = torch.vmap(torch.func.jacrev(lambda v: torch.softmax(v, -1)))(z)
    assert torch.linalg.matrix_norm(jac, ord=2).max() <= 0.5
    jhalf = torch.func.jacrev(lambda v: torch.softmax(v, -1))(torch.tensor([0.0, 0.0, -40, -40, -40]).double())
    assert torch.linalg.matrix_norm(jhalf, ord=2) == pytest.approx(0.5, abs=1e-9)
    t = 3.0
    for name, const in (("softmax", t / 2), ("sparsemax", t)):
        cand = Candidate(name, t)
        assert cand.lipschitz == const == map_lipschitz(name, t)
        z2 = z + torch.randn_like(z) * 0.05
        p, p2 = apply_maps(z, [cand])[0], apply_maps(z2, [cand])[0]
        ratio = (p - p2).norm(dim=1) / (z - z2).norm(dim=1)
        assert ratio.max() <= const + 1e-9
        assert ratio.max() >= 0.5 * const  # the constant is not vacuous
    assert Candidate("argmax").lipschitz == math.inf


def test_apply_maps_shapes_and_argmax():
    z = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]])
    cands = default_candidates((1.0, 1e4))
    out = apply_maps(z, cands)
    assert out.shape == (len(cands), 2, 3)
    assert torch.equal(out[0], torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    torch.testing.assert_close(out[1], torch.softmax(z, -1))
    # large temperature: both soft maps approach the hard vote
    torch.testing.assert_close(out[4][0], torch.tensor([0.0, 1, 0]))
    torch.testing.assert_close(out.sum(-1), torch.ones(len(cands), 2))


def test_candidate_validation():
    with pytest.raises(ValueError, match="unknown simplex map"):
        Candidate("hardmax", 1.0)
    with pytest.raises(ValueError, match="temperature"):
        Candidate("softmax", 0.0)
    with pytest.raises(ValueError, match="no temperature"):
        Candidate("argmax", 2.0)
