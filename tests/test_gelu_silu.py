"""GELU (erf and tanh forms) and SiLU: shape constants, float32 / batched relaxations, tightness, tracing, Jacobian
graph == autograd and certified local bounds between sampled gradient norms and a crude product bound.

Generic grid checks (float64 relaxations, intervals, derivative ranges) are in tests/test_relaxations.py and the
traits in tests/test_traits.py.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbound
from lipbound.engine.jacobian import build_jacobian_graph
from lipbound.ops.gelu_silu import GELU, GELUTanh, SiLU
from lipbound.problem import as_graph

D = torch.float64
OPS = [
    pytest.param(GELU, F.gelu, id="gelu"),
    pytest.param(GELUTanh, partial(F.gelu, approximate="tanh"), id="gelu-tanh"),
    pytest.param(SiLU, F.silu, id="silu"),
]


@pytest.mark.parametrize(("cls", "fn"), OPS)
def test_shape_constants_against_a_dense_grid(cls, fn):
    """g'' changes sign only at +-P, g' ranges over [DMIN, DMAX], g is minimal at M with value >= GMIN (all tight)."""
    z = torch.linspace(-40, 40, 800001, dtype=D).requires_grad_(True)
    g = fn(z)
    (d,) = torch.autograd.grad(g.sum(), z, create_graph=True)
    (dd,) = torch.autograd.grad(d.sum(), z)
    z, g, d = z.detach(), g.detach(), d.detach()
    flips = z[1:][(torch.sign(dd[1:]) != torch.sign(dd[:-1])) & (dd[1:].abs() > 1e-30) & (dd[:-1].abs() > 1e-30)]
    assert flips.numel() == 2 and (flips.abs() - cls.P).abs().max() < 2e-4, flips
    torch.testing.assert_close(cls().second(z), dd, rtol=1e-9, atol=1e-12)
    assert cls.DMIN <= d.min() <= cls.DMIN + 1e-9 and cls.DMAX - 1e-9 <= d.max() <= cls.DMAX
    assert cls.GMIN <= g.min() <= cls.GMIN + 1e-8 and abs(z[g.argmin()] - cls.M) < 2e-4
    torch.testing.assert_close(fn(z) - fn(-z), z, rtol=0, atol=1e-12)  # g(z) = z/2 + even
    assert cls().traits().slope == (cls.DMIN, cls.DMAX)


def _random_intervals(dtype, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g, dtype=D) * 3
    w = 10.0 ** (torch.rand(shape, generator=g, dtype=D) * 8 - 6)  # 1e-6 .. 1e2
    l, u = (
        (c - w * torch.rand(shape, generator=g, dtype=D)).to(dtype),
        (c + w * torch.rand(shape, generator=g, dtype=D)).to(dtype),
    )
    l.view(-1)[:3] = u.view(-1)[:3]  # degenerate
    return torch.minimum(l, u), torch.maximum(l, u)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cls", "fn"), OPS)
def test_float32_and_leading_dims_bound_the_exact_function(cls, fn, dtype):
    """Planes, interval and derivative range computed in ``dtype`` on a (3, 4, 40) batch bound the float64 g."""
    op = cls()
    l, u = _random_intervals(dtype, (3, 4, 40))
    lw, lb, uw, ub = op.relax(l, u)
    lo, hi = op.interval((l, u))
    dl, du = op.derivative_bounds(l, u)
    for t in (lw, lb, uw, ub, lo, hi, dl, du):
        assert t.shape == l.shape and t.dtype == dtype and torch.isfinite(t).all()
    t = torch.linspace(0, 1, 2001, dtype=D)
    l64, u64 = l.to(D)[..., None], u.to(D)[..., None]
    z = torch.cat([l64 + t * (u64 - l64), l64, u64], -1)
    zz = z.clone().requires_grad_(True)
    g = fn(zz)
    (d,) = torch.autograd.grad(g.sum(), zz)
    g = g.detach()
    tol = 1e-13 * (1 + z.abs())
    assert (lw.to(D)[..., None] * z + lb.to(D)[..., None] <= g + tol).all()
    assert (g <= uw.to(D)[..., None] * z + ub.to(D)[..., None] + tol).all()
    assert (lo.to(D)[..., None] <= g + tol).all() and (g <= hi.to(D)[..., None] + tol).all()
    assert (dl.to(D)[..., None] <= d + 1e-13).all() and (d <= du.to(D)[..., None] + 1e-13).all()


