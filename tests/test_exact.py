"""exact_lipschitz (MILP) against region enumeration on tiny ReLU nets, autograd lower bounds and refusals."""

import pytest
import torch
from tests.reference.exact import exact_by_enumeration, sampled_gradient_norm  # noqa: F401
from torch import nn

from lipbound.errors import InvalidInputError, UnsupportedOperatorError
from lipbound.exact import exact_lipschitz


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("norm", ["inf", 1])
def test_equals_enumeration(seed, norm):
    net = _net(seed)
    x0 = torch.randn(1, 3, dtype=torch.float64)
    eps = 0.5
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    bs = [m.bias.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    r = exact_lipschitz(net, x0, eps, norm=norm)
    assert r.status == "optimal"
    lo, hi = (x0 - eps)[0].numpy(), (x0 + eps)[0].numpy()
    for k, row in enumerate(r.rows):
        ref = exact_by_enumeration(ws, bs, lo, hi, c=torch.eye(2)[k].double().numpy(), norm=norm)
        assert row["value"] == pytest.approx(ref, rel=1e-6, abs=1e-9)
        assert row["lower"] <= row["value"] + 1e-9 <= row["upper"] + 2e-9
    # lower is attained at lower_point (autograd) and no sampled gradient norm exceeds the certified upper
    x = torch.rand(256, 3, dtype=torch.float64) * 2 * eps + (x0 - eps)
    x.requires_grad_(True)
    jac = torch.stack([torch.autograd.grad(net(x)[:, k].sum(), x)[0] for k in range(2)], 1)
    g = jac.abs().sum(-1) if norm == "inf" else jac.abs().amax(-1)
    assert float(g.max()) <= r.upper
    # a vector c gives a single row
    rc = exact_lipschitz(net, x0, eps, norm=norm, c=torch.tensor([1.0, -1.0], dtype=torch.float64))
    assert len(rc.rows) == 1 and rc.lower <= rc.upper


def test_refusals():
    net = _net(0)
    x0 = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(InvalidInputError):
        exact_lipschitz(net, x0, 0.1, norm=2)
    with pytest.raises(UnsupportedOperatorError):
        exact_lipschitz(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double(), x0, 0.1)


def test_presolve_fallback(monkeypatch):
    import lipbound.exact as ex

    real, calls = ex._solve, []

    def flaky(model, obj, time_limit, presolve, tol):
        calls.append(presolve)
        if presolve and len(calls) == 1:
            return "infeasible", None, float("inf"), float("-inf")
        return real(model, obj, time_limit, presolve, tol)

    monkeypatch.setattr(ex, "_solve", flaky)
    r = exact_lipschitz(_net(0), torch.zeros(1, 3, dtype=torch.float64), 0.5)
    assert r.details["fallbacks"] and calls[:2] == [True, False] and r.status == "optimal"
