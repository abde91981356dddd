"""Local l2 LipSDP (method="lipsdp") and the min(local, cheap global) reporting of local_lipschitz."""

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInputError
from lipbound.global_bounds import global_lipschitz


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def _grad_norms(model, x0, eps, c, n=256):
    x = (x0 + eps * (2 * torch.rand(n, x0.shape[1], dtype=torch.float64) - 1)).requires_grad_(True)
    (g,) = torch.autograd.grad((model(x) @ c).sum(), x)
    return g.norm(dim=1)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_local_sdp_between_sampled_gradients_and_global(eps):
    model = _net()
    x0 = torch.rand(1, 4, dtype=torch.float64)
    c = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    r = lipbound.local_lipschitz(model, x0, eps, norm=2, c=c, method="lipsdp", use_global=False)
    glob = global_lipschitz(model, 2, "lipsdp-neuron").upper * float(c.norm())
    assert float(_grad_norms(model, x0, eps, c).max()) <= float(r.upper[0]) * (1 + 1e-9)
    assert float(r.upper[0]) <= glob * (1 + 1e-3)
    assert float(r.lower[0]) <= float(r.upper[0])


def test_local_sdp_tiny_eps_is_exact_gradient_norm():
    model = _net(1)
    x0 = torch.rand(2, 4, dtype=torch.float64)
    r = lipbound.local_lipschitz(model, x0, 1e-9, norm=2, method="lipsdp", lower=False)
    x = x0.clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x)  # (3, 2, 4)
    exact = jac.norm(dim=2).T  # (2, 3): ||grad f_k(x0_i)||_2
    torch.testing.assert_close(r.upper, exact, rtol=1e-6, atol=1e-12)


def test_min_local_global_reports_source():
    torch.manual_seed(0)
    layers = [nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(16, 2)).double()
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    off = lipbound.local_lipschitz(model, x0, 1e3, norm=2, lower=False, use_global=False)
    on = lipbound.local_lipschitz(model, x0, 1e3, norm=2, lower=False)
    g = torch.tensor(on.details["global_upper"], dtype=torch.float64)
    loc = torch.tensor(on.details["local_upper"], dtype=torch.float64)
    torch.testing.assert_close(loc, off.upper, rtol=1e-9, atol=0)
    torch.testing.assert_close(on.upper, torch.minimum(loc, g), rtol=1e-9, atol=0)
    assert any(s == "global" for row in on.source for s in row)  # a huge box: the global bound wins somewhere
    for i, row in enumerate(on.source):
        for j, s in enumerate(row):
            assert s == ("global" if g[i, j] < loc[i, j] else "local")


def test_linf_results_unchanged_when_local_is_lower():
    model = _net(2)
    x0 = torch.rand(2, 4, dtype=torch.float64)
    off = lipbound.local_lipschitz(model, x0, 0.01, lower=False, use_global=False)
    on = lipbound.local_lipschitz(model, x0, 0.01, lower=False)
    assert all(s == "local" for row in on.source for s in row)
    assert torch.equal(on.upper, off.upper)


def test_lipsdp_refuses_other_norms():
    with pytest.raises(InvalidInputError):
        lipbound.local_lipschitz(_net(), torch.zeros(1, 4, dtype=torch.float64), 0.1, norm="inf", method="lipsdp")


def test_uncertifiable_fixed_slopes_are_widened(monkeypatch):
    """A layer mixing stable and unstable neurons can make the LMI uncertifiable (the fixed-slope multipliers blow
    up: simple-mlp-256 at eps 0.01 gave inf). The retry widens fixed slopes [a, a] to [a - delta |a|, a], which
    still contains every slope; the bound must stay finite and above the sampled gradient norms."""
    import math

    from lipbound.global_bounds import lipsdp

    real = lipsdp.solve_certified
    calls = []

    def exact_slopes_fail(Ws, slopes, per_neuron, name="auto", time_budget=None):
        fixed = any(bool((a == b).any()) for a, b in slopes)
        calls.append(fixed)
        if fixed:  # what the ill-conditioned solver output looks like: nothing certified
            return (math.inf, None, {"multiplier_scale": None}), {"status": "failed"}, None
        return real(Ws, slopes, per_neuron, name, time_budget)

    monkeypatch.setattr(lipsdp, "solve_certified", exact_slopes_fail)
    model = _net()
    x0 = torch.rand(1, 4, dtype=torch.float64)
    c = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    r = lipbound.local_lipschitz(model, x0, 0.3, norm=2, c=c, method="lipsdp", use_global=False, lower=False)
    assert calls[0] and not calls[-1]  # the exact slopes failed, a widened problem was certified
    assert r.details["lipsdp"][0]["widened_fixed_slopes"] == 1e-3
    assert math.isfinite(float(r.upper[0]))
    assert float(_grad_norms(model, x0, 0.3, c).max()) <= float(r.upper[0]) * (1 + 1e-9)
