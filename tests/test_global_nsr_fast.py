"""Solver-free LipSDP-NSR chain method: float64 certificates, soundness, agreement with SCS, known constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipbound.global_bounds import extract
from lipbound.global_bounds.api import global_lipschitz
from lipbound.global_bounds.nsr import multiplier_structure, nsr_bound, t_matrix
from lipbound.global_bounds.nsr_fast import _Objective, theta_from_multipliers
from lipbound.nn import GroupSort, MaxMin
from lipbound.nn.householder import Householder

F64 = torch.float64  # dtypes are explicit: a global default would leak into other tests of the same worker


def sampled_lower(model: nn.Module, n_in: int, n: int = 600, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, n_in, generator=g, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), x).permute(1, 0, 2)
    return torch.linalg.matrix_norm(J, 2).max().item()


def net_of(dims: list[int], acts: list, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(dims[i + 1], dims[i], generator=g, dtype=F64) / dims[i] ** 0.5)
            lin.bias.copy_(torch.randn(dims[i + 1], generator=g, dtype=F64))
        layers.append(lin)
        if i < len(acts):
            layers.append(acts[i])
    return nn.Sequential(*layers).eval()


def product_l2(net) -> float:
    return float(np.prod([np.linalg.norm(w.numpy(), 2) for w in net.weights]))


def chain_min_eigs(Ws, Xs, rho: float) -> list[float]:
    """Smallest eigenvalue of every chain LMI, formed independently in float64."""
    mats = [rho * np.eye(Ws[0].shape[1]) - Ws[0].T @ Xs[0] @ Ws[0]]
    mats += [Xs[k] - Ws[k + 1].T @ Xs[k + 1] @ Ws[k + 1] for k in range(len(Xs) - 1)]
    mats.append(Xs[-1] - Ws[-1].T @ Ws[-1])
    return [float(np.linalg.eigvalsh(0.5 * (M + M.T))[0]) for M in mats]


@pytest.mark.parametrize("seed,grouping", [(0, "consecutive"), (1, "halves")])
def test_certified_chain_is_psd_in_float64(seed, grouping):
    model = net_of([7, 12, 10, 8, 3], [MaxMin(grouping), GroupSort(5), MaxMin()], seed)
    net = extract(model)
    out = nsr_bound(net, "2", solver="first-order")
    assert out["solver"] == "first-order" and out["certified"]
    Ws, Xs, rho = out["_weights"], out["_multipliers"], out["certified_rho"]
    assert min(chain_min_eigs(Ws, Xs, rho)) >= 0
    assert min(chain_min_eigs(Ws, Xs, rho * 0.999)) < 0  # the first link is tight
    for k, X in enumerate(Xs):  # every X_k has the multiplier structure blkdiag_J(lambda_J I + gamma_J 1 1^T)
        gid, _, _ = multiplier_structure(net.activations[k], X.shape[0])
        same = gid[:, None] == gid[None, :]
        assert np.all(X[~same] == 0)
        for j in range(int(gid.max()) + 1):
            blk = X[np.ix_(gid == j, gid == j)]
            off = blk[~np.eye(len(blk), dtype=bool)]
            assert np.ptp(np.diag(blk)) <= 1e-12 * np.abs(X).max()
            assert off.size == 0 or np.ptp(off) <= 1e-12 * np.abs(X).max()
        assert np.linalg.eigvalsh(X)[0] > 0
    assert out["upper"] >= np.sqrt(rho) * out["scale"]


@pytest.mark.parametrize(
    "acts",
    [
        lambda: [MaxMin(), MaxMin("halves"), MaxMin()],
        lambda: [GroupSort(4), GroupSort(3), GroupSort(12)],
        lambda: [Householder(12), Householder(12, "halves"), Householder(12)],
    ],
    ids=["maxmin", "groupsort", "householder"],
)
def test_sound_on_random_nets(acts):
    model = net_of([6, 12, 12, 12, 4], acts(), 3)
    net = extract(model)
    up = nsr_bound(net, "2", solver="first-order")["upper"]
    assert sampled_lower(model, 6) <= up <= product_l2(net) * (1 + 1e-9)


@pytest.mark.parametrize("width", [16, 32])
def test_close_to_scs(width):
    model = net_of([20, width, width, 5], [MaxMin(), MaxMin("halves")], width)
    net = extract(model)
    fo = nsr_bound(net, "2", solver="first-order")["upper"]
    scs = nsr_bound(net, "2", solver="scs")["upper"]
    assert abs(fo / scs - 1) < 2e-3  # the same SDP optimum
    auto = nsr_bound(net, "2")  # small net: SCS polished by the first-order method, never worse than SCS
    assert auto["solver"] == "scs+first-order"
    assert auto["upper"] <= scs * (1 + 1e-12)


def orth(n: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))[0]


@pytest.mark.parametrize("act", [MaxMin(), MaxMin("halves"), GroupSort(4)], ids=["maxmin", "halves", "gs4"])
def test_single_layer_between_orthogonal_weights_exact(act):
    model = nn.Sequential(nn.Linear(8, 8), act, nn.Linear(8, 8)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(3 * orth(8, 0))
        model[2].weight.copy_(0.5 * orth(8, 1))
    r = nsr_bound(extract(model), "2", solver="first-order")
    assert 1.5 <= r["upper"] <= 1.5 * (1 + 1e-9)


def test_multiplier_parametrisation_roundtrip():
    net = extract(net_of([5, 8, 6, 2], [GroupSort(4), MaxMin("halves")], 0))
    Ws = [w.double().numpy() for w in net.weights]
    structs = [multiplier_structure(a, Ws[k].shape[0]) for k, a in enumerate(net.activations)]
    rng = np.random.default_rng(0)
    Ts = []
    for gid, _, _ in structs:
        ng = int(gid.max()) + 1
        lam = rng.uniform(0.5, 2, ng)
        Ts.append(t_matrix(gid, lam, rng.uniform(-0.1, 0.3, ng)))
    obj = _Objective(Ws, structs)
    back = obj.multipliers(torch.from_numpy(theta_from_multipliers(structs, Ts)))
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(Ts, back, strict=True))


def test_api_uses_first_order_on_larger_maxmin_and_scs_on_residual():
    model = net_of([30, 96, 96, 4], [MaxMin(), MaxMin()], 5)
    r = global_lipschitz(model, method="lipsdp-nsr")
    assert r.details["solver"] == "first-order" and r.details["certified"]
    assert sampled_lower(model, 30, n=200) <= r.upper <= global_lipschitz(model, method="product").upper
    auto = global_lipschitz(model)
    assert auto.method == "lipsdp-nsr" and auto.upper == pytest.approx(r.upper, rel=1e-3)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.act = MaxMin()

        def forward(self, x):
            x = self.a(x)
            return self.c(x + self.act(self.b(x)))

    out = global_lipschitz(Res().double().eval(), method="lipsdp-nsr", solver="first-order", input_shape=(3,))
    assert out.details["solver"] == "scs" and "plain l2 only" in out.details["status"]
