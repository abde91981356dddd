"""The ``lipbound`` CLI: ``local`` end to end with JSON output, help texts, one-line user errors, ``demo``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lipbound
from lipbound.cli import app, parse_direction
from lipbound.errors import InvalidInputError, ShapeMismatchError
from lipbound.models import load_bundled, load_samples

runner = CliRunner()
HAS_LOADER = importlib.util.find_spec("lipbound.graph.load") is not None
needs_loader = pytest.mark.skipif(not HAS_LOADER, reason="lipbound.graph.load (model/input files) not available")


def _grad_dual_norm(model: torch.nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||grad_x c^T f(x)||_1 per input, by autograd (an attained value: must be <= the certified upper bound)."""
    x = x.clone().double().requires_grad_(True)
    out = model.double()(x) @ c.double()
    (g,) = torch.autograd.grad(out.sum(), x)
    return g.reshape(len(x), -1).abs().sum(1)


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert needle in lines[0]
    assert "Traceback" not in result.output


def test_help_texts() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    assert "local" in r.output and "demo" in r.output
    r = runner.invoke(app, ["local", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for word in ("--eps", "--x0", "--norm", "margin:i,j", "bundled:<name>", "--method", "--json", "--dtype"):
        assert word in r.output, word
    r = runner.invoke(app, ["demo", "--help"])
    assert r.exit_code == 0 and "--out" in r.output


def test_local_bundled_margin_json(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    r = runner.invoke(
        app, ["local", "bundled:digits-mlp", "--eps", "0.01", "--limit", "2", "--c", "margin:3,5", "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "upper" in r.stdout and "gap" in r.stdout
    data = json.loads(out.read_text())
    assert data["eps"] == 0.01 and data["c"] == "margin:3,5" and data["dtype"] == "float64"
    assert [row["input"] for row in data["results"]] == [0, 1]
    # the same numbers through the API with the explicit direction c = e_3 - e_5
    model = load_bundled("digits-mlp")
    x, _ = load_samples("digits-mlp")
    c = torch.zeros(10, dtype=torch.float64)
    c[3], c[5] = 1.0, -1.0
    ref = lipbound.local_lipschitz(model, x[:2], 0.01, c=c)
    attained = _grad_dual_norm(model, x[:2], c)
    for k, row in enumerate(data["results"]):
        assert row["upper"] == pytest.approx(ref.upper[k].item(), rel=1e-9)
        assert row["upper"] >= attained[k].item() * (1 - 1e-9)
        assert row["upper"] >= row["lower"] > 0
        assert row["gap"] == pytest.approx(row["upper"] / row["lower"])


def test_local_all_rows_and_methods(tmp_path: Path) -> None:
    res = {}
    for method in ("crown", "interval"):
        out = tmp_path / f"{method}.json"
        args = ["local", "bundled:simple-mlp-16", "--eps", "0.1", "--limit", "2", "--c", "all"]
        r = runner.invoke(app, [*args, "--method", method, "--json", str(out)])
        assert r.exit_code == 0, r.output
        res[method] = json.loads(out.read_text())["results"]
    for rc, ri in zip(res["crown"], res["interval"], strict=True):
        assert len(rc["upper"]) == 2  # every output row of the 2-logit model
        assert all(u <= v * (1 + 1e-9) for u, v in zip(rc["upper"], ri["upper"], strict=True))
        assert rc["max_upper"] == pytest.approx(max(rc["upper"]))
        assert all(u >= lo for u, lo in zip(rc["upper"], rc["lower"], strict=True))


def test_local_lipsdp_method_matches_api_and_needs_norm2(tmp_path: Path) -> None:
    out = tmp_path / "sdp.json"
    args = ["local", "bundled:simple-mlp-16", "--eps", "0.01", "--limit", "1", "--c", "margin:0,1", "--norm", "2"]
    r = runner.invoke(app, [*args, "--method", "lipsdp", "--json", str(out)])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(out.read_text())["results"]
    model = load_bundled("simple-mlp-16", torch.float64)
    x, _ = load_samples("simple-mlp-16", torch.float64)
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    ref = lipbound.local_lipschitz(model, x[:1], 0.01, norm=2, c=c, method="lipsdp", lower=False)
    assert row["upper"] == pytest.approx(float(ref.upper[0]), rel=1e-6)
    assert row["upper"] >= row["lower"] > 0
    bad = runner.invoke(app, ["local", "bundled:simple-mlp-16", "--method", "lipsdp", "--limit", "1"])
    assert bad.exit_code == 2 and "--norm 2" in bad.output


@needs_loader
def test_local_x0_file_float32_norm2(tmp_path: Path) -> None:
    x, _ = load_samples("simple-mlp-16")
    np.save(tmp_path / "x.npy", x[:3].numpy())
    out = tmp_path / "r.json"
    r = runner.invoke(
        app,
        [
            *("local", "bundled:simple-mlp-16", "--x0", str(tmp_path / "x.npy"), "--eps", "0.05", "--norm", "2"),
            *("--c", "margin:0,1", "--dtype", "float32", "--json", str(out)),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 3
    model = load_bundled("simple-mlp-16").double()
    xx = x[:3].double().requires_grad_(True)
    (g,) = torch.autograd.grad((model(xx)[:, 0] - model(xx)[:, 1]).sum(), xx)
    for row, gn in zip(rows, g.norm(dim=1), strict=True):
        assert row["upper"] >= gn.item() * (1 - 1e-5)


def _json_uppers(args: list[str], out: Path) -> list[float]:
    r = runner.invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 0, r.output
    return [row["upper"] for row in json.loads(out.read_text())["results"]]


@needs_loader
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_factory_with_weights_and_onnx_match_bundled(tmp_path: Path) -> None:
    model = load_bundled("digits-cnn")
    x, _ = load_samples("digits-cnn")
    np.save(tmp_path / "x.npy", x[:2].numpy())
    common = ["--x0", str(tmp_path / "x.npy"), "--eps", "0.01", "--c", "margin:0,1"]
    ref = _json_uppers(["local", "bundled:digits-cnn", *common], tmp_path / "ref.json")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    factory = ["local", "lipbound.models:DigitsCNN", "--weights", str(tmp_path / "w.pt"), "--input-shape", "1,8,8"]
    got = _json_uppers([*factory, *common], tmp_path / "factory.json")
    assert got == pytest.approx(ref, rel=1e-9)
    torch.onnx.export(model, (x[:1],), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"])
    got = _json_uppers(["local", str(tmp_path / "m.onnx"), *common], tmp_path / "onnx.json")
    assert got == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--eps", "-1"], "--eps must be"),
        (["--c", "margin:3,99"], "output index 99 out of range for 10 outputs"),
        (["--c", "margin:3,3"], "must differ"),
        (["--c", "margin:a"], "expected margin:i,j"),
        (["--c", "bogus"], "expected margin:i,j, all, or a .npy file"),
        (["--c", "missing.npy"], "does not exist"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--x0", "no/such/file.npy"], "does not exist"),
    ],
)
def test_bad_options_one_line_exit_2(args: list[str], needle: str) -> None:
    r = runner.invoke(app, ["local", "bundled:digits-mlp", *args])
    _one_line_error(r, needle)


def test_bad_model_and_direction_file(tmp_path: Path) -> None:
    _one_line_error(runner.invoke(app, ["local", "bundled:nope"]), "unknown bundled model 'nope'")
    np.save(tmp_path / "c.npy", np.ones((2, 7)))
    r = runner.invoke(app, ["local", "bundled:digits-mlp", "--c", str(tmp_path / "c.npy")])
    _one_line_error(r, "expected (10,) or (K, 10)")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    _one_line_error(runner.invoke(app, ["local", "bundled:digits-mlp", "--c", str(tmp_path / "bad.npy")]), "bad.npy")
    r = runner.invoke(app, ["local", "bundled:digits-mlp", "--weights", str(tmp_path / "w.pt")])
    _one_line_error(r, "--weights cannot be combined")


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), dtype=np.float32))
    r = runner.invoke(app, ["local", str(bad), "--x0", str(tmp_path / "x.npy"), "--eps", "0.1"])
    _one_line_error(r, "model.onnx" if HAS_LOADER else "lipbound.graph.load")


def test_bad_choice_is_usage_error() -> None:
    r = runner.invoke(app, ["local", "bundled:digits-mlp", "--method", "magic"])
    assert r.exit_code == 2
    assert "Traceback" not in r.output and "magic" in r.output


def test_json_not_written_on_error(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("previous")
    r = runner.invoke(app, ["local", "bundled:digits-mlp", "--c", "margin:1,42", "--json", str(out)])
    assert r.exit_code == 2
    assert out.read_text() == "previous"
    missing_dir = tmp_path / "no" / "r.json"
    r = runner.invoke(app, ["local", "bundled:simple-mlp-16", "--limit", "1", "--json", str(missing_dir)])
    _one_line_error(r, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp files left behind


def test_parse_direction() -> None:
    c = parse_direction("margin:2,0", 3, torch.float64)
    assert c.tolist() == [-1.0, 0.0, 1.0]
    assert torch.equal(parse_direction("all", 3, torch.float32), torch.eye(3))
    assert parse_direction(None, 3, torch.float32) is None
    with pytest.raises(InvalidInputError):
        parse_direction("margin:1", 3, torch.float32)


def test_parse_direction_file_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.ones(4))
    with pytest.raises(ShapeMismatchError, match=r"shape \(4,\)"):
        parse_direction(str(tmp_path / "c.npy"), 3, torch.float32)


def test_demo_quick_writes_png(tmp_path: Path) -> None:
    r = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    png = tmp_path / "d" / "bounds_vs_eps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert {r["model"] for r in rows} == {"digits-mlp", "digits-cnn"}
    for row in rows:
        assert 0 < row["lower"] <= row["crown"] * (1 + 1e-9) <= row["interval"] * (1 + 1e-9)
    assert "digits-cnn" in r.stdout and "interval" in r.stdout


def test_local_bab_tightens_and_stays_sound(tmp_path: Path) -> None:
    out = tmp_path / "bab.json"
    base = ["local", "bundled:simple-mlp-16", "--eps", "0.3", "--c", "margin:0,1", "--limit", "1"]
    plain = runner.invoke(app, [*base, "--json", str(tmp_path / "plain.json")])
    res = runner.invoke(app, [*base, "--bab", "5", "--json", str(out)])
    assert plain.exit_code == 0 and res.exit_code == 0, res.output
    crown = json.loads((tmp_path / "plain.json").read_text())["results"][0]
    bab = json.loads(out.read_text())
    row = bab["results"][0]
    assert bab["method"] == "crown+bab"
    assert row["lower"] <= row["upper"] <= crown["upper"] + 1e-9
    assert row["upper"] < 0.9 * crown["upper"]  # 50.1 -> 41.9 (the exact value) on this net
    bad = runner.invoke(app, [*base, "--bab", "0"])
    _one_line_error(bad, "--bab must be a positive number")


def test_global_bundled_table_and_json(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    res = runner.invoke(app, ["global", "bundled:simple-mlp-16", "--method", "all", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["lipsdp-neuron"]["upper"] <= rows["product"]["upper"] * (1 + 1e-9)
    model = load_bundled("simple-mlp-16").double()
    x = torch.rand(64, 10, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x).permute(1, 0, 2)
    sampled = torch.linalg.matrix_norm(jac, 2).max().item()
    assert all(r["upper"] >= sampled * (1 - 1e-9) for r in rows.values() if r["upper"] is not None)


def test_monotone_command(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["monotone", "bundled:simple-mlp-16", "--eps", "0.05", "--limit", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 * 2  # 2 inputs x 2 outputs
    for row in rows:
        parts = row["non_decreasing"] + row["non_increasing"] + row["not_monotone"] + row["unknown"]
        assert set(parts) == set(range(10))
        assert not set(row["non_decreasing"]) & set(row["not_monotone"])
    _one_line_error(runner.invoke(app, ["monotone", "bundled:simple-mlp-16", "--bisections", "40"]), "--bisections")


def test_local_table_is_compact_by_default_and_per_row_on_request() -> None:
    base = ["local", "bundled:simple-mlp-16", "--limit", "2", "--eps", "0.01"]
    compact = runner.invoke(app, base)
    assert compact.exit_code == 0, compact.output
    detailed = runner.invoke(app, [*base, "--per-row"])
    assert detailed.exit_code == 0, detailed.output
    body = [ln for ln in compact.stdout.splitlines() if ln.startswith("│")]
    assert len(body) == 2  # one row per input (max over the output rows)
    assert "--per-row" in compact.stdout
    assert len([ln for ln in detailed.stdout.splitlines() if ln.startswith("│")]) > len(body)


def test_local_json_on_stdout_and_partial_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = runner.invoke(app, ["local", "bundled:simple-mlp-16", "--limit", "2", "--eps", "0.01", "--json", "-"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["complete"] and len(payload["results"]) == 2
    assert "local Lipschitz bounds" in res.stderr  # the table went to stderr

    real = lipbound.local_lipschitz
    calls = []

    def dies_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lipbound, "local_lipschitz", dies_second)
    out = tmp_path / "partial.json"
    res = runner.invoke(app, ["local", "bundled:simple-mlp-16", "--limit", "3", "--eps", "0.01", "--json", str(out)])
    assert res.exit_code != 0
    saved = json.loads(out.read_text())
    assert not saved["complete"] and saved["inputs"] == 3
    assert [r["input"] for r in saved["results"]] == [0]
    assert saved["results"][0]["max_upper"] == pytest.approx(payload["results"][0]["max_upper"], rel=1e-12)


def test_training_mode_model_is_bounded_in_eval_mode_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "bn_factory.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    np.save(tmp_path / "x.npy", np.zeros((1, 3), dtype=np.float32))
    out = tmp_path / "r.json"
    res = runner.invoke(
        app, ["local", "bn_factory:make", "--x0", str(tmp_path / "x.npy"), "--eps", "0.1", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "note:" in res.stderr and "eval mode" in res.stderr and "'1'" in res.stderr
    import bn_factory

    ref = lipbound.local_lipschitz(bn_factory.make().eval(), torch.zeros(1, 3, dtype=torch.float64), eps=0.1)
    assert json.loads(out.read_text())["results"][0]["max_upper"] == pytest.approx(ref.upper_max.item(), rel=1e-9)


def test_cli_messages_use_flag_names_and_flags_show_no_placeholder() -> None:
    from lipbound.cli import cli_wording

    assert cli_wording("input_shape is required for a TorchScript model (e.g. input_shape=(784,))") == (
        "--input-shape is required for a TorchScript model (e.g. --input-shape 784)"
    )
    assert "pass --input-shape" in cli_wording("dynamic per-sample dims [1]; pass input_shape=(...) explicitly")
    help_text = runner.invoke(app, ["local", "--help"]).stdout
    assert "--optimize" in help_text and "--per-row" in help_text
    assert "<bool>" not in help_text


def test_monotone_json_on_stdout() -> None:
    res = runner.invoke(app, ["monotone", "bundled:simple-mlp-16", "--eps", "0.05", "--limit", "1", "--json", "-"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    assert len(rows) == 2 and "monotonicity" in res.stderr
