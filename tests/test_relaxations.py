"""Every op rule in ``lipbound.ops`` checked on dense grids / samples of its domain (float64).

Elementwise ops: ``lw z + lb <= sigma(z) <= uw z + ub`` on ``[l, u]`` (alpha=None and random alpha), ``interval``
contains ``sigma`` and ``derivative_bounds`` contains the Clarke derivative (at kinks the whole Clarke interval).
Linear ops: ``interval`` contains sampled outputs, ``apply_transpose`` is the adjoint of ``apply``, ``abs`` is the
entrywise absolute value of the dense matrix, ``bias_term`` is ``<lam, b>``.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import lipbound.ops.catalog  # noqa: F401  (registers every op module)
from lipbound.ops.arith import Affine, WeightedSum
from lipbound.ops.base import ElementwiseOp, LinearOp
from lipbound.ops.conv import Conv2dLayer
from lipbound.ops.convex import ELU, Softplus, _Convex
from lipbound.ops.gelu_silu import GELU, GELUTanh, SiLU, _SmoothUnimodal
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.linear import LinearLayer
from lipbound.ops.normalization import GroupBroadcast, GroupMean, Product, Rsqrt, Square
from lipbound.ops.pooling import Gather
from lipbound.ops.relu import ReLU
from lipbound.ops.shape import Reshape
from lipbound.ops.sigmoid import Sigmoid
from lipbound.ops.sorting import FeatureMix
from lipbound.ops.tanh import Tanh

DT = torch.float64
TOL = 1e-9
GRID = 801


def _subclasses(base: type) -> set[type]:
    out, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub)
            todo.append(sub)
    return {c for c in out if c.__module__.startswith("lipbound.ops")}


# ----------------------------------------------------------------------------------------------------------------
# elementwise ops
# ----------------------------------------------------------------------------------------------------------------

LEAKY_SLOPES = (0.01, 0.3, -0.2, 2.0)
ELEMENTWISE = [
    pytest.param(ReLU(), lambda z: torch.relu(z), (0.0, 1.0), id="relu"),
    *[
        pytest.param(LeakyReLU(a), partial(F.leaky_relu, negative_slope=a), (min(a, 1.0), max(a, 1.0)), id=f"leaky{a}")
        for a in LEAKY_SLOPES
    ],
    pytest.param(Tanh(), torch.tanh, None, id="tanh"),
    pytest.param(Sigmoid(), torch.sigmoid, None, id="sigmoid"),
    pytest.param(Square(), torch.square, None, id="square"),
    pytest.param(Softplus(), F.softplus, None, id="softplus"),
    pytest.param(Softplus(2.0), partial(F.softplus, beta=2.0), None, id="softplus-beta2"),
    # a low switch threshold: torch's identity branch drops 0.097 below the smooth function
    pytest.param(Softplus(0.5, 3.0), partial(F.softplus, beta=0.5, threshold=3.0), None, id="softplus-switch3"),
    *[pytest.param(ELU(a), partial(F.elu, alpha=a), (a, 1.0), id=f"elu{a}") for a in (1.0, 0.7, 0.0)],
    pytest.param(GELU(), F.gelu, None, id="gelu"),
    pytest.param(GELUTanh(), partial(F.gelu, approximate="tanh"), None, id="gelu-tanh"),
    pytest.param(SiLU(), F.silu, None, id="silu"),
]


def test_every_elementwise_op_is_covered():
    # Rsqrt (positive domain only) and the two-input Product: dense grids in tests/test_normalization_bounds.py;
    # _Convex is the abstract base of Softplus and ELU, _SmoothUnimodal that of GELU, GELUTanh and SiLU
    covered = {ReLU, LeakyReLU, Tanh, Sigmoid, Square, Rsqrt, Product, Softplus, ELU, _Convex}
    covered |= {GELU, GELUTanh, SiLU, _SmoothUnimodal}
    missing = _subclasses(ElementwiseOp) - covered
    assert not missing, f"elementwise ops without relaxation tests: {sorted(c.__name__ for c in missing)}"


def _intervals(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals of every kind: points, tiny, unit and huge widths; all-positive, all-negative, mixed; 0 endpoints."""
    g = torch.Generator().manual_seed(seed)
    n = 200
    centre = torch.randn(n, generator=g, dtype=DT) * 3
    widths = 10.0 ** (torch.rand(n, generator=g, dtype=DT) * 16 - 12)  # 1e-12 .. 1e4
    l1, u1 = (
        centre - widths * torch.rand(n, generator=g, dtype=DT),
        centre + widths * torch.rand(n, generator=g, dtype=DT),
    )
    pos = torch.rand(n, generator=g, dtype=DT) * 5
    neg = -torch.rand(n, generator=g, dtype=DT) * 5
    special_l = torch.tensor([0.0, 0.0, -1.0, -1e-12, -3.0, 2.0, -2.0, -1e3, -50.0, 1e-9, -30.0, 0.0], dtype=DT)
    special_u = torch.tensor([0.0, 1.0, 0.0, 1e-12, -3.0, 2.0, 1e-3, 1e3, 60.0, 2e-9, 25.0, 1e-14], dtype=DT)
    lo = torch.cat([l1, pos, neg, torch.minimum(pos, -pos * 0.3), torch.minimum(neg, centre), special_l])
    hi = torch.cat(
        [
            u1,
            pos + widths.clamp(max=10),
            neg + widths.clamp(max=1) * 0,
            torch.maximum(pos, 0.1 * pos),
            torch.maximum(neg, centre),
            special_u,
        ]
    )
    return torch.minimum(lo, hi), torch.maximum(lo, hi)