@pytest.mark.parametrize(("cls", "fn"), OPS)
def test_rules_are_tight(cls, fn):
    """Both planes touch g on the interval, the interval ends and derivative range are attained (float64)."""
    op = cls()
    l = torch.tensor([-3.0, -1.0, -6.0, 0.5, -30.0, -2.0, 1.0], dtype=D)
    u = torch.tensor([0.0, 1.0, 6.0, 2.5, 30.0, -1.5, 1.0 + 1e-7], dtype=D)
    t = torch.linspace(0, 1, 200001, dtype=D)
    z = l[:, None] + t * (u - l)[:, None]
    zz = z.clone().requires_grad_(True)
    g = fn(zz)
    (d,) = torch.autograd.grad(g.sum(), zz)
    g = g.detach()
    lw, lb, uw, ub = op.relax(l, u)
    scale = 1e-9 * (1 + (u - l))
    assert ((uw[:, None] * z + ub[:, None] - g).min(1).values <= scale).all()
    assert ((g - lw[:, None] * z - lb[:, None]).min(1).values <= scale).all()
    lo, hi = op.interval((l, u))
    torch.testing.assert_close(lo, g.min(1).values, rtol=0, atol=1e-8)
    torch.testing.assert_close(hi, g.max(1).values, rtol=0, atol=1e-8)
    assert (lo[:3] < -0.1).all()  # non-monotone: the interior minimum, not the endpoint values
    dl, du = op.derivative_bounds(l, u)
    torch.testing.assert_close(dl, d.min(1).values, rtol=0, atol=1e-8)
    torch.testing.assert_close(du, d.max(1).values, rtol=0, atol=1e-8)


class _Funcs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(F.silu(self.b(F.gelu(self.a(x), approximate="tanh"))) + F.gelu(self.b(torch.tanh(self.a(x)))))


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        return self.fc(F.silu(self.c2(nn.functional.gelu(self.c1(x)))).flatten(1))


def _nets() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = lambda act: nn.Sequential(nn.Linear(3, 10), act, nn.Linear(10, 10), act, nn.Linear(10, 2))  # noqa: E731
    return {
        "gelu": (mlp(nn.GELU()), (3,)),
        "gelu-tanh": (mlp(nn.GELU(approximate="tanh")), (3,)),
        "silu": (mlp(nn.SiLU()), (3,)),
        "functional": (_Funcs(), (3,)),
        "conv": (_Conv(), (2, 5, 5)),
    }


@pytest.mark.parametrize("name", list(_nets()))
def test_traced_graph_and_jacobian_graph_equal_the_model_and_autograd(name):
    model, shape = _nets()[name]
    model = model.double().eval()
    graph = as_graph(model, shape, D, "cpu")
    kinds = {type(n.op) for n in graph.nodes}
    assert kinds & {GELU, GELUTanh, SiLU}
    x = torch.randn(6, *shape, dtype=D, generator=torch.Generator().manual_seed(2)) * 2
    torch.testing.assert_close(graph(x).reshape(6, -1), model(x).reshape(6, -1), rtol=1e-13, atol=1e-13)
    c = torch.randn(6, graph.output.numel, dtype=D)
    back, g_x = build_jacobian_graph(graph, c)
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((model(xr).reshape(6, -1) * c).sum(), xr)
    torch.testing.assert_close(back.forward(x)[id(g_x)], ref, rtol=1e-11, atol=1e-13)


def _sampled_max(model, x0, eps, norm, n=400):
    g = torch.Generator().manual_seed(5)
    xs = x0 + eps * (2 * torch.rand(n, *x0.shape[1:], generator=g, dtype=D) - 1)
    corners = x0 + eps * torch.sign(torch.randn(n, *x0.shape[1:], generator=g, dtype=D))
    xs = torch.cat([xs, corners, x0]).requires_grad_(True)
    out = model(xs).reshape(xs.shape[0], -1)
    rows = []
    for k in range(out.shape[1]):
        (gr,) = torch.autograd.grad(out[:, k].sum(), xs, retain_graph=True)
        flat = gr.reshape(xs.shape[0], -1)
        rows.append(flat.abs().sum(1).max() if norm == "inf" else flat.norm(dim=1).max())
    return torch.stack(rows)


