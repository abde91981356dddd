"""lipbound.run: spec validation (before any work), run keys, records against the direct API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lipbound
from lipbound.errors import LipboundError
from lipbound.models import load_bundled, load_samples
from lipbound.runner import RunDataError, RunShapeError, RunSpec, RunSpecError, load_spec_file
from lipbound.runner.spec import prepare


def _spec(tmp_path, **kw):
    base = dict(task="local", model="digits-mlp", data="digits", out=str(tmp_path / "r.jsonl"), limit=2)
    return RunSpec(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "err", "words"),
    [
        ({"task": "nope"}, RunSpecError, ["unknown task 'nope'", "local", "bab", "monotone"]),
        ({"data": "missing.npz"}, RunDataError, ["does not exist", "missing.npz"]),
        ({"data": "simple"}, RunShapeError, ["(10,)", "(64,)"]),
        ({"options": {"bogus": 1}}, RunSpecError, ["bogus", "accepted", "method"]),
        ({"options": {"eps": 1}}, RunSpecError, ["eps"]),
        ({"eps": -1.0}, RunSpecError, ["eps"]),
        ({"executor": "slurm"}, RunSpecError, ["slurm", "ray"]),
        ({"model": "no-such-model"}, LipboundError, ["no-such-model"]),
        ({"workers": 0}, RunSpecError, ["workers"]),
    ],
)
def test_bad_spec_fails_before_any_work(tmp_path, kw, err, words):
    with pytest.raises(err) as e:
        lipbound.run(spec=_spec(tmp_path, **kw))
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "r.jsonl").exists()  # nothing written


def test_spec_files_yaml_json_and_unknown_field(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "task: local\nmodel: digits-mlp\ndata: digits\neps: 0.05\noptions: {method: interval}\n"
    )
    s = load_spec_file(tmp_path / "s.yaml", limit=3)
    assert (s.task, s.eps, s.options, s.limit) == ("local", 0.05, {"method": "interval"}, 3)
    (tmp_path / "s.json").write_text(json.dumps({"task": "bab", "model": "digits-mlp", "data": "digits"}))
    assert load_spec_file(tmp_path / "s.json").task == "bab"
    (tmp_path / "bad.yaml").write_text("task: local\nmodel: digits-mlp\ndata: digits\nepsilon: 0.1\n")
    with pytest.raises(RunSpecError, match=r"unknown spec field.*epsilon"):
        load_spec_file(tmp_path / "bad.yaml")
    with pytest.raises(RunSpecError, match="does not exist"):
        load_spec_file(tmp_path / "none.yaml")


def test_run_key_covers_what_not_how(tmp_path):
    k = prepare(_spec(tmp_path)).key
    assert prepare(_spec(tmp_path, limit=5, workers=2, executor="ray", retries=1)).key == k
    assert prepare(_spec(tmp_path, eps=0.05)).key != k
    assert prepare(_spec(tmp_path, options={"method": "interval"})).key != k
    x, _ = load_samples("digits-mlp")
    np.save(tmp_path / "x.npy", x.numpy())
    k_file = prepare(_spec(tmp_path, data=str(tmp_path / "x.npy"))).key
    x[0, 0] += 0.5
    np.save(tmp_path / "x.npy", x.numpy())
    assert prepare(_spec(tmp_path, data=str(tmp_path / "x.npy"))).key != k_file


def test_local_records_match_the_batched_api(tmp_path):
    res = lipbound.run("local", "digits", tmp_path / "r.jsonl", model="digits-mlp", eps=0.05, limit=4, workers=1)
    x = load_samples("digits-mlp", dtype=torch.float64)[0][:4]
    ref = lipbound.local_lipschitz(load_bundled("digits-mlp", torch.float64), x, 0.05)
    assert [r["index"] for r in res.records] == [0, 1, 2, 3]
    assert all(r["status"] == "ok" for r in res.records)
    np.testing.assert_allclose([r["upper"] for r in res.records], ref.upper_max.numpy(), rtol=1e-9)
    # the attained lower bound samples per call (seeded), so its reference is the one-input call
    model = load_bundled("digits-mlp", torch.float64)
    lower_ref = [float(lipbound.local_lipschitz(model, x[i : i + 1], 0.05).lower_max[0]) for i in range(4)]
    np.testing.assert_allclose([r["lower"] for r in res.records], lower_ref, rtol=1e-9)
    assert all(r["lower"] <= r["upper"] for r in res.records)
    assert res.summary["status"] == {"ok": 4}
    assert res.summary["distribution"]["upper"]["max"] == pytest.approx(float(ref.upper_max.max()))


def test_monotone_and_csv_data(tmp_path):
    x, y = load_samples("simple-mlp-16", dtype=torch.float64)
    rows = ["label," + ",".join(f"f{j}" for j in range(x.shape[1]))]
    rows += [f"{int(y[i])}," + ",".join(repr(float(v)) for v in x[i]) for i in range(3)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    res = lipbound.run("monotone", str(tmp_path / "d.csv"), tmp_path / "m.jsonl", model="simple-mlp-16", eps=0.01,
                        options={"samples": 8}, workers=1)  # fmt: skip
    ref = lipbound.certify_monotonicity(load_bundled("simple-mlp-16", torch.float64), x[:3], 0.01, samples=8)
    assert [r["increasing"] for r in res.records] == ref.increasing.flatten(1).sum(1).tolist()
    assert [r["decreasing"] for r in res.records] == ref.decreasing.flatten(1).sum(1).tolist()
    assert all(r["pairs"] == 2 * x.shape[1] for r in res.records)
