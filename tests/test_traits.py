"""Every registered activation's declared :class:`~lipbound.ops.base.Traits` checked against its math.

On a dense grid of ``[-30, 30]`` (float64) plus points near 0: the slope range ``[s_0, s_1]`` contains the autograd
derivative and every difference quotient of random pairs (near and far), and is tight (the grid reaches both ends
within 1e-6); ``homogeneous`` holds (``sigma(t z) = t sigma(z)``, ``t >= 0``) exactly when declared; ``kink_at_zero``
holds exactly when declared, with ``sigma(z) = left z`` on ``z < 0`` and ``right z`` on ``z > 0`` for the declared
``pieces``; ``smooth`` ops have a continuous derivative; ``lipschitz`` and ``monotone`` follow from the slope. A
wrong trait (a slope end off by 1e-6, a missing or false kink or homogeneity) fails.
"""

from __future__ import annotations

import pytest
import torch

import lipbound.ops.catalog  # noqa: F401  (registers every op module)
from lipbound.ops.base import ElementwiseOp, Traits, kink_pieces
from lipbound.ops.convex import ELU, Softplus, _Convex
from lipbound.ops.gelu_silu import GELU, GELUTanh, SiLU, _SmoothUnimodal
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.normalization import Product, Rsqrt, Square
from lipbound.ops.relu import ReLU
from lipbound.ops.sigmoid import Sigmoid
from lipbound.ops.tanh import Tanh

DT = torch.float64
OPS = [
    pytest.param(ReLU(), id="relu"),
    *[pytest.param(LeakyReLU(a), id=f"leaky{a}") for a in (0.01, 0.3, -0.2, 2.0)],
    pytest.param(Tanh(), id="tanh"),
    pytest.param(Sigmoid(), id="sigmoid"),
    pytest.param(Softplus(), id="softplus"),
    pytest.param(Softplus(0.5, 3.0), id="softplus-switch3"),
    *[pytest.param(ELU(a), id=f"elu{a}") for a in (1.0, 0.7, 0.0)],
    pytest.param(GELU(), id="gelu"),
    pytest.param(GELUTanh(), id="gelu-tanh"),
    pytest.param(SiLU(), id="silu"),
    pytest.param(Square(), id="square"),
]
#: abstract bases, and ops outside the real line (Rsqrt: z > 0) or with two inputs (Product): they claim nothing
CLAIM_NOTHING = (Rsqrt, Product)
ABSTRACT = (_Convex, _SmoothUnimodal)


def _subclasses(base: type) -> set[type]:
    out, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub)
            todo.append(sub)
    return {c for c in out if c.__module__.startswith("lipbound.ops")}


def test_every_activation_is_checked():
    checked = {type(p.values[0]) for p in OPS} | set(CLAIM_NOTHING) | set(ABSTRACT)
    missing = _subclasses(ElementwiseOp) - checked
    assert not missing, f"activations without a traits test: {sorted(c.__name__ for c in missing)}"


def test_ops_off_the_real_line_claim_nothing():
    assert Rsqrt().traits() == Traits()
    assert Product().traits() == Traits()


def _grid() -> torch.Tensor:
    z = torch.linspace(-30, 30, 600001, dtype=DT)
    near0 = torch.tensor([-1e-9, -1e-300, 0.0, 1e-300, 1e-9], dtype=DT)
    return torch.cat([z, near0, torch.linspace(-1e-3, 1e-3, 2001, dtype=DT)]).sort().values


def _derivative(op: ElementwiseOp, z: torch.Tensor) -> torch.Tensor:
    zz = z.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(op.forward(zz).sum(), zz)
    return d


@pytest.mark.parametrize("op", OPS)
def test_slope_range_matches_the_derivative_and_difference_quotients(op):
    t = op.traits()
    if t.slope is None:
        assert t.lipschitz is None and not t.monotone
        return
    s0, s1 = t.slope
    assert t.lipschitz == max(abs(s0), abs(s1)) and t.monotone == (s0 >= 0)
    z = _grid()
    d = _derivative(op, z)
    assert (d >= s0).all() and (d <= s1).all(), (d.min().item(), d.max().item(), t.slope)
    # tight: the grid (step 1e-4, every extremum of these ops is within [-30, 30]) reaches both ends
    assert d.min().item() - s0 <= 1e-6 and s1 - d.max().item() <= 1e-6, (d.min().item(), d.max().item(), t.slope)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200000, generator=g, dtype=DT) * 4
    b = torch.cat([a[:100000] + torch.randn(100000, generator=g, dtype=DT) * 1e-3, torch.randn(100000, dtype=DT) * 8])
    keep = (a - b).abs() > 1e-6
    q = (op.forward(a[keep]) - op.forward(b[keep])) / (a[keep] - b[keep])
    assert (q >= s0 - 1e-9).all() and (q <= s1 + 1e-9).all(), (q.min().item(), q.max().item(), t.slope)


@pytest.mark.parametrize("op", OPS)
def test_homogeneity_holds_exactly_when_declared(op):
    z = _grid()[::50]
    worst = max(
        ((op.forward(s * z) - s * op.forward(z)).abs() / (1 + (s * z).abs())).max().item() for s in (0.0, 0.3, 2.0, 7.5)
    )
    if op.traits().homogeneous:
        assert worst <= 1e-14
    else:
        assert worst > 1e-6, "positively homogeneous but not declared so"


@pytest.mark.parametrize("op", OPS)
def test_kink_at_zero_holds_exactly_when_declared(op):
    t = op.traits()
    z = _grid()
    f = op.forward(z)
    pieces = kink_pieces(op)
    assert (pieces is not None) == t.kink_at_zero and (t.pieces is not None) == t.kink_at_zero
    if t.kink_at_zero:
        left, right = t.pieces
        assert t.slope == (min(left, right), max(left, right))
        expect = torch.where(z < 0, left * z, right * z)
        torch.testing.assert_close(f, expect, rtol=1e-15, atol=0)
        off = z != 0
        torch.testing.assert_close(op.derivative(z[off]), torch.where(z[off] < 0, left, right).to(DT))
    else:  # some side of 0 is not linear: a second difference is clearly nonzero
        second = f[2:] - 2 * f[1:-1] + f[:-2]
        same_side = (z[2:] < 0) | (z[:-2] > 0)
        assert second[same_side].abs().max().item() > 1e-12, "linear on each side of 0 but kink_at_zero is False"


@pytest.mark.parametrize("op", OPS)
def test_smooth_ops_have_a_continuous_derivative(op):
    if not op.traits().smooth:
        return
    z = _grid()
    for h in (1e-7, -1e-7):
        jump = (_derivative(op, z + h) - _derivative(op, z)).abs().max().item()
        assert jump <= 1e-5, jump
    torch.testing.assert_close(op.derivative(z), _derivative(op, z), rtol=1e-12, atol=1e-14)
