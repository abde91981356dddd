"""``lipbound exact``: exact constants of a tiny ReLU net from a file against region enumeration; the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.reference.exact import exact_by_enumeration
from torch import nn
from typer.testing import CliRunner

import lipbound
from lipbound.cli import app
from lipbound.errors import SolverError

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
EPS = 0.4


def _net() -> nn.Module:
    torch.manual_seed(1)  # both inputs have unstable ReLUs and non-zero constants
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()


def _save(tmp_path: Path, net: nn.Module, name: str = "net.pt") -> tuple[str, str, np.ndarray]:
    """The net as a TorchScript file and two inputs as a .npy file."""
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.jit.trace(net, x[:1]).save(str(tmp_path / name))
    np.save(tmp_path / "x.npy", x.numpy())
    return str(tmp_path / name), str(tmp_path / "x.npy"), x.numpy()


def _reference(net: nn.Module, x0: np.ndarray, c: np.ndarray, norm) -> float:
    ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    bs = [m.bias.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    return exact_by_enumeration(ws, bs, x0 - EPS, x0 + EPS, c=c, norm=norm)


def _one_line_error(res, needle: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in res.output


@pytest.mark.parametrize("norm", ["inf", "1"])
def test_exact_values_equal_region_enumeration(tmp_path: Path, norm: str) -> None:
    net = _net()
    model, xfile, x = _save(tmp_path, net)
    args = ["exact", model, "--input", xfile, "--eps", str(EPS), "--norm", norm, "--json", "-"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["complete"] and payload["inputs"] == 2 and payload["norm"] == norm
    assert "exact local Lipschitz constants" in res.stderr  # the table went to stderr
    for r in payload["results"]:
        assert r["status"] == "optimal"
        refs = [_reference(net, x[r["input"]], np.eye(2)[k], "inf" if norm == "inf" else 1) for k in range(2)]
        for row, ref in zip(r["rows"], refs, strict=True):
            assert row["value"] == pytest.approx(ref, rel=1e-5, abs=1e-9)
            assert (
                row["lower"] - 1e-9 <= ref <= row["upper"] + 1e-9
                and row["lower"] <= row["value"] + 1e-9 <= row["upper"] + 2e-9
            )
        assert r["value"] == pytest.approx(max(refs), rel=1e-5) and r["value"] > 0.05
        # the lower bound is attained at the returned point, which lies in the box
        point = torch.tensor(r["lower_point"], dtype=torch.float64)
        assert (point >= torch.as_tensor(x[r["input"]]) - EPS - 1e-12).all()
        assert (point <= torch.as_tensor(x[r["input"]]) + EPS + 1e-12).all()


def test_exact_margin_direction_table_and_json_file(tmp_path: Path) -> None:
    net = _net()
    model, xfile, x = _save(tmp_path, net)
    out = tmp_path / "exact.json"
    res = runner.invoke(
        app, ["exact", model, "--x0", xfile, "--eps", str(EPS), "--c", "margin:0,1", "--limit", "1", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    flat = "".join(res.stdout.split())  # rich wraps long paths at the terminal width
    assert "value" in flat and "optimal" in flat and f"wrote{out}" in flat
    saved = json.loads(out.read_text())
    (r,) = saved["results"]
    assert saved["complete"] and len(r["rows"]) == 1
    ref = _reference(net, x[0], np.array([1.0, -1.0]), "inf")
    # the MILP value is the solver's dual bound: exact up to its tolerances (3e-6 relative here), inside [lower, upper]
    assert r["value"] == pytest.approx(ref, rel=1e-5) and r["lower"] - 1e-9 <= ref <= r["upper"] + 1e-9
    detailed = runner.invoke(app, ["exact", model, "--x0", xfile, "--eps", str(EPS), "--limit", "1", "--per-row"])
    assert detailed.exit_code == 0 and "row" in detailed.stdout


def test_exact_bad_input_exits_2_with_the_reason(tmp_path: Path) -> None:
    model, xfile, _ = _save(tmp_path, _net())
    base = ["exact", model, "--x0", xfile]
    _one_line_error(runner.invoke(app, [*base, "--norm", "2"]), "--norm 2 is not supported")
    _one_line_error(runner.invoke(app, [*base, "--eps", "-1"]), "--eps must be a finite number >= 0")
    _one_line_error(runner.invoke(app, [*base, "--eps", "nan"]), "--eps must be a finite number >= 0")
    _one_line_error(runner.invoke(app, [*base, "--time-limit", "0"]), "--time-limit must be a positive number")
    tanh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    tanh_model, _, _ = _save(tmp_path, tanh, "tanh.pt")
    _one_line_error(runner.invoke(app, ["exact", tanh_model, "--x0", xfile]), "tanh")
    _one_line_error(runner.invoke(app, ["exact", str(tmp_path / "missing.pt"), "--x0", xfile]), "missing.pt")


def test_exact_internal_fault_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, xfile, _ = _save(tmp_path, _net())
    for exc in (RuntimeError("boom in the solver wrapper"), SolverError("the MILP is reported infeasible")):

        def broken(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(lipbound, "exact_lipschitz", broken)
        res = runner.invoke(app, ["exact", model, "--x0", xfile])
        _one_line_error(res, "internal error:", code=1)
        assert str(exc) in res.stderr


def test_exact_listed_in_help() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "exact" in res.stdout
    res = runner.invoke(app, ["exact", "--help"])
    assert res.exit_code == 0 and "--time-limit" in res.stdout and "--input" in res.stdout
