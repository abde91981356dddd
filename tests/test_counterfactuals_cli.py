import json

import pytest
from typer.testing import CliRunner

from lipbound.cli import app

runner = CliRunner()
FAST = ["--n", "3", "--k", "32", "--changed-models", "2", "--no-guarantee", "--trex-steps", "3"]


def test_cli_json_stdout_and_table(tmp_path):
    res = runner.invoke(
        app, ["counterfactual", "--data", "breast_cancer", "--method", "nn,trex-nn,trex-i", *FAST, "--json", "-"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_factuals"] == 3 and [r["method"] for r in out["table"]] == ["nn", "trex-nn", "trex-i"]
    for row in out["table"]:
        assert row["changed_models"] == 2 and 0 <= row["robust_validity"] <= 1
    assert len(out["methods"]["nn"]["x_cf"]) == 3
    png = tmp_path / "p.png"
    res = runner.invoke(
        app,
        [
            "counterfactual",
            "auto",
            "--data",
            "breast_cancer",
            "--method",
            "nn",
            *FAST,
            "--plot",
            str(png),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "robust" in res.stdout and png.stat().st_size > 1000
    assert json.loads((tmp_path / "r.json").read_text())["table"][0]["method"] == "nn"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "breast_cancer", "--method", "dice"], "unknown method(s) ['dice']"),
        (["--data", "breast_cancer", "--tau", "1.5"], "tau must lie in (0, 1)"),
        (["bundled:digits-mlp", "--data", "breast_cancer"], "does not accept inputs of dimension 30"),
        (["--data", "mnist"], "unknown data 'mnist'"),
    ],
)
def test_cli_user_errors_are_one_red_line(args, needle):
    res = runner.invoke(app, ["counterfactual", *args, *FAST])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr


def test_cli_csv_needs_a_model_and_known_columns(tmp_path):
    f = tmp_path / "toy.csv"
    f.write_text("a,b,label\n0,1,1\n1,0,0\n")
    res = runner.invoke(app, ["counterfactual", "--data", str(f), *FAST])
    assert res.exit_code == 2 and "needs --data german or breast_cancer" in res.stderr