def _grid(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``(N, GRID + 3)`` points of each interval: a uniform grid, both endpoints, 0 (clamped) and near-0 points."""
    t = torch.linspace(0, 1, GRID, dtype=DT)
    z = l[:, None] + t[None] * (u - l)[:, None]
    extra = torch.stack(
        [
            torch.zeros_like(l).clamp(l, u),
            (1e-13 * torch.ones_like(l)).clamp(l, u),
            (-1e-13 * torch.ones_like(l)).clamp(l, u),
        ],
        1,
    )
    return torch.cat([z, l[:, None], u[:, None], extra], dim=1)


def _clarke(z: torch.Tensor, op, fn, kink) -> tuple[torch.Tensor, torch.Tensor]:
    """Clarke derivative interval at ``z``: the derivative off the kink, ``[min, max]`` of the slopes at 0."""
    zz = z.detach().clone().requires_grad_(True)
    (d,) = torch.autograd.grad(fn(zz).sum(), zz)
    if kink is None:
        return d, d
    at0 = z == 0
    lo = torch.where(at0, torch.full_like(z, kink[0]), d)
    hi = torch.where(at0, torch.full_like(z, kink[1]), d)
    return lo, hi


@pytest.mark.parametrize(("op", "fn", "kink"), ELEMENTWISE)
def test_elementwise_relaxation_on_grid(op, fn, kink):
    l, u = _intervals()
    z = _grid(l, u)
    f = fn(z)
    gen = torch.Generator().manual_seed(1)
    alphas = [None, torch.rand(l.shape, generator=gen, dtype=DT), torch.zeros_like(l), torch.ones_like(l)]
    for alpha in alphas:
        lw, lb, uw, ub = op.relax(l, u, alpha)
        for t in (lw, lb, uw, ub):
            assert t.shape == l.shape and torch.isfinite(t).all()
        lower = lw[:, None] * z + lb[:, None]
        upper = uw[:, None] * z + ub[:, None]
        scale = 1 + (lw[:, None] * z).abs() + lb.abs()[:, None] + (uw[:, None] * z).abs() + ub.abs()[:, None]
        bad_lo = lower - f > TOL * scale
        bad_up = f - upper > TOL * scale
        if bad_lo.any() or bad_up.any():
            i = int((bad_lo | bad_up).any(dim=1).nonzero()[0])
            j = int((bad_lo[i] | bad_up[i]).nonzero()[0])
            pytest.fail(
                f"{op.describe()} relaxation violated on [{l[i].item():.6g}, {u[i].item():.6g}]"
                f" at z={z[i, j].item():.6g}"
                f" (alpha={'None' if alpha is None else alpha[i].item():}): lower {lower[i, j].item():.12g}"
                f" f {f[i, j].item():.12g} upper {upper[i, j].item():.12g}"
            )


@pytest.mark.parametrize(("op", "fn", "kink"), ELEMENTWISE)
def test_elementwise_interval_and_derivative_bounds(op, fn, kink):
    l, u = _intervals(3)
    z = _grid(l, u)
    lo, hi = op.interval((l, u))
    f = fn(z)
    assert (lo[:, None] <= f + TOL * (1 + f.abs())).all(), op.describe()
    assert (f <= hi[:, None] + TOL * (1 + f.abs())).all(), op.describe()
    assert torch.equal(op.forward(z), fn(z))
    dl, du = op.derivative_bounds(l, u)
    c_lo, c_hi = _clarke(z, op, fn, kink)
    ok = (dl[:, None] <= c_lo + TOL) & (c_hi <= du[:, None] + TOL)
    if not ok.all():
        i = int((~ok).any(dim=1).nonzero()[0])
        j = int((~ok[i]).nonzero()[0])
        pytest.fail(
            f"{op.describe()} derivative_bounds [{dl[i].item()}, {du[i].item()}] on [{l[i].item()}, {u[i].item()}]"
            f" miss the Clarke derivative [{c_lo[i, j].item()}, {c_hi[i, j].item()}] at z={z[i, j].item()}"
        )
    # the single element used by autograd lies in the Clarke set
    d = op.derivative(z)
    assert ((c_lo - TOL <= d) & (d <= c_hi + TOL)).all()


@pytest.mark.parametrize(("op", "fn", "kink"), [p for p in ELEMENTWISE if p.id in ("relu", "leaky0.01", "leaky2.0")])
def test_piecewise_linear_relaxation_is_tight_where_stable(op, fn, kink):
    """Stable intervals are relaxed exactly (both planes equal sigma on the interval)."""
    l = torch.tensor([0.5, -3.0, 0.0, -2.0], dtype=DT)
    u = torch.tensor([2.0, -1.0, 4.0, 0.0], dtype=DT)
    z = _grid(l, u)
    lw, lb, uw, ub = op.relax(l, u)
    torch.testing.assert_close(lw[:, None] * z + lb[:, None], fn(z), atol=1e-12, rtol=0)
    torch.testing.assert_close(uw[:, None] * z + ub[:, None], fn(z), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# linear ops
# ----------------------------------------------------------------------------------------------------------------


def _conv_cases():
    g = torch.Generator().manual_seed(5)
    specs = [  # (in_c, out_c, groups, kernel, stride, padding, dilation, H, W)
        (1, 2, 1, 3, 1, 0, 1, 5, 5),
        (2, 4, 2, 3, 2, 1, 1, 7, 5),
        (3, 3, 3, 2, 2, 0, 1, 5, 6),
        (2, 2, 1, (3, 2), (2, 1), (1, 0), (2, 1), 7, 6),
        (4, 6, 2, 3, 3, 2, 2, 9, 8),
        (1, 1, 1, 1, 2, 0, 1, 5, 5),
    ]
    out = []
    for ic, oc, gr, k, s, p, d, h, w in specs:
        kh, kw = (k, k) if isinstance(k, int) else k
        weight = torch.randn(oc, ic // gr, kh, kw, generator=g, dtype=DT)
        bias = torch.randn(oc, generator=g, dtype=DT)
        out.append(
            pytest.param(
                Conv2dLayer(weight, bias, (ic, h, w), s, p, d, gr),
                (ic, h, w),
                id=f"conv{ic}{oc}g{gr}k{k}s{s}p{p}d{d}_{h}x{w}",
            )
        )
    return out


def _linear_cases():
    g = torch.Generator().manual_seed(6)
    return [
        pytest.param(
            LinearLayer(torch.randn(5, 3, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT)),
            [(3,)],
            id="linear",
        ),
        pytest.param(LinearLayer(torch.randn(1, 4, generator=g, dtype=DT)), [(4,)], id="linear-nobias"),
        *[pytest.param(p.values[0], [p.values[1]], id=p.id) for p in _conv_cases()],
        pytest.param(Reshape((2, 3, 4), (6, 4)), [(2, 3, 4)], id="reshape"),
        pytest.param(Reshape((2, 3, 4), (24,)), [(2, 3, 4)], id="flatten"),
        pytest.param(
            Affine(torch.randn(3, 1, 1, generator=g, dtype=DT), torch.randn(3, 1, 1, generator=g, dtype=DT)),
            [(3, 2, 2)],
            id="affine-channel",
        ),
        pytest.param(Affine(torch.tensor(-2.5, dtype=DT)), [(4,)], id="affine-scalar"),
        pytest.param(WeightedSum([1.0, -2.0, 0.5]), [(2, 3), (2, 3), (2, 3)], id="wsum3"),
        pytest.param(WeightedSum([1.0, 1.0]), [(4,)] * 2, id="wsum-add"),
        pytest.param(FeatureMix(torch.randn(5, 4, generator=g, dtype=DT), 3), [(4, 2, 3)], id="featuremix-conv"),
        pytest.param(FeatureMix(torch.randn(3, 6, generator=g, dtype=DT), 1), [(6,)], id="featuremix-vec"),
        pytest.param(GroupMean((4, 2, 3), 2), [(4, 2, 3)], id="group-mean"),
        pytest.param(GroupBroadcast((4, 2, 3), 2), [(2,)], id="group-broadcast"),
        # repeated entries (fan-out 2) and a zero output (-1)
        pytest.param(Gather((2, 3), (4,), torch.tensor([0, 5, -1, 5])), [(2, 3)], id="gather"),
        pytest.param(Gather((5,), (2, 2, 2), torch.tensor([4, 3, 2, 1, 0, 0, 1, 1])), [(5,)], id="gather-3d"),
    ]


def test_every_linear_op_is_covered():
    covered = {LinearLayer, Conv2dLayer, Reshape, Affine, WeightedSum, FeatureMix, GroupMean, GroupBroadcast, Gather}
    missing = _subclasses(LinearOp) - covered
    assert not missing, f"linear ops without adjoint tests: {sorted(c.__name__ for c in missing)}"


def _inner(a: torch.Tensor, b: torch.Tensor, ndim: int) -> torch.Tensor:
    return (a * b).sum(dim=tuple(range(a.dim() - ndim, a.dim())))


@pytest.mark.parametrize(("op", "in_shapes"), _linear_cases())
def test_linear_adjoint_abs_and_interval(op, in_shapes):
    g = torch.Generator().manual_seed(7)
    lead = (3, 2)  # (batch, spec rows): ops must accept any leading dims
    xs = [torch.randn(*lead, *s, generator=g, dtype=DT) for s in in_shapes]
    y = op.apply(*xs)
    out_shape = tuple(y.shape[len(lead) :])
    cot = torch.randn(*lead, *out_shape, generator=g, dtype=DT)
    back = op.apply_transpose(cot)
    assert len(back) == len(in_shapes)
    lhs = _inner(y, cot, len(out_shape))
    rhs = sum(_inner(x, bx, len(s)) for x, bx, s in zip(xs, back, in_shapes, strict=True))
    for bx, s in zip(back, in_shapes, strict=True):
        assert tuple(bx.shape) == (*lead, *s)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)

    # abs(): the op with entrywise |M| (dense matrices from the basis vectors), per input
    for k, s in enumerate(in_shapes):
        n = math.prod(s)
        basis = torch.eye(n, dtype=DT).reshape(n, *s)
        zeros = [torch.zeros(n, *t, dtype=DT) for t in in_shapes]
        args = [basis if i == k else zeros[i] for i in range(len(in_shapes))]
        dense = op.apply(*args).reshape(n, -1)
        abs_args = [basis if i == k else zeros[i] for i in range(len(in_shapes))]
        torch.testing.assert_close(op.abs().apply(*abs_args).reshape(n, -1), dense.abs(), rtol=0, atol=1e-12)

    # interval contains sampled outputs; it is tight (attained at box vertices) up to rounding
    centres = [torch.randn(1, *s, generator=g, dtype=DT) for s in in_shapes]
    radii = [torch.rand(1, *s, generator=g, dtype=DT) for s in in_shapes]
    bounds = [(c - r, c + r) for c, r in zip(centres, radii, strict=True)]
    lo, hi = op.interval(*bounds)
    samples = [
        c + r * (2 * torch.rand(500, *c.shape[1:], generator=g, dtype=DT) - 1)
        for c, r in zip(centres, radii, strict=True)
    ]
    vals = op.forward(*samples)
    assert (vals >= lo - 1e-10).all() and (vals <= hi + 1e-10).all()

    # bias_term(lam) == <lam, b>
    lam = torch.randn(*lead, *out_shape, generator=g, dtype=DT)
    bias = op.bias if op.bias is not None else torch.zeros(out_shape, dtype=DT)
    expected = _inner(lam, torch.broadcast_to(bias, out_shape).expand_as(lam), len(out_shape))
    torch.testing.assert_close(op.bias_term(lam, out_shape), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("op", "in_shape"), _conv_cases())
def test_conv_matches_torch_and_transpose_matches_autograd(op, in_shape):
    """``apply`` is F.conv2d and ``apply_transpose`` equals the vector-Jacobian product autograd computes."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, *in_shape, generator=g, dtype=DT, requires_grad=True)
    ref = F.conv2d(x, op.weight, None, op.stride, op.padding, op.dilation, op.groups)
    torch.testing.assert_close(op.apply(x), ref)
    cot = torch.randn_like(ref)
    (vjp,) = torch.autograd.grad(ref, x, cot)
    torch.testing.assert_close(op.apply_transpose(cot)[0], vjp, rtol=1e-12, atol=1e-12)
    assert tuple(op.out_shape) == tuple(ref.shape[1:])
