"""Global bounds on degenerate nets and failing solvers; the ``lipbound global`` exit-code / JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import lipbound
from lipbound.cli import app
from lipbound.global_bounds import api
from lipbound.global_bounds.lipsdp import prune_constant_neurons

runner = CliRunner()


def _padding_conv_net() -> nn.Module:
    """The issue's net: stride/dilation/padding make most conv outputs see only padding (constant neurons)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 1, kernel_size=1, stride=2, padding=1, dilation=2),
        nn.BatchNorm2d(1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(25, 1),
    )
    with torch.no_grad():
        net[1].running_mean.fill_(0.3)
        net[1].running_var.fill_(0.5)
    return net.eval()


def _sampled_grad_norm(model: nn.Module, shape: tuple[int, ...], n: int = 256) -> float:
    x = torch.randn(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    (g,) = torch.autograd.grad(model.double()(x).sum(), x)
    return g.reshape(n, -1).norm(dim=1).max().item()


@pytest.mark.parametrize("method", ["lipsdp-neuron", "lipsdp-layer", "auto"])
def test_constant_neurons_give_a_finite_sound_bound(method: str) -> None:
    model = _padding_conv_net()
    res = lipbound.global_lipschitz(model, input_shape=(3, 8, 8), method=method)
    assert np.isfinite(res.upper)
    sampled = _sampled_grad_norm(model, (3, 8, 8))
    assert res.upper >= sampled * (1 - 1e-9)
    product = lipbound.global_lipschitz(model, input_shape=(3, 8, 8), method="product").upper
    assert res.upper <= product * (1 + 1e-6)


def test_pruning_keeps_the_lipschitz_value() -> None:
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 3)), rng.normal(size=(2, 4))
    # one neuron with a zero incoming row, one with a zero outgoing column
    w1z = np.vstack([w1, np.zeros((1, 3)), rng.normal(size=(1, 3))])
    w2z = np.hstack([w2, rng.normal(size=(2, 1)), np.zeros((2, 1))])
    pruned = prune_constant_neurons([w1z, w2z])
    np.testing.assert_array_equal(pruned[0], w1)
    np.testing.assert_array_equal(pruned[1], w2)

    def net(a: np.ndarray, b: np.ndarray) -> nn.Module:
        m = nn.Sequential(nn.Linear(3, a.shape[0]), nn.ReLU(), nn.Linear(a.shape[0], 2)).double()
        with torch.no_grad():
            m[0].weight.copy_(torch.from_numpy(a))
            m[2].weight.copy_(torch.from_numpy(b))
        return m

    small = lipbound.global_lipschitz(net(w1, w2), method="lipsdp-neuron").upper
    padded = lipbound.global_lipschitz(net(w1z, w2z), method="lipsdp-neuron").upper
    assert padded == pytest.approx(small, rel=1e-4)


def test_constant_network_has_constant_zero() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        m[0].weight.zero_()
    res = lipbound.global_lipschitz(m, method="lipsdp-neuron")
    assert res.upper == 0.0


def test_solver_fault_falls_back_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = api._run

    def broken(method, *args, **kwargs):
        if method == "lipsdp-neuron":
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(api, "_run", broken)
    m = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    res = lipbound.global_lipschitz(m, method="lipsdp-neuron")
    assert res.method == "lipsdp-layer"
    assert "lipsdp-neuron failed" in res.details["fallbacks"][0]
    assert "Eigenvalues" in res.details["fallbacks"][0]
    auto = lipbound.global_lipschitz(m, method="auto")
    assert np.isfinite(auto.upper)


def test_global_cli_rejects_unknown_method_and_norm() -> None:
    for args, needle in ((["--method", "foo"], "--method 'foo' is not a method"), (["--norm", "7"], "--norm")):
        res = runner.invoke(app, ["global", "bundled:simple-mlp-16", *args])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr


def test_global_cli_json_on_stdout() -> None:
    res = runner.invoke(app, ["global", "bundled:simple-mlp-16", "--method", "product", "--json", "-"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    (row,) = payload["results"]
    assert row["method"] == "product"
    direct = lipbound.global_lipschitz(lipbound.models.load_bundled("simple-mlp-16"), method="product").upper
    assert row["upper"] == pytest.approx(direct, rel=1e-12)


def test_global_cli_keeps_partial_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed in its second method leaves the first method's row in the JSON file."""
    calls = []
    real = api.global_lipschitz

    def dies_second(*args, **kwargs):
        calls.append(kwargs.get("method"))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "global_lipschitz", dies_second)
    out = tmp_path / "g.json"
    res = runner.invoke(app, ["global", "bundled:simple-mlp-16", "--method", "all", "--json", str(out)])
    assert res.exit_code != 0
    rows = json.loads(out.read_text())["results"]
    assert [r["method"] for r in rows] == [calls[0]]
    assert rows[0]["upper"] > 0
