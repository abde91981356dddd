"""exact_lipschitz (MILP) against region enumeration on tiny ReLU nets, autograd lower bounds and refusals."""

import pytest
import torch
from tests.reference.exact import exact_by_enumeration, sampled_gradient_norm
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


@pytest.mark.parametrize("seed", [0, 1, 4, 5])
@pytest.mark.parametrize("norm", ["inf", 1])
def test_lower_is_value_inside_the_incumbent_region(seed, norm):
    """The lower point is moved into the interior of the incumbent's own activation region (not just off its
    kinks), so on these nets -- where moving the incumbent off kinks alone used to lose up to 75 % (seed 5: 0.057
    of 0.225) -- the attained lower equals the exact value; the witness is a kink-free point of the box whose
    autograd gradient norm is ``lower``."""
    from lipbound.lower import kink_ties
    from lipbound.problem import make_problem

    net = _net(seed)
    x0 = torch.randn(1, 3, dtype=torch.float64)
    eps = 0.5
    r = exact_lipschitz(net, x0, eps, norm=norm)
    assert r.status == "optimal"
    pr = make_problem(net, x0, eps, None, None, None, torch.float64)
    for k, row in enumerate(r.rows):
        assert row["lower_from"] == "region_interior"
        assert row["lower"] == pytest.approx(row["value"], rel=1e-6, abs=1e-9)
        p = row["point"].reshape(1, 3)
        assert bool(((p >= x0 - eps) & (p <= x0 + eps)).all())
        assert not bool(kink_ties(pr.graph, p).any())
        x = p.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(x)[0, k], x)
        attained = float(g.abs().sum() if norm == "inf" else g.abs().max())
        assert attained == pytest.approx(row["lower"], rel=1e-12)


def test_region_interior_point_lp():
    """The LP's point lies in the requested region, at the reported distance from the nearest kink hyperplane
    (a 2-D net with two hidden neurons: the region z_1 > 0, z_2 < 0 in the box [-1, 1]^2)."""
    import numpy as np

    from lipbound.exact import region_interior_point

    w1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    layers = [(w1, np.zeros(2)), (np.ones((1, 2)), np.zeros(1))]
    x, t = region_interior_point(layers, [np.array([1.0, 0.0])], -np.ones(2), np.ones(2))
    assert x[0] > 0 and x[1] < 0
    assert t == pytest.approx(1.0)  # the distance cap (box width 2) is not binding; x = (1, -1) is optimal
    assert min(x[0], -x[1]) == pytest.approx(t)
    # a region that misses the box has no interior point
    assert region_interior_point(layers, [np.array([1.0, 0.0])], np.array([-2.0, 0.5]), np.array([-1.0, 1.0])) is None


def test_time_limit_returns_sound_bounds():
    """A net the MILP cannot solve in 1 s: status "time_limit", returned in about the limit, with
    0 < lower <= upper <= the plain CROWN bound (the reported upper is the better of the MILP dual bound and
    CROWN), no sampled gradient norm above upper, and lower attained (autograd) at lower_point."""
    import itertools
    import time

    import lipbound as lip

    torch.manual_seed(0)
    sizes = (10, 64, 64, 64, 1)
    mods = []
    for a, b in itertools.pairwise(sizes):
        mods += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*mods[:-1]).double()
    x0 = torch.randn(1, 10, dtype=torch.float64)
    eps = 0.5
    t0 = time.perf_counter()
    r = exact_lipschitz(net, x0, eps, time_limit=1.0)
    elapsed = time.perf_counter() - t0
    assert r.status == "time_limit" and r.value is None
    assert elapsed < 1.0 + 4.0, elapsed  # the solver gets 85 % of the limit; tracing, bounds, lower are extra
    crown = lip.local_lipschitz(net, x0, eps, use_global=False, lower=False).upper.item()
    assert r.upper <= crown * (1 + 1e-12)
    row = r.rows[0]
    assert row["upper"] == min(row["milp_upper"], row["crown_upper"])
    assert 0 < r.lower <= r.upper
    sampled = float(sampled_gradient_norm(net, x0 - eps, x0 + eps, None, "inf").max())
    assert sampled <= r.upper
    x = r.lower_point.reshape(1, 10).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    assert float(g.abs().sum()) == pytest.approx(r.lower, rel=1e-12)


def test_every_highs_instance_comes_from_the_one_factory():
    """HiGHS refuses a second thread count in one process (the MILP then ends 'not_set'): all instances must be
    made by lipbound.highs.new_highs, with the same options."""
    from pathlib import Path

    import lipbound

    root = Path(lipbound.__file__).parent
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py") if "Highs()" in p.read_text() and p.name != "highs.py"
    ]
    assert offenders == []
