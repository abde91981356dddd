import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from lipbound.counterfactuals import stability
from lipbound.errors import InvalidInputError


def _logistic(w, b):
    lin = torch.nn.Linear(w.numel(), 1).double()
    with torch.no_grad():
        lin.weight.copy_(w.reshape(1, -1))
        lin.bias.fill_(b)
    return lin


def test_matches_1d_quadrature_for_logistic_model():
    torch.manual_seed(0)
    w, b, sigma = torch.randn(5, dtype=torch.float64) * 3, 0.2, 0.3
    model = _logistic(w, b)
    x = torch.rand(3, 5, dtype=torch.float64)
    r = stability(model, x, sigma=sigma, k=200_000, generator=torch.Generator().manual_seed(1))
    s = sigma * float(w.norm())
    for i in range(3):
        mu = float(x[i] @ w) + b
        f = lambda t, mu=mu: special.expit(mu + s * t) - abs(special.expit(mu) - special.expit(mu + s * t))  # noqa: E731
        exact = integrate.quad(lambda t, f=f: f(t) * stats.norm.pdf(t), -12, 12)[0]
        assert abs(float(r[i].detach()) - exact) < 4e-3  # stability() stays differentiable
        assert exact <= special.expit(mu)


def test_affine_lipschitz_variant_closed_form():
    w = torch.tensor([0.3, -0.4], dtype=torch.float64)
    model = _logistic(w, 0.0)
    x = torch.zeros(1, 2, dtype=torch.float64)
    r = stability(
        model, x, sigma=0.1, k=100_000, variant="lipschitz", gamma=0.5, generator=torch.Generator().manual_seed(0)
    )
    e_m = integrate.quad(lambda t: special.expit(0.05 * t) * stats.norm.pdf(t), -12, 12)[0]
    exact = e_m - 0.5 * 0.1 * math.sqrt(2) * math.gamma(1.5) / math.gamma(1.0)
    assert abs(float(r[0].detach()) - exact) < 2e-3


def test_bad_inputs():
    model = torch.nn.Linear(2, 3)
    with pytest.raises(InvalidInputError, match="3 outputs"):
        stability(model, torch.zeros(1, 2))
    with pytest.raises(InvalidInputError, match="NaN"):
        stability(torch.nn.Linear(2, 2), torch.tensor([[np.nan, 0.0]]))


def test_outside_mass_matches_simulation_and_concentration_holds():
    from lipbound.counterfactuals.guarantee import concentration_tail, outside_mass

    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    p = float(outside_mass(x, x - 0.1, x + 0.1, 0.05)[0])
    z = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(p - float(((0.05 * z).abs() > 0.1).any(1).double().mean())) < 3e-3
    w = torch.tensor([2.0, -1.0, 0.5, 1.0], dtype=torch.float64)
    model, gamma, k, eps, sigma = _logistic(w, 0.0), float(w.norm()) / 4, 50, 0.05, 0.05
    reps = stability(model, x.expand(2000, 4), sigma=sigma, k=k, generator=torch.Generator().manual_seed(2))
    ref = float(stability(model, x, sigma=sigma, k=200_000, generator=torch.Generator().manual_seed(3))[0].detach())
    freq = float((reps.detach() - ref >= eps).double().mean())
    assert freq <= concentration_tail(k, eps, gamma, sigma) + 0.01
