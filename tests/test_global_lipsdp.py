"""LipSDP / LipSDP-NSR: soundness against sampled gradients, ordering, float64 LMI certificates, known constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipbound.global_bounds import extract
from lipbound.global_bounds.lipsdp import lipsdp_bound, lmi_matrix, prepare
from lipbound.global_bounds.network import Activation
from lipbound.global_bounds.nsr import nsr_bound
from lipbound.nn import GroupSort, MaxMin

torch.set_default_dtype(torch.float64)


def sampled_lower(model: nn.Module, n_in: int, norm: str, n: int = 400, seed: int = 0) -> float:
    """Largest Jacobian operator norm at random points (a lower bound of the Lipschitz constant)."""
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, n_in, generator=g)
    J = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x).permute(1, 0, 2)
    if norm == "2":
        return torch.linalg.matrix_norm(J, 2).max().item()
    return J.abs().sum(-1).max().item()


def mlp(dims: list[int], act, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def product_l2(net) -> float:
    return float(np.prod([np.linalg.norm(w.numpy(), 2) for w in net.weights]))


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(3, 10), min_size=2, max_size=3))
def test_relu_order_and_soundness(seed, hidden):
    model = mlp([5, *hidden, 3], nn.ReLU, seed)
    net = extract(model)
    neuron = lipsdp_bound(net, "neuron")["upper"]
    layer = lipsdp_bound(net, "layer")["upper"]
    low = sampled_lower(model, 5, "2")
    assert low <= neuron * (1 + 1e-9)
    assert neuron <= layer * (1 + 1e-6)
    assert layer <= product_l2(net) * (1 + 1e-6)


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid, lambda: nn.LeakyReLU(0.1)])
def test_slope_restricted_sound(act):
    model = mlp([4, 8, 8, 2], act, 3)
    net = extract(model)
    up = lipsdp_bound(net, "neuron")["upper"]
    assert sampled_lower(model, 4, "2") <= up <= product_l2(net) * (1 + 1e-6)


def test_certified_lmi_is_psd_in_float64():
    model = mlp([6, 10, 7, 2], nn.ReLU, 1)
    net = extract(model)
    out = lipsdp_bound(net, "neuron")
    # rebuild M(rho_cert) independently from the returned certificate (weights after reduction, multipliers)
    Ws, lam_vals = out["_weights"], out["_multipliers"]
    assert all((l >= 0).all() for l in lam_vals)
    assert prepare(net, [True, True]).scale == out["scale"]
    W0, W1, W2 = Ws
    T1, T2 = np.diag(lam_vals[0]), np.diag(lam_vals[1])
    z01, z = np.zeros((W0.shape[1], W1.shape[0])), np.eye(W0.shape[1])
    M = np.block(  # the block-tridiagonal ReLU LMI written out by hand
        [
            [out["certified_rho"] * z, -W0.T @ T1, z01],
            [-T1 @ W0, 2 * T1, -W1.T @ T2],
            [z01.T, -T2 @ W1, 2 * T2 - W2.T @ W2],
        ]
    )
    assert np.linalg.eigvalsh(M)[0] >= 0
    assert np.allclose(M, lmi_matrix(Ws, lam_vals, [(0.0, 1.0)] * 2, out["certified_rho"]))
    # the certified value is close to (and never below) what the solver reports minus its tolerance
    assert out["upper"] >= np.sqrt(out["certified_rho"]) * out["scale"]
    assert out["upper"] == pytest.approx(out["raw_solver_value"], rel=1e-2)
    # a slightly smaller rho must not be certified (the certificate is tight)
    M_small = lmi_matrix(Ws, lam_vals, [(0.0, 1.0)] * 2, out["certified_rho"] * 0.99)
    assert np.linalg.eigvalsh(M_small)[0] < 0


def orth(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g))[0]


@pytest.mark.parametrize(
    "act", [MaxMin(), MaxMin("halves"), GroupSort(3), GroupSort(6)], ids=["maxmin", "halves", "gs3", "gs6"]
)
def test_single_sorting_layer_known_constant(act):
    model = nn.Sequential(nn.Linear(6, 6), act, nn.Linear(6, 6)).eval()
    with torch.no_grad():
        model[0].weight.copy_(3 * orth(6, 0))
        model[2].weight.copy_(0.5 * orth(6, 1))
    r = nsr_bound(extract(model), "2")
    assert 1.5 <= r["upper"] <= 1.5 * (1 + 1e-5)


def test_single_householder_layer_known_constant():
    from lipbound.nn.householder import Householder

    model = nn.Sequential(nn.Linear(4, 4), Householder(4), nn.Linear(4, 4)).eval()
    with torch.no_grad():
        model[0].weight.copy_(2 * orth(4, 2))
        model[2].weight.copy_(orth(4, 3))
    r = nsr_bound(extract(model), "2")
    assert 2.0 <= r["upper"] <= 2.0 * (1 + 1e-5)


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4), st.sampled_from(["2", "inf"]))
def test_nsr_sound_maxmin(seed, depth, norm):
    dims = [6] + [8] * depth + [2]
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(MaxMin("halves" if i % 2 else "consecutive"))
    model = nn.Sequential(*layers).eval()
    net = extract(model)
    up = nsr_bound(net, norm)["upper"]
    assert sampled_lower(model, 6, norm) <= up
    if norm == "2":
        assert up <= product_l2(net) * (1 + 1e-6)
    else:
        assert up <= float(np.prod([w.abs().sum(1).max().item() for w in net.weights])) * (1 + 1e-6)


class ResNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.b1, self.b2, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.act = GroupSort(3)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.act(self.b1(x))
        x = self.act(self.b2(x)) + x
        return self.out(x)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_nsr_residual_sound(norm):
    model = ResNet(0).eval()
    net = extract(model)
    assert net.residual == [False, True, True]
    up = nsr_bound(net, norm)["upper"]
    assert sampled_lower(model, 4, norm, n=2000) <= up
    raw = nsr_bound(net, norm)["raw_solver_value"]
    assert up <= 1.1 * raw  # certification loses little


def test_nsr_on_relu_is_sound_and_not_better_than_neuron():
    model = mlp([5, 8, 8, 2], nn.ReLU, 7)
    net = extract(model)
    up = nsr_bound(net, "2")["upper"]
    assert sampled_lower(model, 5, "2") <= up
    assert lipsdp_bound(net, "neuron")["upper"] <= up * (1 + 1e-4)


def test_lipsdp_rejects_sorting_activation():
    from lipbound.errors import UnsupportedOperatorError

    net = extract(nn.Sequential(nn.Linear(4, 4), MaxMin(), nn.Linear(4, 1)))
    with pytest.raises(UnsupportedOperatorError, match="slope-restricted"):
        lipsdp_bound(net, "neuron")
    assert Activation("maxmin", None).slope_restricted is False
