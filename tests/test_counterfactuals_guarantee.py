import math

import pytest
import torch
from scipy import integrate, special, stats

from lipbound.counterfactuals import stability
from lipbound.counterfactuals.guarantee import (
    cube_outside_mass,
    max_sigmoid_slope,
    outside_mass,
    stability_guarantee,
)
from lipbound.errors import InvalidInputError


def _logistic(w, b):
    lin = torch.nn.Linear(w.numel(), 1).double()
    with torch.no_grad():
        lin.weight.copy_(w.reshape(1, -1))
        lin.bias.fill_(b)
    return lin


def _mlp(d, width, seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 2),
    ).double()


def _expected_stability_logistic(mu, s):
    """E[m(X) - |m(x) - m(X)|] for m = expit(w.x + b): a 1-D integral over t ~ N(0, 1), s = sigma ||w||."""
    f = lambda t: special.expit(mu + s * t) - abs(special.expit(mu) - special.expit(mu + s * t))  # noqa: E731
    return integrate.quad(lambda t: f(t) * stats.norm.pdf(t), -12, 12, points=[0.0])[0]


def test_cube_outside_mass_matches_exact_per_coordinate_formula():
    x = torch.zeros(1, 7, dtype=torch.float64)
    for z in (2.0, 4.0, 6.0):
        exact = float(outside_mass(x, x - z, x + z, 1.0)[0])
        assert cube_outside_mass(7, z) == pytest.approx(exact, rel=1e-6, abs=1e-15)
    assert cube_outside_mass(61, 6.0) == pytest.approx(61 * math.erfc(6 / math.sqrt(2)), rel=1e-6)


def test_max_sigmoid_slope():
    lo, hi = torch.tensor([-1.0, 0.5, -3.0]), torch.tensor([2.0, 1.5, -2.0])
    grid = torch.linspace(0, 1, 10001)
    for i in range(3):
        s = torch.sigmoid(lo[i] + (hi[i] - lo[i]) * grid)
        assert float(max_sigmoid_slope(lo, hi)[i]) == pytest.approx(float((s * (1 - s)).max()), rel=1e-6)


def test_logistic_at_decision_boundary_gives_closed_form():
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    model = _logistic(w, 0.0)
    x = torch.zeros(1, 3, dtype=torch.float64)  # t(x) = 0: the local slope bound is 1/4, like the global one
    k, eps, sigma = 200, 0.1, 0.05
    g = stability_guarantee(model, x, torch.tensor([0.9]), sigma=sigma, k=k, eps=eps)
    gamma = float(w.norm()) / 4
    assert g.source == ["global"]
    assert float(g.gamma[0]) == pytest.approx(gamma, rel=1e-6)
    assert float(g.probability[0]) == pytest.approx(math.exp(-k * eps**2 / (8 * gamma**2 * sigma**2)), rel=1e-5)
    assert bool(g.applies[0]) and float(g.valid_probability[0]) == pytest.approx(1 - float(g.probability[0]))
    given = stability_guarantee(model, x, torch.tensor([0.55]), sigma=sigma, k=k, eps=eps, gamma=gamma)
    assert float(given.probability[0]) == pytest.approx(float(g.probability[0]))
    assert not bool(given.applies[0]) and float(given.valid_probability[0]) == 0.0


def test_certified_gamma_is_above_sampled_gradient_norms():
    d, sigma = 4, 0.1
    model = _mlp(d, 16, 3)
    x = torch.rand(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = stability_guarantee(model, x, torch.ones(3), sigma=sigma, k=100, eps=0.2)
    g_loc = torch.tensor(g.details["gamma_local_per_radius"])
    gen = torch.Generator().manual_seed(1)
    for i in range(3):
        for j, r in enumerate(g.details["radii"]):
            y = (x[i] + r * (2 * torch.rand(4000, d, generator=gen, dtype=torch.float64) - 1)).requires_grad_(True)
            corners = x[i] + r * (2 * torch.randint(0, 2, (500, d), generator=gen) - 1).double()
            y = torch.cat([y, corners.requires_grad_(True)])
            z = model(y)
            (grad,) = torch.autograd.grad(torch.sigmoid(z[:, 1] - z[:, 0]).sum(), y)
            sampled = float(grad.norm(dim=1).max())
            assert float(g_loc[i, j]) >= sampled * (1 - 1e-9)
            assert g.details["gamma_global"] >= sampled * (1 - 1e-9)


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_guarantee_is_honest_on_worst_case_changed_models(kind):
    """M(x') = mu(x') exactly (the boundary of assumption (A)): failure rate over seeded draws <= p."""
    k, eps, sigma, reps = 20, 0.08, 0.1, 3000
    if kind == "logistic":
        w = torch.tensor([4.0, -2.0, 2.0], dtype=torch.float64)
        model, x = _logistic(w, 0.3), torch.tensor([[0.2, 0.1, 0.4]], dtype=torch.float64)
        mu = _expected_stability_logistic(float(x[0] @ w) + 0.3, sigma * float(w.norm()))
    else:
        model, x = _mlp(3, 8, 5), torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
        with torch.no_grad():
            model[-1].weight.mul_(10.0)  # a steep model, so that p is far from 0
        eps = 0.03
        with torch.no_grad():
            mu = float(stability(model, x, sigma=sigma, k=400_000, generator=torch.Generator().manual_seed(9))[0])
    g = stability_guarantee(model, x, torch.ones(1), sigma=sigma, k=k, eps=eps)
    p = float(g.probability[0])
    assert 0.01 < p < 1  # the test is informative only where the bound is non-trivial
    with torch.no_grad():
        r_hat = stability(model, x.expand(reps, -1), sigma=sigma, k=k, generator=torch.Generator().manual_seed(4))
    failures = float((mu < r_hat - eps).double().mean())
    assert failures <= p + 3 * math.sqrt(p * (1 - p) / reps)


def test_bad_inputs():
    model = _logistic(torch.ones(2, dtype=torch.float64), 0.0)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="R has 1 values for 2 points"):
        stability_guarantee(model, x, torch.ones(1))
    with pytest.raises(InvalidInputError, match="gamma must be"):
        stability_guarantee(model, x, torch.ones(2), gamma="sampled")
    with pytest.raises(InvalidInputError, match="eps > 0"):
        stability_guarantee(model, x, torch.ones(2), eps=0.0)
    with pytest.raises(InvalidInputError, match="NaN"):
        stability_guarantee(model, torch.full((2, 2), math.nan), torch.ones(2))
    with pytest.raises(InvalidInputError, match="3 outputs"):
        stability_guarantee(torch.nn.Linear(2, 3).double(), x, torch.ones(2))
