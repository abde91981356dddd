"""Concentration bound behind the Stability measure (float gamma only so far; "certified" is not implemented).

If m is gamma-Lipschitz (l2) on a box B around x, each absdev summand is 2 gamma-Lipschitz, the k-sample mean is
(2 gamma sigma / sqrt(k))-Lipschitz in the standard normals, and Gaussian concentration gives

    P( R_hat - E R_hat >= eps ) <= exp(-k eps^2 / (8 gamma^2 sigma^2)),   with E R_hat <= m(x).

Samples outside B add the union-bound term k * p_out, p_out = 1 - prod_j P(x_j + sigma Z in [l_j, u_j]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def outside_mass(x: Tensor, lower: Tensor, upper: Tensor, sigma: float) -> Tensor:
    """p_out = P(X not in [lower, upper]) for X ~ N(x, sigma^2 I), per row of ``x`` (B, d), exact per coordinate."""
    normal = torch.distributions.Normal(0.0, 1.0)
    inside = normal.cdf((upper - x) / sigma) - normal.cdf((lower - x) / sigma)
    return 1.0 - inside.clamp(0.0, 1.0).prod(-1)


def concentration_tail(k: int, eps: float, gamma: float, sigma: float) -> float:
    """exp(-k eps^2 / (8 gamma^2 sigma^2)): bound on P(R_hat - E R_hat >= eps) for a gamma-Lipschitz m."""
    return math.exp(-k * eps**2 / (8.0 * gamma**2 * sigma**2))
