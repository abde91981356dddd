import csv
import json
from importlib import resources

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer as sk_breast_cancer
from sklearn.preprocessing import MinMaxScaler

from lipbound.counterfactuals.bundled import BASE_MODELS, load_base_model
from lipbound.counterfactuals.datasets import load_breast_cancer, load_csv, load_data, load_german
from lipbound.errors import InvalidInputError
from lipbound.models import load_samples, model_info


def test_german_encoding_roundtrips_and_has_valid_one_hot_blocks():
    ds = load_german()
    assert ds.x.shape == (1000, 61) and ds.x.min() >= 0 and ds.x.max() <= 1
    assert len(ds.train) == len(ds.test) == 500 and not set(ds.train.tolist()) & set(ds.test.tolist())
    for g in ds.schema.one_hot_groups():
        assert torch.equal(ds.x[:, g].sum(1), torch.ones(1000, dtype=torch.float64))
    text = resources.files("lipbound.counterfactuals.data").joinpath("germancredit.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    back = ds.schema.decode(ds.x[:5])
    for raw, dec in zip(rows[:5], back, strict=True):
        for k, v in dec.items():
            assert str(v) == raw[k].strip() or float(v) == pytest.approx(float(raw[k]))
    imm = [n for n, m in zip(ds.schema.feature_names, ds.schema.immutable_mask(), strict=True) if m]
    assert "age_in_years" in imm and sum(n.startswith("personal_status_and_sex=") for n in imm) == 4
    age = ds.schema.feature_names.index("age_in_years")
    assert float(ds.schema.integer_steps()[age]) == pytest.approx(1 / (75 - 19))


def test_breast_cancer_matches_sklearn_minmax():
    ds = load_breast_cancer()
    raw = sk_breast_cancer()
    np.testing.assert_allclose(ds.x.numpy(), MinMaxScaler().fit_transform(raw.data), atol=1e-12)
    assert ds.x.shape == (569, 30) and torch.equal(ds.y, torch.as_tensor(raw.target))


@pytest.mark.parametrize("data", list(BASE_MODELS))
def test_bundled_base_models_reproduce_recorded_accuracy(data):
    name = BASE_MODELS[data][0]
    model, ds = load_base_model(data), load_data(data)
    x, y = load_samples(name, dtype=torch.float64)
    assert torch.allclose(x, ds.x_test) and torch.equal(y, ds.y_test)
    with torch.no_grad():
        acc = float((model(ds.x_test.float()).argmax(1) == ds.y_test).double().mean())
    assert acc == pytest.approx(model_info(name)["accuracy"]["test"], abs=1e-9)
    assert acc > 0.7


def test_user_csv_and_its_errors(tmp_path):
    f = tmp_path / "toy.csv"
    f.write_text("a,b,label\n0,10,1\n2,20,0\n4,30,1\n")
    ds = load_csv(f)
    assert torch.allclose(ds.x, torch.tensor([[0, 0], [0.5, 0.5], [1, 1]], dtype=torch.float64))
    bad = tmp_path / "bad.csv"
    bad.write_text("duration_in_month,shoe_size,creditability\n6,42,good\n")
    with pytest.raises(InvalidInputError, match=r"unknown column\(s\) \['shoe_size'\]"):
        load_csv(bad, label="creditability", schema=load_german().schema)
    nan = tmp_path / "nan.csv"
    nan.write_text("a,label\nnan,1\n")
    with pytest.raises(InvalidInputError, match="NaN"):
        load_csv(nan)
    with pytest.raises(InvalidInputError, match="no label column 'label'"):
        (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n")
        load_csv(tmp_path / "nolabel.csv")
    with pytest.raises(InvalidInputError, match="unknown data"):
        load_data("mnist")
    assert json.loads(resources.files("lipbound.counterfactuals.data").joinpath("models.json").read_text())
