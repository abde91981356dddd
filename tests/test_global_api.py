"""global_lipschitz API, model extraction to layered form, fallbacks and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lipbound.errors import InvalidInputError, UnsupportedOperatorError
from lipbound.global_bounds import extract
from lipbound.global_bounds.api import METHODS, global_lipschitz
from lipbound.nn import GroupSort, MaxMin

F64 = torch.float64  # dtypes are explicit: a global default would leak into other tests of the same worker


def relu_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()


def sampled_lower(model, input_shape, norm: str, n: int = 300) -> float:
    x = 2 * torch.randn(n, *input_shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    J = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x).permute(1, 0, *range(2, 2 + len(input_shape)))
    J = J.reshape(n, J.shape[1], -1)
    return (torch.linalg.matrix_norm(J, 2) if norm == "2" else J.abs().sum(-1).max(-1).values).max().item()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_sound_on_relu(method):
    model = relu_mlp(2)
    r = global_lipschitz(model, norm=2, method=method)
    assert r.method == method and r.seconds > 0
    assert sampled_lower(model, (5,), "2") <= r.upper < math.inf
    json.dumps(r.to_dict())


def test_auto_picks_tightest_and_says_so():
    model = relu_mlp(3)
    r = global_lipschitz(model, method="auto")
    assert r.details["chosen"] == r.method
    cands = {k: v for k, v in r.details["candidates"].items() if v is not None}
    assert r.upper == min(cands.values())
    assert r.upper <= global_lipschitz(model, method="product").upper


@pytest.mark.parametrize("norm", [2, "inf"])
def test_auto_maxmin(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), MaxMin(), nn.Linear(8, 8), GroupSort(4), nn.Linear(8, 2)).double().eval()
    r = global_lipschitz(model, norm=norm)
    assert r.method in ("lipsdp-nsr", "product")
    assert sampled_lower(model, (4,), str(norm)) <= r.upper
    assert r.upper <= global_lipschitz(model, norm=norm, method="product").upper * (1 + 1e-9)


def test_conv_model_extraction_and_bound():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 1, 3),
        )
        .double()
        .eval()
    )
    model[1].running_var.uniform_(0.5, 2.0)
    net = extract(model, (2, 4, 4))
    x = torch.randn(3, 2, 4, 4, dtype=F64)
    assert torch.allclose(net.forward(x), model(x), atol=1e-10)
    r = global_lipschitz(model, method="lipsdp-neuron", input_shape=(2, 4, 4))
    assert (
        sampled_lower(model, (2, 4, 4), "2")
        <= r.upper
        <= global_lipschitz(model, method="product", input_shape=(2, 4, 4)).upper * (1 + 1e-6)
    )


def test_conv_requires_input_shape():
    with pytest.raises(InvalidInputError, match="input_shape"):
        extract(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_extract_residual_and_grouping_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1)
            self.act = MaxMin("halves")

        def forward(self, x):
            h = self.a(x)
            h = h + self.act(self.b(h))
            return self.c(h.view(h.size(0), -1))

    net = extract(Net().double().eval())
    assert [a.kind for a in net.activations] == ["identity", "maxmin"]
    assert net.residual == [False, True]
    from lipbound.global_bounds.network import group_index

    assert group_index(net.activations[1]).tolist() == [0, 1, 0, 1]


def test_graph_input():
    from lipbound.graph.trace import trace

    model = relu_mlp(4)
    g = trace(model, (5,))
    a = global_lipschitz(g, method="lipsdp-neuron").upper
    b = global_lipschitz(model, method="lipsdp-neuron").upper
    assert a == pytest.approx(b, rel=1e-6)


def test_unsupported_models_and_arguments():
    class Abs(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 3)

        def forward(self, x):
            return self.l(x).abs()

    with pytest.raises(UnsupportedOperatorError, match="abs"):
        global_lipschitz(Abs().double())
    with pytest.raises(UnsupportedOperatorError, match="ELU"):
        global_lipschitz(nn.Sequential(nn.Linear(3, 3), nn.ELU(), nn.Linear(3, 1)).double())
    mm = nn.Sequential(nn.Linear(4, 4), MaxMin(), nn.Linear(4, 1)).double()
    with pytest.raises(UnsupportedOperatorError, match="slope-restricted"):
        global_lipschitz(mm, method="lipsdp-neuron")
    with pytest.raises(InvalidInputError, match="norm"):
        global_lipschitz(relu_mlp(), norm=1)
    with pytest.raises(InvalidInputError, match="LipSDP-Network"):
        global_lipschitz(relu_mlp(), method="lipsdp-network")
    with pytest.raises(InvalidInputError, match="unknown method"):
        global_lipschitz(relu_mlp(), method="magic")


def test_solver_failure_falls_back(monkeypatch):
    from lipbound.global_bounds import certify, lipsdp

    def broken(prob, solver=None, time_budget=None, eps=1e-6):
        return {"solver": "scs", "status": "error: simulated", "solve_seconds": 0.0}

    monkeypatch.setattr(lipsdp, "solve_problem", broken)
    monkeypatch.setattr(certify, "solve_problem", broken)
    r = global_lipschitz(relu_mlp(5), method="lipsdp-neuron", solver="scs")
    assert r.method == "product"
    assert len(r.details["fallbacks"]) == 2
    assert np.isfinite(r.upper)


def test_clarabel_solver_agrees():
    model = relu_mlp(6)
    a = global_lipschitz(model, method="lipsdp-neuron", solver="clarabel")
    b = global_lipschitz(model, method="lipsdp-neuron", solver="scs")
    assert a.details["solver"] == "clarabel"
    assert a.upper == pytest.approx(b.upper, rel=2e-3)
