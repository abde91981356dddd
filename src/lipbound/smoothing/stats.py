"""Confidence bounds and certified radii of randomized smoothing.

Notation (Cohen et al. 2019; Delattre et al. 2024): noise delta ~ N(0, sigma^2 I), a smoothed score
H_c(x) = E[s_c(t f(x + delta))] in [0, 1] for class c, estimated from n i.i.d. samples.

* :func:`clopper_pearson_lower` / :func:`clopper_pearson_upper`: exact one-sided binomial bounds at level 1 - alpha,
  lower = Beta.ppf(alpha; k, n - k + 1) (0 when k = 0), upper = Beta.ppf(1 - alpha; k + 1, n - k) (1 when k = n).
* :func:`binomial_two_sided_pvalue`: exact two-sided test of p = 1/2 (Cohen PREDICT, scipy.stats.binomtest).
* :func:`bernstein_shift`: the empirical Bernstein half-width of Maurer & Pontil (COLT 2009, Thm 4) for values in
  [0, 1]: with probability >= 1 - delta, E Z <= mean + s sqrt(2 ln(2/delta) / n) + 7 ln(2/delta) / (3 (n - 1)), with
  s^2 the sample variance (ddof = 1) over all n values; the same shift below the mean gives a lower bound.
* :class:`StreamingMoments`: that sample variance computed over batches (Chan et al. parallel update of Welford's
  algorithm), exactly numpy's ``var(ddof=1)`` of the concatenated batches.
* :func:`phi_radius`: R_Phi = sigma/2 (Phi^-1(p_A_lower) - Phi^-1(p_B_upper)).
* :func:`smoothed_lipschitz` / :func:`lipschitz_radius`: for h with values in an interval of width w and Lip(h) <= l,
  Lip(h * N(0, sigma^2 I)) <= l erf(w / (2 sqrt(2) l sigma)) (-> w / (sigma sqrt(2 pi)) as l -> inf); the margin
  h = s_A - s_c has w = 2 and l <= sqrt(2) L_p, so R_L = (p_A_lower - p_B_upper) / (sqrt(2) L_p erf(1/(2 L_p sigma))).
  Below: p_A_lower, p_B_upper are the bounds of H_A and max_{c != A} H_c.

Everything works on numpy arrays or scalars (float64) and broadcasts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special, stats
from torch import Tensor

SQRT2 = math.sqrt(2.0)


def _check_alpha(alpha, name: str = "alpha") -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if not np.all((a > 0) & (a < 1)):
        raise ValueError(f"{name} must lie in (0, 1), got {alpha!r}")
    return a


def clopper_pearson_lower(k, n, alpha) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of p from k successes in n trials (0 when k = 0)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    a = _check_alpha(alpha)
    with np.errstate(invalid="ignore"):
        out = stats.beta.ppf(a, np.maximum(k, 1e-300), n - k + 1)
    return np.where(k <= 0, 0.0, out)


def clopper_pearson_upper(k, n, alpha) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of p from k successes in n trials (1 when k = n)."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    a = _check_alpha(alpha)
    with np.errstate(invalid="ignore"):
        out = stats.beta.ppf(1 - a, k + 1, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, out)


def binomial_two_sided_pvalue(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes out of n under p = 1/2 (1.0 when n = 0)."""
    if n <= 0:
        return 1.0
    return float(stats.binomtest(int(k), int(n), 0.5).pvalue)


def bernstein_shift(variance, n, alpha) -> np.ndarray:
    """Empirical Bernstein half-width sqrt(2 s^2 ln(2/alpha) / n) + 7 ln(2/alpha) / (3 (n - 1)) for [0,1] values.

    ``variance`` is the sample variance s^2 (ddof = 1) of the n values; needs n >= 2. One-sided at level alpha.
    """
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 2):
        raise ValueError("the empirical Bernstein bound needs n >= 2 samples")
    log_term = np.log(2.0 / _check_alpha(alpha))
    var = np.maximum(np.asarray(variance, dtype=np.float64), 0.0)
    return np.sqrt(2.0 * var * log_term / n) + 7.0 * log_term / (3.0 * (n - 1.0))