def _product_bound(model: nn.Module, shape, norm: str, lip: float) -> torch.Tensor:
    """``|grad f_k| <= |W_1|^T L |W_2|^T ... L |W_L|^T e_k`` entrywise (``L`` = max |g'|), then the dual norm."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    n_act = len(layers) - 1
    absm = {}
    for m in layers:
        absm[m] = (m.weight.detach().abs(), m.stride if isinstance(m, nn.Conv2d) else None, getattr(m, "padding", 0))

    def f(x):
        for m in layers:
            w, stride, pad = absm[m]
            x = F.linear(x.flatten(1), w) if stride is None else F.conv2d(x, w, stride=stride, padding=pad)
        return x.flatten(1)

    x = torch.zeros(1, *shape, dtype=D, requires_grad=True)
    out = f(x)
    rows = []
    for k in range(out.shape[1]):
        (v,) = torch.autograd.grad(out[0, k], x, retain_graph=True)
        v = v.flatten() * lip**n_act
        rows.append(v.sum() if norm == "inf" else v.norm())
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["gelu", "gelu-tanh", "silu", "conv"])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_local_bounds_between_sampled_gradients_and_a_product_bound(name, norm):
    model, shape = _nets()[name]
    model = model.double().eval()
    lip = max(max(abs(c.DMIN), c.DMAX) for c in (GELU, GELUTanh, SiLU))
    crude = _product_bound(model, shape, norm, lip)
    x0 = torch.randn(1, *shape, dtype=D, generator=torch.Generator().manual_seed(1))
    for eps in (0.01, 0.5):
        r = lipbound.local_lipschitz(model, x0, eps=eps, norm=norm)
        ri = lipbound.local_lipschitz(model, x0, eps=eps, norm=norm, method="interval", lower=False)
        sampled = _sampled_max(model, x0, eps, norm)
        assert (sampled <= r.upper[0] * (1 + 1e-9)).all(), (eps, sampled, r.upper)
        assert (r.lower[0] <= r.upper[0]).all() and (r.lower[0] >= 0).all()
        assert (r.upper[0] <= crude * (1 + 1e-9)).all(), (r.upper, crude)
        assert (r.upper[0] <= ri.upper[0] * (1 + 1e-9)).all(), (r.upper, ri.upper)
    opt = lipbound.local_lipschitz(model, x0, eps=0.5, norm=norm, optimize=True, lower=False)
    assert (_sampled_max(model, x0, 0.5, norm) <= opt.upper[0] * (1 + 1e-9)).all()


def test_float32_model_is_sound():
    model, shape = _nets()["gelu"]
    model = model.float().eval()
    x0 = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    r = lipbound.local_lipschitz(model, x0, eps=0.2, norm="inf", dtype=torch.float32)
    m64 = model.double()
    for i in range(2):
        assert (_sampled_max(m64, x0[i : i + 1].double(), 0.2, "inf") <= r.upper[i].double() * (1 + 1e-6)).all()


@pytest.mark.parametrize("kind", ["script", "jit_trace"])
def test_torchscript_frontend(kind):
    from lipbound.graph.torchscript import graph_from_torchscript

    model, shape = _nets()["functional"]
    model = model.double().eval()
    x = torch.randn(5, *shape, dtype=D, generator=torch.Generator().manual_seed(4))
    ts = torch.jit.script(model) if kind == "script" else torch.jit.trace(model, x[:2])
    graph = graph_from_torchscript(ts, shape)
    assert {GELU, GELUTanh, SiLU} <= {type(n.op) for n in graph.nodes}
    torch.testing.assert_close(graph(x), model(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_onnx_gelu_node(approximate):
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from lipbound.graph.onnx_import import graph_from_onnx

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Gelu", ["z"], ["y"], approximate=approximate),
    ]
    g = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    graph = graph_from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    assert (GELU if approximate == "none" else GELUTanh) in {type(n.op) for n in graph.nodes}
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    want = F.gelu(x @ torch.from_numpy(w), approximate=approximate)
    torch.testing.assert_close(graph(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU()], ids=["gelu", "gelu_tanh", "silu"])
def test_global_bounds_through_traits(act):
    """Global methods read GELU/SiLU from their traits (slope range over R, which contains negative slopes):
    above the exact constant of a one-neuron net (|w1 w2| max |g'|), above sampled Jacobian norms of an MLP, and
    LipSDP-Neuron below the product of norms."""
    import lipbound

    one = nn.Sequential(nn.Linear(1, 1, bias=False), act, nn.Linear(1, 1, bias=False)).double().eval()
    with torch.no_grad():
        one[0].weight.fill_(1.5)
        one[2].weight.fill_(-2.0)
    z = torch.linspace(-8, 8, 200001, dtype=torch.float64, requires_grad=True)
    (dg,) = torch.autograd.grad(act(z).sum(), z)
    exact = 3.0 * float(dg.abs().max())
    for method in ("product", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr"):
        assert lipbound.global_lipschitz(one, 2, method).upper >= exact * (1 - 1e-9), method
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 16), act, nn.Linear(16, 16), act, nn.Linear(16, 3)).double().eval()
    x = torch.randn(2000, 5, dtype=torch.float64) * 3
    J = torch.func.vmap(torch.func.jacrev(m))(x)
    sampled = float(torch.linalg.matrix_norm(J, ord=2).max())
    prod = lipbound.global_lipschitz(m, 2, "product").upper
    sdp = lipbound.global_lipschitz(m, 2, "lipsdp-neuron")
    assert sdp.method == "lipsdp-neuron" and sampled <= sdp.upper <= prod
    assert lipbound.global_lipschitz(m, "inf", "auto").upper >= float(J.abs().sum(-1).max())
