"""Smooth.predict / certify / tune on models with known smoothed probabilities, and the bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import nn

from lipbound.errors import InvalidInputError, ShapeMismatchError
from lipbound.smoothing import Candidate, Smooth, tune


class Halfspace(nn.Module):
    """Logits (u, -u), u = w^T x + b: the hard smoothed classifier has p_A = Phi(|u| / (sigma ||w||)) and g = f."""

    def __init__(self, w, b: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.b = b

    def forward(self, x):
        u = x.reshape(x.shape[0], -1) @ self.w + self.b
        return torch.stack([u, -u], dim=1)


def _model():
    return Halfspace([3.0, 4.0]).eval()  # ||w|| = 5, distance of x to the boundary = |u| / 5


X = torch.tensor([[0.2, 0.1], [-0.3, 0.0], [0.0, 0.0], [0.05, -0.04]], dtype=torch.float64)
DIST = torch.tensor([0.2, 0.18, 0.0, 0.002])


def test_cohen_certify_matches_the_closed_form_radius():
    sm = Smooth(_model(), 2, 0.25, input_shape=(2,))
    res = sm.certify(X, n0=50, n=20_000, alpha=0.001, generator=1)
    assert res.prediction.tolist()[:2] == [0, 1] and res.prediction[2] == -1
    assert res.radius.dtype == torch.float64 and res.prediction.dtype == torch.long
    # p_A_lower within a few standard errors below p_A, radius close below the distance
    p_a = special.ndtr(DIST[:2].double().numpy() / 0.25)
    se = (p_a * (1 - p_a) / 20_000) ** 0.5
    assert ((p_a - res.p_lower[:2].numpy()) > 0).all() and ((p_a - res.p_lower[:2].numpy()) < 6 * se).all()
    assert (res.radius[:2] <= DIST[:2].double()).all() and (res.radius[:2] > DIST[:2].double() - 0.01).all()
    assert res.radius[2] == 0 and res.radius_source[2] == "abstain"
    d = res.to_dict()
    assert d["method"] == "cohen" and d["prediction"][2] == -1 and len(d["radius"]) == 4 and d["classifier"] == "fixed"
    # reproducible with the same seed, different with another
    again = sm.certify(X, n0=50, n=20_000, alpha=0.001, generator=1)
    assert torch.equal(again.radius, res.radius)
    other = sm.certify(X, n0=50, n=20_000, alpha=0.001, generator=2)
    assert not torch.equal(other.radius, res.radius)


def test_predict_uses_the_two_sided_binomial_test():
    sm = Smooth(_model(), 2, 0.25)
    res = sm.predict(X, n=400, alpha=0.01, generator=0)
    assert res.prediction.tolist()[:2] == [0, 1] and res.method == "predict"
    # on the boundary the two classes are equally likely: the test abstains w.p. about 1 - alpha
    many = sm.predict(torch.zeros(300, 2, dtype=torch.float64), n=100, alpha=0.1, generator=3)
    rate = (many.prediction != -1).float().mean().item()
    assert rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 300)
    # n = 10, alpha = 0.001: even unanimous votes give p = 2^-9 > alpha, always abstain
    assert (sm.predict(X[:2] * 100, n=10, alpha=0.001).prediction == -1).all()
    assert stats.binomtest(10, 10, 0.5).pvalue == pytest.approx(2**-9)


@pytest.mark.parametrize("select", ["n0", "bonferroni"])
def test_lvm_certifies_below_the_true_radius_and_reports_its_choice(select):
    sm = Smooth(_model(), 2, 0.25, input_shape=(2,))
    res = sm.certify(X, n0=100, n=5000, alpha=0.01, method="lvm", select=select, generator=0)
    assert res.prediction.tolist()[:2] == [0, 1]
    assert (res.radius <= DIST.double() + 1e-12).all() and (res.radius[:2] > 0.1).all()
    assert res.classifier == "per-input" and all(isinstance(c, str) and c for c in res.candidate)
    assert set(res.radius_source) <= {"phi", "lipschitz", "abstain"}
    n_cands = 19
    assert res.bounds_per_input == 2 * (n_cands if select == "bonferroni" else 1)
    assert res.alpha_per_bound == pytest.approx(0.01 / res.bounds_per_input)


def test_lvm_lipschitz_radius_wins_for_a_small_certified_constant():
    sm = Smooth(_model(), 2, 0.25, input_shape=(2,))
    lip = 5 * math.sqrt(2)  # exact l2 constant of x -> (u, -u)
    cand = Candidate("sparsemax", 0.25)
    plain = sm.certify(X[:2], 20, 5000, 0.01, method="lvm", select="global", candidate=cand, generator=0)
    with_l = sm.certify(
        X[:2], 20, 5000, 0.01, method="lvm", select="global", candidate=cand, lipschitz=lip, generator=0
    )
    assert torch.equal(plain.p_lower, with_l.p_lower)  # same samples, same bounds: the radius is free
    assert (with_l.radius > plain.radius).all() and with_l.radius_source == ["lipschitz", "lipschitz"]
    assert (with_l.radius <= DIST[:2].double()).all()
    assert with_l.lipschitz == pytest.approx(lip)


def test_certified_lipschitz_uses_the_global_bound():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    sm = Smooth(net, 3, 0.5, input_shape=(4,))
    res = sm.certify(torch.zeros(2, 4, dtype=torch.float64), 10, 200, 0.1, method="lvm", lipschitz="certified")
    # a valid upper bound: at least the largest Jacobian norm seen at random points, at most the layer product
    pts = torch.randn(200, 4, dtype=torch.float64)
    jac = torch.vmap(torch.func.jacrev(lambda v: net(v[None])[0]))(pts)
    assert res.lipschitz is not None and res.lipschitz >= torch.linalg.matrix_norm(jac, ord=2).max().item() - 1e-9
    prod = torch.linalg.matrix_norm(net[2].weight, ord=2) * torch.linalg.matrix_norm(net[0].weight, ord=2)
    assert res.lipschitz <= prod.item() * (1 + 1e-6)


def test_tune_picks_one_candidate_and_global_certifies_with_it():
    sm = Smooth(_model(), 2, 0.25, input_shape=(2,))
    xv = torch.tensor([[0.1, 0.1], [-0.1, -0.2], [0.3, -0.1]], dtype=torch.float64)
    yv = torch.tensor([0, 1, 0])
    t = tune(sm, xv, yv, n0=20, n=500, alpha=0.01, generator=0)
    assert isinstance(t.candidate, Candidate) and len(t.scores) == 19
    assert t.scores[t.candidate.label()] == max(t.scores.values())
    res = sm.certify(X, 20, 500, 0.01, method="lvm", select="global", candidate=t)
    assert set(res.candidate) == {t.candidate.label()} and res.classifier == "fixed"
    assert t.to_dict()["candidate"]["map"] == t.candidate.map


def test_batch_size_does_not_change_the_statistics_definition():
    sm = Smooth(_model(), 2, 0.25, input_shape=(2,))
    a = sm.certify(X, 10, 3000, 0.01, method="lvm", select="global", candidate=Candidate("softmax", 2.0), batch_size=64)
    b = sm.certify(
        X, 10, 3000, 0.01, method="lvm", select="global", candidate=Candidate("softmax", 2.0), batch_size=7000
    )
    # different noise draws, same estimand: radii agree to Monte-Carlo precision
    assert torch.allclose(a.radius, b.radius, atol=0.03)


def test_bad_inputs_raise_clear_errors():
    m = _model()
    with pytest.raises(InvalidInputError, match="sigma"):
        Smooth(m, 2, 0.0)
    with pytest.raises(InvalidInputError, match="sigma"):
        Smooth(m, 2, float("nan"))
    with pytest.raises(InvalidInputError, match="num_classes"):
        Smooth(m, 1, 0.5)
    sm = Smooth(m, 2, 0.5, input_shape=(2,))
    with pytest.raises(InvalidInputError, match="n0"):
        sm.certify(X, n0=0, n=10)
    with pytest.raises(InvalidInputError, match="n must"):
        sm.certify(X, n0=5, n=0)
    with pytest.raises(InvalidInputError, match="alpha"):
        sm.certify(X, 5, 10, alpha=1.0)
    with pytest.raises(InvalidInputError, match="alpha"):
        sm.predict(X, 10, alpha=0.0)
    with pytest.raises(ShapeMismatchError, match="batch dimension"):
        sm.certify(X[0], 5, 10)
    with pytest.raises(ShapeMismatchError, match=r"per-sample shape \(3,\)"):
        sm.certify(torch.zeros(2, 3), 5, 10)
    with pytest.raises(InvalidInputError, match="NaN"):
        sm.certify(torch.tensor([[0.0, float("nan")]]), 5, 10)
    with pytest.raises(ShapeMismatchError, match="num_classes=3"):
        Smooth(m, 3, 0.5).certify(X, 5, 10)
    with pytest.raises(ShapeMismatchError, match="failed on noisy inputs"):
        Smooth(nn.Linear(5, 2).double().eval(), 2, 0.5).certify(X, 5, 10)
    with pytest.raises(InvalidInputError, match="method"):
        sm.certify(X, 5, 10, method="best")
    with pytest.raises(InvalidInputError, match="select"):
        sm.certify(X, 5, 10, method="lvm", select="best-of-all")
    with pytest.raises(InvalidInputError, match=r"method=.lvm. only"):
        sm.certify(X, 5, 10, method="cohen", lipschitz=1.0)
    with pytest.raises(InvalidInputError, match="candidate="):
        sm.certify(X, 5, 10, method="lvm", select="global")
    with pytest.raises(InvalidInputError, match="lipschitz"):
        sm.certify(X, 5, 10, method="lvm", lipschitz=-1.0)
    with pytest.raises(InvalidInputError, match="lipschitz"):
        sm.certify(X, 5, 10, method="lvm", lipschitz="power-iteration")
    with pytest.raises(InvalidInputError, match="n >= 2"):
        sm.certify(X, 5, 1, method="lvm")


def test_train_mode_model_is_smoothed_as_an_eval_copy_with_a_warning():
    net = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    assert net.training
    with pytest.warns(UserWarning, match="eval-mode copy"):
        sm = Smooth(net, 2, 0.5)
    assert net.training and not sm.model.training  # the caller's object is unchanged
    a = sm.certify(X, 5, 200, generator=0)
    b = Smooth(net.eval(), 2, 0.5).certify(X, 5, 200, generator=0)
    assert torch.equal(a.radius, b.radius)  # deterministic: dropout is off in the smoothed copy


def test_p_b_upper_is_the_max_over_the_other_classes_not_the_second_largest_bound():
    from lipbound.smoothing import stats as S
    from lipbound.smoothing.sampling import SampleStats
    from lipbound.smoothing.smooth import fixed_candidate_certificates

    # c_A = 1 is fixed beforehand; class 0 holds the largest upper bound, so argsort(uppers)[-2] would be class 1 itself
    n = 1000
    counts = torch.tensor([[520, 400, 80]])
    st = SampleStats(n=n, counts=counts, soft=[])
    certs = fixed_candidate_certificates(st, [Candidate("argmax")], np.array([[1]]), 0.01 / 3, 0.5, None)
    up0 = S.clopper_pearson_upper(520, n, 0.01 / 3)
    lo1 = S.clopper_pearson_lower(400, n, 0.01 / 3)
    assert certs.lower[0, 0] == pytest.approx(lo1)
    assert certs.upper[0, 0] == pytest.approx(min(up0, 1 - lo1))
    assert certs.radius[0, 0] == 0.0 and certs.source[0, 0] == 0  # c_A is not the top class: abstain
    # with c_A = 0, p_B_upper = max(upper_1, upper_2) (capped by 1 - p_A_lower)
    certs0 = fixed_candidate_certificates(st, [Candidate("argmax")], np.array([[0]]), 0.01 / 3, 0.5, None)
    lo0, up1 = S.clopper_pearson_lower(520, n, 0.01 / 3), S.clopper_pearson_upper(400, n, 0.01 / 3)
    assert certs0.upper[0, 0] == pytest.approx(min(up1, 1 - lo0))
    assert certs0.radius[0, 0] == pytest.approx(S.phi_radius(lo0, min(up1, 1 - lo0), 0.5))
