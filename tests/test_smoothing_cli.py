"""``lipbound smooth certify|predict`` end to end (small n), JSON to file and stdout, plot, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lipbound.cli import app
from lipbound.smoothing import load_digits_split

runner = CliRunner()
MODEL = "bundled:digits-rs-cnn-0.25"


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert needle in lines[0], lines[0]


def test_certify_cohen_json_and_plot(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    args = ["smooth", "certify", MODEL, "--n0", "20", "--n", "300", "--alpha", "0.01", "--limit", "6"]
    res = runner.invoke(app, [*args, "--json", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "certified accuracy" in res.output and "guarantee" in res.output
    payload = json.loads(out.read_text())
    r = payload["result"]
    assert r["method"] == "cohen" and r["sigma"] == 0.25 and len(r["radius"]) == 6 and r["n"] == 300
    assert payload["labels"] == load_digits_split("test")[1][:6].tolist()
    # the summary is recomputable from the per-input values
    ok = np.array(r["prediction"]) == np.array(payload["labels"])
    acr = float((np.array(r["radius"]) * ok).mean())
    assert payload["summary"]["average_certified_radius"] == pytest.approx(acr)
    # largest possible Cohen radius at n = 300, alpha = 0.01: sigma Phi^-1(alpha^(1/n))
    from scipy.special import ndtri

    assert max(r["radius"]) <= 0.25 * ndtri(0.01 ** (1 / 300)) + 1e-12
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_certify_lvm_global_to_stdout():
    args = ["smooth", "certify", "digits-rs-lip-0.25", "--n0", "20", "--n", "200", "--alpha", "0.05", "--limit", "3"]
    res = runner.invoke(
        app,
        [
            *args,
            "--method",
            "lvm",
            "--select",
            "global",
            "--n-val",
            "5",
            "--lipschitz",
            "certified",
            "--lipschitz-method",
            "product",
            "--json",
            "-",
        ],
    )
    assert res.exit_code == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["result"]["select"] == "global" and payload["result"]["classifier"] == "fixed"
    assert payload["result"]["lipschitz"] <= 1.0
    assert len(set(payload["result"]["candidate"])) == 1 and payload["tuned"]["candidate"]["map"] in (
        "argmax",
        "softmax",
        "sparsemax",
    )


def test_predict_on_a_user_npz(tmp_path):
    x, y = load_digits_split("test")
    f = tmp_path / "d.npz"
    np.savez(f, x=x[:4].reshape(4, 64).numpy(), y=y[:4].numpy())
    res = runner.invoke(
        app, ["smooth", "predict", MODEL, "--data", str(f), "--n", "200", "--alpha", "0.01", "--json", "-"]
    )
    assert res.exit_code == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["result"]["method"] == "predict" and len(payload["result"]["prediction"]) == 4
    assert 0 <= payload["summary"]["accuracy"] <= 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sigma", "0"], "sigma"),
        (["--alpha", "2"], "alpha"),
        (["--n0", "0"], "n0"),
        (["--method", "best"], "--method"),
        (["--select", "global"], "lvm only"),
        (["--method", "lvm", "--select", "best-of-all"], "--select"),
        (["--method", "lvm", "--lipschitz", "big"], "--lipschitz"),
        (["--data", "nope.npz"], "does not exist"),
        (["--data", "x.csv"], ".npz"),
    ],
)
def test_bad_input_is_one_red_line(extra, needle):
    res = runner.invoke(app, ["smooth", "certify", MODEL, "--n", "20", "--limit", "2", *extra])
    _one_line_error(res, needle)


def test_unknown_model_and_missing_sigma(tmp_path):
    _one_line_error(runner.invoke(app, ["smooth", "certify", "bundled:nope", "--n", "20"]), "unknown bundled model")
    _one_line_error(runner.invoke(app, ["smooth", "certify", "digits-rs-cnn-0.5", "--n", "20"]), "digits-rs-cnn-0.50")
    _one_line_error(runner.invoke(app, ["smooth", "predict", "bundled:digits-cnn", "--n", "20"]), "--sigma")


def test_wrong_input_shape_file(tmp_path):
    f = tmp_path / "bad.npz"
    np.savez(f, x=torch.zeros(2, 5).numpy())
    _one_line_error(runner.invoke(app, ["smooth", "certify", MODEL, "--data", str(f), "--n", "20"]), "input shape")


def test_global_select_on_user_data_needs_a_validation_file(tmp_path):
    x, _ = load_digits_split("test")
    f = tmp_path / "nolabels.npz"
    np.savez(f, x=x[:2].numpy())
    base = ["smooth", "certify", MODEL, "--data", str(f), "--n", "20"]
    _one_line_error(runner.invoke(app, [*base, "--method", "lvm", "--select", "global"]), "--val")
    _one_line_error(runner.invoke(app, [*base, "--plot", str(tmp_path / "p.png")]), "labels")
