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

F64 = torch.float64  # dtypes are explicit: a global default would leak into other tests of the same worker


def sampled_lower(model: nn.Module, n_in: int, norm: str, n: int = 400, seed: int = 0) -> float:
    """Largest Jacobian operator norm at random points (a lower bound of the Lipschitz constant)."""
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, n_in, generator=g, dtype=F64)
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
    return nn.Sequential(*layers).double().eval()


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
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]


@pytest.mark.parametrize(
    "act", [MaxMin(), MaxMin("halves"), GroupSort(3), GroupSort(6)], ids=["maxmin", "halves", "gs3", "gs6"]
)
def test_single_sorting_layer_known_constant(act):
    model = nn.Sequential(nn.Linear(6, 6), act, nn.Linear(6, 6)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(3 * orth(6, 0))
        model[2].weight.copy_(0.5 * orth(6, 1))
    r = nsr_bound(extract(model), "2")
    assert 1.5 <= r["upper"] <= 1.5 * (1 + 1e-5)


def test_single_householder_layer_known_constant():
    from lipbound.nn.householder import Householder

    model = nn.Sequential(nn.Linear(4, 4), Householder(4), nn.Linear(4, 4)).double().eval()
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
    model = nn.Sequential(*layers).double().eval()
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
    model = ResNet(0).double().eval()
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

    net = extract(nn.Sequential(nn.Linear(4, 4), MaxMin(), nn.Linear(4, 1)).double())
    with pytest.raises(UnsupportedOperatorError, match="slope-restricted"):
        lipsdp_bound(net, "neuron")
    assert Activation("maxmin", None).slope_restricted is False


# ---------------------------------------------------------------- first-order (solver-free) LipSDP path


def dense_lmi(Ws: list[np.ndarray], lams: list[np.ndarray], rho: float) -> np.ndarray:
    """The ReLU LipSDP-Neuron matrix written out block by block (independent of ``lmi_matrix``)."""
    dims = [Ws[0].shape[1]] + [w.shape[0] for w in Ws[:-1]]
    blocks = [[np.zeros((dims[i], dims[j])) for j in range(len(dims))] for i in range(len(dims))]
    blocks[0][0] = rho * np.eye(dims[0])
    for k, lam in enumerate(lams):
        T = np.diag(lam)
        blocks[k][k + 1] = -Ws[k].T @ T
        blocks[k + 1][k] = -T @ Ws[k]
        blocks[k + 1][k + 1] = 2 * T
    blocks[-1][-1] = blocks[-1][-1] - Ws[-1].T @ Ws[-1]
    return np.block(blocks)


@pytest.mark.parametrize("seed,hidden", [(0, [12, 10]), (1, [16, 8, 12]), (2, [10] * 6)])
def test_first_order_sound_and_certified(seed, hidden):
    model = mlp([7, *hidden, 3], nn.ReLU, seed)
    net = extract(model)
    out = lipsdp_bound(net, "neuron", solver="first-order")
    assert out["solver"] == "first-order" and out["certified"]
    Ws, lams = out["_weights"], out["_multipliers"]
    assert all((l >= 0).all() for l in lams)
    M = dense_lmi(Ws, lams, out["certified_rho"])
    assert np.linalg.eigvalsh(M)[0] >= 0  # independent dense eigenvalue check in float64
    assert np.linalg.eigvalsh(dense_lmi(Ws, lams, out["certified_rho"] * 0.999))[0] < 0  # and it is tight
    assert out["upper"] >= np.sqrt(out["certified_rho"]) * out["scale"]
    assert sampled_lower(model, 7, "2") <= out["upper"] <= product_l2(net) * (1 + 1e-9)
    layer = lipsdp_bound(net, "layer", solver="first-order")["upper"]
    assert out["upper"] <= layer * (1 + 1e-6)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, lambda: nn.LeakyReLU(0.2)])
def test_first_order_close_to_scs(act):
    model = mlp([6, 16, 12, 2], act, 4)
    net = extract(model)
    fo = lipsdp_bound(net, "neuron", solver="first-order")["upper"]
    scs = lipsdp_bound(net, "neuron", solver="scs")["upper"]
    assert sampled_lower(model, 6, "2") <= fo
    assert fo <= scs * 1.01
    assert fo >= scs * 0.99  # both approximate the same SDP optimum
    # the default polishes the SCS multipliers with the first-order method: never worse than SCS alone
    auto = lipsdp_bound(net, "neuron")
    assert auto["solver"] == "scs+first-order"
    assert auto["upper"] <= scs * (1 + 1e-12)


def test_chain_rho_matches_dense_schur():
    from lipbound.global_bounds.lipsdp import certify_rho
    from lipbound.global_bounds.lipsdp_fast import feasible_start, rho_of

    net = extract(mlp([5, 9, 7, 8, 2], nn.Tanh, 5))
    Ws = prepare(net, [False] * 3).weights
    slopes = [(0.0, 1.0)] * 3
    lams = [l * (1 + 0.3 * np.sin(np.arange(l.size))) for l in feasible_start(Ws, slopes)]
    rho_c, _ = certify_rho(Ws, lams, slopes)
    assert rho_of(Ws, lams, slopes) == pytest.approx(rho_c, rel=1e-7)
    assert np.linalg.eigvalsh(lmi_matrix(Ws, lams, slopes, rho_c))[0] >= 0


def test_deep_relu_net_gets_lipsdp_bound():
    """Depth 12: SCS returns uncertifiable multipliers here (rho ~ 1e-4 is below its tolerance); the chain does not."""
    dims = [20] + [16] * 12 + [3]
    g = torch.Generator().manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1]).double()
        with torch.no_grad():
            w = torch.randn(dims[i + 1], dims[i], generator=g, dtype=F64)
            lin.weight.copy_(w / torch.linalg.matrix_norm(w, 2))
        layers += [lin, nn.ReLU()] if i < len(dims) - 2 else [lin]
    model = nn.Sequential(*layers).eval()
    net = extract(model)
    out = lipsdp_bound(net, "neuron")
    assert out["solver"] == "first-order" and out["certified"]
    assert sampled_lower(model, 20, "2") <= out["upper"] < 0.5 * product_l2(net)
