"""Certified local bounds through per-sample normalization (LayerNorm, GroupNorm, InstanceNorm, RMSNorm).

New primitive ops (Square, Rsqrt, Product) are checked on dense grids of their domains; the Jacobian graph is
checked against autograd; random nets with the norms are checked against sampled gradient norms (hypothesis).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lipbound
from lipbound.engine.jacobian import build_jacobian_graph
from lipbound.errors import InvalidModelError, ShapeMismatchError, UnsupportedOperatorError
from lipbound.ops.normalization import Product, Rsqrt, Square
from lipbound.problem import as_graph

D = torch.float64


def _intervals(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, generator=g, dtype=D) * 3, torch.randn(n, generator=g, dtype=D) * 3
    return torch.minimum(a, b), torch.maximum(a, b)


def _grid(lo: torch.Tensor, hi: torch.Tensor, k: int = 201) -> torch.Tensor:
    t = torch.linspace(0, 1, k, dtype=D).unsqueeze(1)
    return lo + t * (hi - lo)  # (k, n)


@pytest.mark.parametrize("op", [Square(), Rsqrt("test")])
def test_elementwise_relaxation_interval_and_derivative_on_a_grid(op) -> None:
    lo, hi = _intervals(300)
    if isinstance(op, Rsqrt):
        lo = lo.abs() + 1e-3
        hi = lo + (hi - lo).abs() + 1e-6
    z = _grid(lo, hi)
    f = op.forward(z)
    lw, lb, uw, ub = op.relax(lo, hi)
    tol = 1e-9 * (1 + f.abs())
    assert (lw * z + lb <= f + tol).all() and (f <= uw * z + ub + tol).all()
    il, iu = op.interval((lo, hi))
    assert (il <= f.min(0).values + 1e-12).all() and (f.max(0).values <= iu + 1e-12).all()
    dl, du = op.derivative_bounds(lo, hi)
    d = op.derivative(z)
    assert (dl <= d + 1e-12).all() and (d <= du + 1e-12).all()
    # tight where it should be: the interval is attained at the grid ends / the vertex
    torch.testing.assert_close(iu, f.max(0).values, rtol=1e-12, atol=1e-12)


def test_product_mccormick_on_a_grid() -> None:
    la, ua = _intervals(200, seed=1)
    lb_, ub_ = _intervals(200, seed=2)
    t = torch.linspace(0, 1, 41, dtype=D)
    a = (la + t.reshape(-1, 1, 1) * (ua - la)).expand(41, 41, -1)
    b = (lb_ + t.reshape(1, -1, 1) * (ub_ - lb_)).expand(41, 41, -1)
    op = Product()
    h = op.forward(a, b)
    (lwa, lwb), low, (uwa, uwb), high = op.relax_inputs([(la, ua), (lb_, ub_)])
    tol = 1e-9 * (1 + h.abs())
    assert (lwa * a + lwb * b + low <= h + tol).all() and (h <= uwa * a + uwb * b + high + tol).all()
    il, iu = op.interval((la, ua), (lb_, ub_))
    torch.testing.assert_close(il, h.amin((0, 1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(iu, h.amax((0, 1)), rtol=1e-12, atol=1e-12)


def _nets() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "layernorm": (nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)), (4,)),
        "groupnorm": (
            nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)),
            (2, 6, 6),
        ),
        "rmsnorm": (nn.Sequential(nn.Linear(4, 6), nn.RMSNorm(6), nn.Tanh(), nn.Linear(6, 2)), (4,)),
        "instancenorm": (
            nn.Sequential(
                nn.Conv2d(2, 3, 3), nn.InstanceNorm2d(3, affine=True), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
            ),
            (2, 6, 6),
        ),
        "sequence layernorm": (nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Flatten(), nn.Linear(20, 2)), (5, 3)),
    }


@pytest.mark.parametrize("name", list(_nets()))
def test_jacobian_graph_equals_autograd(name: str) -> None:
    model, shape = _nets()[name]
    model = model.double().eval()
    graph = as_graph(model, shape, D, "cpu")
    x = torch.randn(4, *shape, dtype=D)
    out_dim = graph.output.numel
    c = torch.randn(4, out_dim, dtype=D)
    back, g_x = build_jacobian_graph(graph, c)
    mine = back.forward(x)[id(g_x)]
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((model(xr) * c).sum(), xr)
    torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


def _sampled_max(model: nn.Module, x0: torch.Tensor, eps: float, norm: str, n: int = 256) -> torch.Tensor:
    shape = x0.shape[1:]
    g = torch.Generator().manual_seed(5)
    xs = (x0 + eps * (2 * torch.rand(n, *shape, generator=g, dtype=D) - 1)).requires_grad_(True)
    out = model(xs)
    rows = []
    for k in range(out.shape[1]):
        (gr,) = torch.autograd.grad(out[:, k].sum(), xs, retain_graph=True)
        flat = gr.reshape(n, -1)
        rows.append(flat.abs().sum(1).max() if norm == "inf" else flat.norm(dim=1).max())
    return torch.stack(rows)


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_bounds_through_norms_are_sound_and_tight_on_small_boxes(name: str, norm: str) -> None:
    model, shape = _nets()[name]
    model = model.double().eval()
    x0 = torch.randn(1, *shape, dtype=D, generator=torch.Generator().manual_seed(1))
    for eps in (0.005, 0.1):
        r = lipbound.local_lipschitz(model, x0, eps=eps, norm=norm)
        sampled = _sampled_max(model, x0, eps, norm)
        assert (sampled <= r.upper[0] * (1 + 1e-9)).all()
        assert (r.lower[0] <= r.upper[0]).all()
        if eps == 0.005:
            assert (r.upper[0] <= 1.5 * r.lower[0]).all()  # near-exact on a small box
    opt = lipbound.local_lipschitz(model, x0, eps=0.1, norm=norm, optimize=True, lower=False)
    plain = lipbound.local_lipschitz(model, x0, eps=0.1, norm=norm, lower=False)
    assert (opt.upper <= plain.upper * (1 + 1e-9)).all()
    assert (_sampled_max(model, x0, 0.1, norm) <= opt.upper[0] * (1 + 1e-9)).all()


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(["layer", "group", "rms"]),
    width=st.sampled_from([4, 6]),
    act=st.sampled_from([nn.ReLU, nn.Tanh]),
    eps=st.sampled_from([0.01, 0.1, 0.5]),
    seed=st.integers(0, 10_000),
)
def test_random_norm_nets_hypothesis(kind, width, act, eps, seed) -> None:
    torch.manual_seed(seed)
    norm_layer = {"layer": nn.LayerNorm(width), "group": nn.GroupNorm(2, width), "rms": nn.RMSNorm(width)}[kind]
    with torch.no_grad():
        for p in norm_layer.parameters():
            p.normal_()
    model = nn.Sequential(nn.Linear(3, width), norm_layer, act(), nn.Linear(width, 2)).double().eval()
    x0 = torch.randn(1, 3, dtype=D)
    r = lipbound.local_lipschitz(model, x0, eps=eps, norm="inf")
    assert (_sampled_max(model, x0, eps, "inf", n=128) <= r.upper[0] * (1 + 1e-9)).all()


def test_zero_variance_with_eps_zero_is_refused_clearly() -> None:
    # LayerNorm(2, eps=0) after a generic Linear: the variance is 0 exactly where both features agree; a box
    # around such a point makes 1/sqrt(var) unbounded
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2, eps=0.0), nn.Linear(2, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model[0].bias.zero_()
    with pytest.raises(InvalidModelError, match=r"'1'.*unbounded.*eps > 0"):
        lipbound.local_lipschitz(model, torch.zeros(1, 2, dtype=D) + 0.3, eps=0.1)
    constant = nn.Sequential(nn.Linear(2, 2, bias=False), nn.LayerNorm(2, eps=0.0)).double().eval()
    with torch.no_grad():
        constant[0].weight.fill_(1.0)
    with pytest.raises(InvalidModelError, match="NaN or inf on random inputs"):
        lipbound.local_lipschitz(constant, torch.zeros(1, 2, dtype=D), eps=0.1)


def test_group_count_must_divide_and_global_refuses_with_a_reason() -> None:
    class BadGroups(nn.Module):
        def forward(self, x):
            return F.group_norm(x, 3)

    with pytest.raises(ShapeMismatchError, match="3 groups do not divide"):
        lipbound.local_lipschitz(BadGroups(), torch.zeros(1, 4, 2, 2, dtype=D), eps=0.1)
    model, shape = _nets()["groupnorm"]
    with pytest.raises(UnsupportedOperatorError, match="not globally Lipschitz"):
        lipbound.global_lipschitz(model.eval(), input_shape=shape)
