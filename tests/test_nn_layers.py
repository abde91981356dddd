"""Householder activation (module + lowering) and certified spectral normalisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lipbound.ops.householder  # noqa: F401  (registers the converter until ops/catalog.py imports it)
from lipbound.errors import InvalidInputError, UnsupportedOperatorError
from lipbound.global_bounds.norms import power_iteration_norm
from lipbound.graph.trace import trace
from lipbound.nn import MaxMin
from lipbound.nn.householder import Householder
from lipbound.nn.spectral import certified_spectral_norm, certify_parametrized, spectral_parametrize


def random_householder(c: int, grouping: str, seed: int) -> Householder:
    h = Householder(c, grouping).double()
    with torch.no_grad():
        h.theta.uniform_(-math.pi, math.pi, generator=torch.Generator().manual_seed(seed))
    return h


def reference_householder(h: Householder, x: torch.Tensor) -> torch.Tensor:
    """Direct piecewise definition: z if v^T z > 0 else (I - 2 v v^T) z, pair by pair (loop, test only)."""
    out = x.clone()
    i_idx, j_idx = h.pairs()
    for k, (i, j) in enumerate(zip(i_idx.tolist(), j_idx.tolist(), strict=True)):
        v = torch.stack([torch.cos(h.theta[k]), torch.sin(h.theta[k])]).detach().to(x.dtype)
        z = torch.stack([x[:, i], x[:, j]], dim=-1)
        proj = z @ v
        refl = z - 2 * proj[..., None] * v
        y = torch.where((proj > 0)[..., None], z, refl)
        out[:, i], out[:, j] = y[..., 0], y[..., 1]
    return out


@settings(max_examples=10, deadline=None)
@given(grouping=st.sampled_from(["consecutive", "halves"]), seed=st.integers(0, 1000), spatial=st.booleans())
def test_householder_matches_definition_and_is_gnp(grouping, seed, spatial):
    h = random_householder(8, grouping, seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (16, 8, 3, 3) if spatial else (16, 8)
    x, y = torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randn(*shape, generator=gen).double()
    hx, hy = h(x), h(y)
    assert torch.allclose(hx, reference_householder(h, x), atol=1e-12)
    flat = (hx - hy).flatten(1).norm(dim=1)
    assert (flat <= (x - y).flatten(1).norm(dim=1) * (1 + 1e-12)).all()  # 1-Lipschitz
    assert torch.allclose(hx.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))  # norm preserving
    jac = torch.autograd.functional.jacobian(lambda z: h(z[None])[0], x[0].reshape(-1) if not spatial else x[0])
    jac = jac.reshape(x[0].numel(), x[0].numel())
    assert torch.allclose(jac.T @ jac, torch.eye(x[0].numel(), dtype=torch.float64), atol=1e-10)  # orthogonal


@pytest.mark.parametrize("grouping", ["consecutive", "halves"])
def test_householder_initialised_as_maxmin(grouping):
    x = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # theta = -pi/4 is stored as a float32 parameter: equal to MaxMin up to that rounding
    assert torch.allclose(Householder(6, grouping).double()(x), MaxMin(grouping)(x), atol=1e-6)


@pytest.mark.parametrize("grouping", ["consecutive", "halves"])
def test_householder_lowered_graph_matches_module(grouping):
    h = random_householder(6, grouping, seed=3)
    model = nn.Sequential(nn.Linear(4, 6), h, nn.Linear(6, 2)).double()
    graph = trace(model, (4,))
    ops = [n.op.name for n in graph.nodes]
    assert "relu" in ops and "feature_mix" in ops
    x = torch.randn(50, 4, dtype=torch.float64) * 3
    with torch.no_grad():
        assert torch.allclose(graph(x), model(x), atol=1e-12, rtol=0)
    h4 = random_householder(4, grouping, seed=4)
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3), h4).double()
    g2 = trace(cnn, (2, 6, 6))
    xc = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(g2(xc), cnn(xc), atol=1e-12, rtol=0)


def test_householder_errors():
    with pytest.raises(InvalidInputError):
        Householder(5)
    with pytest.raises(InvalidInputError):
        Householder(4, "pairs")
    with pytest.raises(Exception, match="features"):
        Householder(4)(torch.randn(2, 6))


# ------------------------------------------------------------------------------------------------ spectral norm


def dense_conv_norm(conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> float:
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        out = F.conv2d(eye, conv.weight.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return float(torch.linalg.matrix_norm(out.reshape(n, -1), 2))


def test_torch_spectral_norm_underestimates_conv_but_ours_does_not():
    torch.manual_seed(0)
    shape = (16, 8, 8)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    ref = nn.utils.parametrizations.spectral_norm(nn.Conv2d(16, 16, 3, padding=1, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original.copy_(conv.weight)
    ref.train()
    for _ in range(50):  # converge torch's power iteration on the reshaped kernel
        ref(torch.zeros(1, *shape))
    ref.eval()
    torch_norm = power_iteration_norm(ref.weight.detach(), shape, padding=1, n_iter=300)  # a lower estimate
    assert torch_norm > 1.3  # torch's "normalised" conv is far from 1-Lipschitz
    certified_spectral_norm(conv, 1.0, shape)
    exact = dense_conv_norm(conv, shape)
    assert exact <= 1.0
    assert exact >= 0.99  # and the rescaling is tight
    assert conv.certified_norm <= 1.0


def test_certified_spectral_norm_linear_and_strided_conv():
    torch.manual_seed(1)
    lin = nn.Linear(30, 20)
    certified_spectral_norm(lin, 0.5)
    assert float(torch.linalg.matrix_norm(lin.weight.detach().double(), 2)) <= 0.5
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
    certified_spectral_norm(conv, 2.0, (4, 9, 9))
    assert dense_conv_norm(conv, (4, 9, 9)) <= 2.0
    small = nn.Linear(5, 5)
    with torch.no_grad():
        small.weight.mul_(1e-3)
    before = small.weight.clone()
    certified_spectral_norm(small, 1.0)
    assert torch.equal(small.weight, before)  # already certified below: untouched
    with pytest.raises(InvalidInputError, match="input_shape"):
        certified_spectral_norm(nn.Conv2d(2, 2, 3), 1.0)
    with pytest.raises(UnsupportedOperatorError):
        certified_spectral_norm(nn.ReLU(), 1.0)


def test_parametrisation_training_and_certify():
    torch.manual_seed(2)
    shape = (3, 8, 8)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(5)
    param = spectral_parametrize(conv, 1.0, shape, n_power_iterations=2)
    opt = torch.optim.SGD(conv.parameters(), lr=1e-2)
    for _ in range(5):  # a few training steps: gradients flow through the estimate
        loss = conv(torch.randn(4, *shape)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert conv.parametrizations.weight.original.grad is not None
    conv.eval()
    got = param.certify()
    eff = conv.weight.detach()
    exact = dense_conv_norm(_with(eff), shape)
    assert exact <= 1.0 and got <= 1.0
    assert exact >= 0.99
    # a weight update invalidates the certificate; certify_parametrized restores it
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(1.5)
    assert param._certified_version != conv.parametrizations.weight.original._version
    assert certify_parametrized(conv) <= 1.0
    assert dense_conv_norm(_with(conv.weight.detach()), shape) <= 1.0


def _with(weight: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv
