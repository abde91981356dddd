"""Product / LipLT / ECLipsE-Fast global bounds: soundness against sampled gradient norms, exact references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lipbound.errors import UnsupportedOperatorError
from lipbound.global_bounds.baselines import eclipse_fast_bound, liplt_bound, product_bound
from lipbound.global_bounds.network import Activation, LayeredNetwork, extract
from lipbound.nn import MaxMin
from lipbound.nn.householder import Householder

ACTS = {
    "relu": lambda n: Activation("relu", (0.0, 1.0)),
    "leaky_relu": lambda n: Activation("leaky_relu", (0.1, 1.0)),
    "tanh": lambda n: Activation("tanh", (0.0, 1.0)),
    "sigmoid": lambda n: Activation("sigmoid", (0.0, 0.25)),
    "maxmin": lambda n: Activation("maxmin", None, 2, "consecutive", MaxMin(), (n,)),
    "householder": lambda n: Activation("householder", None, module=_householder(n), shape=(n,)),
}


def _householder(n: int) -> Householder:
    h = Householder(n)
    with torch.no_grad():
        h.theta.uniform_(-math.pi, math.pi, generator=torch.Generator().manual_seed(n))
    return h.double()


def random_net(widths: list[int], kind: str, seed: int, residual: bool = False) -> LayeredNetwork:
    gen = torch.Generator().manual_seed(seed)
    weights, acts, res = [], [], []
    for k, (a, b) in enumerate(itertools.pairwise(widths)):
        b = a if residual and 0 < k < len(widths) - 2 else b
        weights.append(torch.randn(b, a, generator=gen, dtype=torch.float64) / math.sqrt(a))
        if k < len(widths) - 2:
            acts.append(ACTS[kind](b))
            res.append(residual and a == b and k > 0)
    biases = [torch.randn(w.shape[0], generator=gen, dtype=torch.float64) for w in weights]
    return LayeredNetwork(weights, acts, res, [None] * len(weights), (widths[0],), biases)


def sampled_lipschitz(net: LayeredNetwork, norm: str, n: int = 64, seed: int = 0, scale: float = 3.0) -> float:
    """Largest Jacobian operator norm at random points (a lower bound of the Lipschitz constant)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.weights[0].shape[1], generator=gen, dtype=torch.float64) * scale
    best = 0.0
    for i in range(n):
        jac = torch.autograd.functional.jacobian(lambda z: net.forward(z[None])[0], x[i])
        val = torch.linalg.matrix_norm(jac, 2) if norm == "2" else jac.abs().sum(dim=1).max()
        best = max(best, float(val))
    return best


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_slope_restricted_bounds_are_sound(kind, norm):
    net = random_net([6, 16, 16, 12, 3], kind, seed=len(kind))
    low = sampled_lipschitz(net, norm)
    prod = product_bound(net, norm).upper
    lt = liplt_bound(net, norm).upper
    assert low <= lt <= prod * (1 + 1e-9)
    if norm == "2":
        ec = eclipse_fast_bound(net).upper
        assert low <= ec


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_liplt_below_product_on_relu_nets(seed, norm):
    net = random_net([8, 32, 32, 32, 4], "relu", seed)
    lt, prod = liplt_bound(net, norm), product_bound(net, norm)
    assert lt.upper <= prod.upper * (1 + 1e-9)
    if norm == "2":
        assert lt.upper < prod.upper  # strictly tighter on random ReLU nets
        assert eclipse_fast_bound(net).upper < prod.upper


@pytest.mark.parametrize("kind", ["maxmin", "householder"])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_product_sound_for_gnp_activations(kind, norm):
    net = random_net([6, 10, 10, 4], kind, seed=7)
    low = sampled_lipschitz(net, norm)
    res = product_bound(net, norm)
    assert low <= res.upper
    if kind == "householder" and norm == "inf":
        assert max(res.details["activation_lipschitz"]) > 1.0  # reflections expand l_inf
    with pytest.raises(UnsupportedOperatorError, match="slope-restricted"):
        liplt_bound(net, norm)
    with pytest.raises(UnsupportedOperatorError):
        eclipse_fast_bound(net)


def test_residual_product_bound():
    net = random_net([6, 12, 12, 12, 3], "relu", seed=3, residual=True)
    assert any(net.residual)
    low = sampled_lipschitz(net, "2")
    res = product_bound(net, 2)
    norms = [float(torch.linalg.matrix_norm(w, 2)) for w in net.weights]
    expected = norms[-1]
    for k, n in enumerate(norms[:-1]):
        expected *= 1 + n if net.residual[k] else n
    assert low <= res.upper
    assert res.upper == pytest.approx(expected, rel=1e-8)
    with pytest.raises(UnsupportedOperatorError, match="residual"):
        liplt_bound(net, 2)


def test_liplt_matches_hand_recursion_one_hidden_layer():
    net = random_net([5, 9, 4], "relu", seed=11)
    w0, w1 = net.weights

    def s(m):
        return float(torch.linalg.matrix_norm(m, 2))

    # m_1 = 1/2 ||W1|| ||W0|| + 1/2 ||W1 W0||
    ref = 0.5 * s(w1) * s(w0) + 0.5 * s(w1 @ w0)
    assert liplt_bound(net, 2).upper == pytest.approx(ref, rel=1e-8)
    assert liplt_bound(net, 2).upper >= ref
    ref_inf = 0.5 * float(w1.abs().sum(1).max() * w0.abs().sum(1).max()) + 0.5 * float((w1 @ w0).abs().sum(1).max())
    assert liplt_bound(net, "inf").upper == pytest.approx(ref_inf, rel=1e-10)


def test_eclipse_matches_independent_two_layer_reference():
    net = random_net([5, 9, 4], "relu", seed=12)
    w0, w1 = (w.numpy() for w in net.weights)
    import numpy as np

    k = 0.25 * w0 @ w0.T
    l = 1.0 / (2 * np.linalg.eigvalsh(k).max())
    x = l * np.eye(9) - l * l * k
    ref = math.sqrt(np.linalg.eigvalsh(w1 @ np.linalg.inv(x) @ w1.T).max())
    got = eclipse_fast_bound(net).upper
    assert ref <= got <= ref * (1 + 1e-5)


def test_cnn_product_and_liplt_use_conv_norms():
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()
    net = extract(cnn, (2, 8, 8))
    assert net.convs[0] is not None and net.convs[1] is not None
    low = sampled_lipschitz(net, "2", n=32)
    prod = product_bound(net, 2)
    lt = liplt_bound(net, 2)
    exact_layers = [float(torch.linalg.matrix_norm(w, 2)) for w in net.weights]
    assert all(b >= e for b, e in zip(prod.details["layer_norms"], exact_layers, strict=True))
    assert prod.upper <= math.prod(exact_layers) * (1 + 1e-7)
    assert low <= lt.upper <= prod.upper * (1 + 1e-9)


def test_extracted_householder_net_product_bound():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), _householder(8), nn.Linear(8, 8), MaxMin("halves"), nn.Linear(8, 2))
    net = extract(model.double(), (5,))
    assert [a.kind for a in net.activations] == ["householder", "maxmin"]
    for norm in ("2", "inf"):
        low = sampled_lipschitz(net, norm)
        assert low <= product_bound(net, norm).upper
