import pytest
import torch

from lipbound.counterfactuals.datasets import load_breast_cancer
from lipbound.counterfactuals.evaluation import changed_models, evaluate
from lipbound.counterfactuals.generators import nearest_neighbour, probability
from lipbound.counterfactuals.training import train_mlps
from lipbound.errors import InvalidInputError


def test_ensemble_training_equals_independent_runs_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 5, generator=g)
    y = (x.sum(1) > 2.5).long()
    a = train_mlps(x, y, [3, 4], width=8, epochs=3, batch_size=32)
    b = train_mlps(x, y, [4], width=8, epochs=3, batch_size=32)
    c = train_mlps(x, y, [4], width=8, epochs=3, batch_size=32)
    for pa, pb, pc in zip(a[1].parameters(), b[0].parameters(), c[0].parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6) and torch.equal(pb, pc)
    assert not torch.allclose(a[0][0].weight, a[1][0].weight)
    boot = train_mlps(x, y, [4], width=8, epochs=3, batch_size=32, bootstrap=True)
    assert not torch.allclose(boot[0][0].weight, b[0][0].weight)


def test_changed_models_and_evaluate_against_direct_computation():
    ds = load_breast_cancer()
    models = changed_models(ds, n=3, width=16, epochs=20, batch_size=32)
    assert len(models) == 3 and models[0][0].out_features == 16
    base = changed_models(ds, n=1, width=16, epochs=20, batch_size=32, first_seed=7)[0]
    with torch.no_grad():
        acc = (base(ds.x_test.float()).argmax(1) == ds.y_test).double().mean()
        rejected = probability(base, ds.x_test) < 0.5
    assert acc > 0.85
    x = ds.x_test[rejected][:10]
    res = nearest_neighbour(base, x, ds.x_train, k=64)
    ev = evaluate(base, x, res, models, ds.x_train, k=64, tau=0.6, guarantee=True, k_mu=2000)
    s = ev.summary
    assert s["cost_l1"] == pytest.approx(float((res.x_cf - x).abs().sum(1).mean()))
    assert s["cost_l2"] == pytest.approx(float((res.x_cf - x).norm(dim=1).mean()))
    with torch.no_grad():
        kept = [[float(m(res.x_cf[i : i + 1].float()).argmax()) for m in models] for i in range(10)]
    assert s["robust_validity"] == pytest.approx(sum(map(sum, kept)) / 30)
    assert s["validity"] == 1.0 and -1 <= s["lof"] <= 1 and s["changed_models"] == 3
    assert 0 <= s["guarantee_nontrivial"] <= s["guarantee_applies"] <= 1
    assert s["seconds_per_cf"] > 0 and len(ev.per_row["guarantee_p"]) == 10
    if s["guarantee_nontrivial"] > 0:
        assert 0 <= s["assumption_A_holds"] <= 1
    with pytest.raises(InvalidInputError, match="tau must lie"):
        evaluate(base, x, res, models, ds.x_train, tau=1.0)
    with pytest.raises(InvalidInputError, match="at least 1 changed model"):
        changed_models(ds, n=0)


def test_protocol_keeps_records_legal_unless_categorical_features_are_relaxed():
    from lipbound.counterfactuals import load_base_model, load_data
    from lipbound.counterfactuals.protocol import ProtocolSettings, run_protocol

    data, model = load_data("german"), load_base_model("german")
    blocks = data.schema.one_hot_groups()
    fractional = {}
    for relax in (False, True):
        s = ProtocolSettings(k=32, n_changed=0, guarantee=False, trex_steps=5, trex_step=0.2, relax_categorical=relax)
        res = run_protocol(model, data, ["trex-i"], 4, s)
        x_cf = res.results["trex-i"].x_cf
        fractional[relax] = any(bool(((x_cf[:, g] > 0) & (x_cf[:, g] < 1)).any()) for g in blocks)
        assert res.table()[0]["validity"] == 1.0 and "robust_validity" not in res.table()[0]
    assert fractional == {False: False, True: True}