def bernstein_lower(mean, variance, n, alpha) -> np.ndarray:
    """One-sided (1 - alpha) empirical Bernstein lower bound of E Z for Z in [0, 1], clipped at 0."""
    return np.clip(np.asarray(mean, dtype=np.float64) - bernstein_shift(variance, n, alpha), 0.0, 1.0)


def bernstein_upper(mean, variance, n, alpha) -> np.ndarray:
    """One-sided (1 - alpha) empirical Bernstein upper bound of E Z for Z in [0, 1], clipped at 1."""
    return np.clip(np.asarray(mean, dtype=np.float64) + bernstein_shift(variance, n, alpha), 0.0, 1.0)


class StreamingMoments:
    """Count, mean and sum of squared deviations M2 over batches reduced along ``dim`` (Chan's parallel update).

    ``variance`` is M2 / (count - 1), the sample variance with ddof = 1 over everything seen, whatever the batch
    sizes (NOT the mean of per-batch variances). Accumulates in float64.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, values: Tensor, dim: int = 0) -> None:
        values = values.to(torch.float64)
        m = values.shape[dim]
        if m == 0:
            return
        b_mean = values.mean(dim=dim)
        b_m2 = ((values - b_mean.unsqueeze(dim)) ** 2).sum(dim=dim)
        if self.mean is None:
            self.count, self.mean, self.m2 = m, b_mean, b_m2
            return
        total = self.count + m
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.count * m / total)
        self.count = total

    @property
    def variance(self) -> Tensor:
        if self.mean is None or self.count < 2:
            raise ValueError("the sample variance needs at least 2 values")
        return self.m2 / (self.count - 1)


def phi_radius(p_a_lower, p_b_upper, sigma: float) -> np.ndarray:
    """R_Phi = sigma/2 (Phi^-1(p_A_lower) - Phi^-1(p_B_upper)), 0 where p_A_lower <= p_B_upper (abstain)."""
    lo = np.clip(np.asarray(p_a_lower, dtype=np.float64), 0.0, 1.0)
    up = np.clip(np.asarray(p_b_upper, dtype=np.float64), 0.0, 1.0)
    with np.errstate(invalid="ignore"):
        r = 0.5 * sigma * (special.ndtri(lo) - special.ndtri(up))
    return np.where(lo > up, np.nan_to_num(r, nan=0.0, posinf=np.inf), 0.0)


def smoothed_lipschitz(l, width: float, sigma: float) -> np.ndarray:
    """Upper bound of Lip(h * N(0, sigma^2 I)) for h with range width ``width`` and Lip(h) <= ``l`` (l2):
    l erf(width / (2 sqrt(2) l sigma)), and its limit width / (sigma sqrt(2 pi)) at l = inf. Increasing in l."""
    l = np.asarray(l, dtype=np.float64)
    limit = width / (sigma * math.sqrt(2 * math.pi))
    with np.errstate(divide="ignore", invalid="ignore"):
        val = l * special.erf(width / (2 * SQRT2 * l * sigma))
    return np.where(np.isfinite(l), np.where(l > 0, val, 0.0), limit)


def lipschitz_radius(p_a_lower, p_b_upper, lip_p, sigma: float) -> np.ndarray:
    """R_L = (p_A_lower - p_B_upper) / Lip(H_A - H_c) with Lip(H_A - H_c) <= smoothed_lipschitz(sqrt(2) L_p, 2, sigma).

    ``lip_p`` is an l2 Lipschitz bound L_p of x -> s(t f(x)) (the probability vector); 0 where p_A_lower <= p_B_upper.
    """
    margin = np.asarray(p_a_lower, dtype=np.float64) - np.asarray(p_b_upper, dtype=np.float64)
    lip = smoothed_lipschitz(SQRT2 * np.asarray(lip_p, dtype=np.float64), 2.0, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(lip > 0, margin / lip, np.inf)
    return np.where(margin > 0, r, 0.0)


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """Largest radius Cohen CERTIFY can return with n samples: sigma Phi^-1(alpha^(1/n)) (all votes for c_A)."""
    return float(sigma * special.ndtri(float(clopper_pearson_lower(n, n, alpha))))
