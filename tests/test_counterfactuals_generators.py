import pytest
import torch

from lipbound.counterfactuals import stability
from lipbound.counterfactuals.generators import (
    closest_counterfactual,
    nearest_neighbour,
    probability,
    trex_iterative,
    trex_nn,
    wachter,
)
from lipbound.counterfactuals.space import FeatureSpace
from lipbound.errors import InvalidInputError

D = 6


def _space():
    """Features 0-1 continuous, 2 integer (step 1/4), 3 immutable, 4-5 a one-hot block."""
    return FeatureSpace(
        lower=torch.zeros(D, dtype=torch.float64),
        upper=torch.tensor([1.0, 0.9, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64),
        immutable=torch.tensor([False, False, False, True, False, False]),
        one_hot=[[4, 5]],
        integer_step=torch.tensor([0, 0, 0.25, 0, 0, 0], dtype=torch.float64),
    )


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).double()
    with torch.no_grad():
        m[2].weight[1] = -m[2].weight[0]
        m[2].bias[1] = -m[2].bias[0]
        t = m(torch.rand(2000, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
        m[2].bias[1] -= (t[:, 1] - t[:, 0]).median()  # favourable class 1 on about half of the box
    return m


def _factuals(model, n=8):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400, D, generator=g, dtype=torch.float64)
    x[:, 2] = torch.round(x[:, 2] * 4) / 4
    x[:, 4] = (x[:, 4] > 0.5).double()
    x[:, 5] = 1 - x[:, 4]
    x[:, 1] = x[:, 1].clamp(max=0.9)
    with torch.no_grad():
        p = probability(model, x)
    return x[p < 0.5][:n], x[p >= 0.5]


def _check_legal(res, x, space):
    x_cf = res.x_cf
    assert (x_cf >= space.lower - 1e-12).all() and (x_cf <= space.upper + 1e-12).all()
    assert torch.equal(x_cf[:, 3], x[:, 3])
    assert torch.equal(x_cf[:, 4] + x_cf[:, 5], torch.ones(len(x), dtype=x.dtype))
    assert set(x_cf[:, 4].tolist()) <= {0.0, 1.0}
    assert torch.allclose(x_cf[:, 2] * 4, torch.round(x_cf[:, 2] * 4))
    with torch.no_grad():
        assert torch.equal(res.valid, probability(_model(), x_cf) >= 0.5)
    assert res.failed == (~res.valid).nonzero().flatten().tolist()
    assert res.stability.shape == (len(x),) and res.seconds > 0
    assert set(res.to_dict()) >= {"x_cf", "valid", "stability", "seconds"}


@pytest.mark.parametrize("method", ["closest-1", "closest-2", "wachter", "nn", "trex-nn"])
def test_generators_return_legal_records_and_honest_validity(method):
    model, space = _model(), _space()
    x, accepted = _factuals(model)
    kw = {"space": space, "k": 64}
    if method.startswith("closest"):
        res = closest_counterfactual(model, x, norm=int(method[-1]), steps=40, rounds=3, **kw)
    elif method == "wachter":
        res = wachter(model, x, steps=40, rounds=3, **kw)
    elif method == "nn":
        res = nearest_neighbour(model, x, accepted, **kw)
    else:
        res = trex_nn(model, x, accepted, tau=0.6, **kw)
    _check_legal(res, x, space)
    assert res.valid.float().mean() >= 0.75


def test_closest_counterfactual_matches_the_linear_closed_form():
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lin = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        lin.weight.copy_(w.reshape(1, -1))
        lin.bias.fill_(-0.6)
    x = torch.tensor([[0.3, 0.5, 0.4], [0.5, 0.6, 0.5]], dtype=torch.float64)
    t = x @ w - 0.6
    res = closest_counterfactual(lin, x, norm=2, kappa=0.2, steps=300, rounds=4, lr=0.005, k=16)
    cost = (res.x_cf - x).norm(dim=1)
    assert res.valid.all()
    assert (cost >= -t / w.norm() - 1e-9).all()  # no valid point is closer than the hyperplane
    assert (cost <= (0.2 - t) / w.norm() + 0.02).all()  # and it found roughly the kappa-margin projection


def test_nearest_neighbours_match_brute_force():
    model, space = _model(), _space()
    x, accepted = _factuals(model)
    res = nearest_neighbour(model, x, accepted, space=space, k=16)
    for i in range(len(x)):
        cands = accepted.clone()
        cands[:, 3] = x[i, 3]
        with torch.no_grad():
            ok = probability(model, cands) >= 0.5
        j = torch.where(ok, (cands - x[i]).norm(dim=1), torch.inf).argmin()
        assert torch.equal(res.x_cf[i], cands[j])
    with torch.no_grad():
        tau = float(stability(model, accepted, sigma=0.05, k=256).median())
    robust = trex_nn(model, x, accepted, tau=tau, space=space, k=256, chunk=3)
    assert robust.details["robust_found"] >= len(x) // 2
    assert (robust.stability[robust.stability > 0] > tau - 0.05).float().mean() > 0.5
    assert ((robust.x_cf - x).norm(dim=1) >= (res.x_cf - x).norm(dim=1) - 1e-12).all()


def test_trex_iterative_never_lowers_stability_and_stays_in_the_ball():
    model, space = _model(), _space()
    x, _ = _factuals(model)
    base = closest_counterfactual(model, x, norm=2, space=space, steps=40, rounds=3, k=16)
    x0 = base.x_cf[base.valid]
    k, sigma, tau = 128, 0.1, 0.8
    res = trex_iterative(
        model,
        x0,
        tau=tau,
        sigma=sigma,
        k=k,
        step=0.05,
        max_steps=15,
        radius=0.3,
        space=space,
        generator=torch.Generator().manual_seed(7),
    )
    noise = torch.randn(len(x0), k, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        r0 = stability(model, x0, sigma=sigma, k=k, noise=noise)
        r1 = stability(model, res.x_cf, sigma=sigma, k=k, noise=noise)
    assert (r1 >= r0 - 1e-12).all()
    assert torch.allclose(torch.tensor(res.details["stability_start"], dtype=torch.float64), r0)
    assert (r1 > r0).any()  # it does improve somewhere
    assert res.valid.all() and ((res.x_cf - x0).norm(dim=1) <= 0.3 + 1e-9).all()
    _check_legal(res, x[base.valid], space)
    steps = torch.tensor(res.details["steps"])
    assert (steps[r0 >= tau] == 0).all() and (steps <= 15).all()


def test_generator_bad_inputs():
    model, space = _model(), _space()
    x, accepted = _factuals(model)
    with pytest.raises(InvalidInputError, match=r"already favourable"):
        closest_counterfactual(model, accepted[:3], space=space)
    bad = x.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(InvalidInputError, match=r"NaN or inf features \(rows \[0\]\)"):
        wachter(model, bad, space=space)
    with pytest.raises(InvalidInputError, match=r"tau must lie in \(0, 1\)"):
        trex_nn(model, x, accepted, tau=1.5, space=space)
    with pytest.raises(InvalidInputError, match=r"tau must lie in \(0, 1\)"):
        trex_iterative(model, accepted, tau=0.0, space=space)
    with pytest.raises(InvalidInputError, match=r"shape \(B, 6\)"):
        nearest_neighbour(model, x, accepted[:, :3], space=space)
    with pytest.raises(InvalidInputError, match="norm must be 1 or 2"):
        closest_counterfactual(model, x, norm=3, space=space)
    with pytest.raises(InvalidInputError, match="expected 2 logits"):
        closest_counterfactual(torch.nn.Linear(D, 3).double(), x, space=space)
