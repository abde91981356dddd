"""GELU (exact ``erf`` form and ``approximate="tanh"``) and SiLU / Swish: smooth, NON-monotone activations.

* ``gelu(z) = z Phi(z)`` (``Phi``, ``phi``: standard normal CDF, density), ``gelu' = Phi + z phi``,
  ``gelu'' = phi(z) (2 - z^2)``;
* ``gelu_tanh(z) = z (1 + tanh(k (z + c z^3))) / 2`` with ``k = sqrt(2 / pi)``, ``c = 0.044715``;
* ``silu(z) = z s(z)`` (``s`` the sigmoid), ``silu' = s(z) (1 + z s(-z))``, ``silu'' = s(z) s(-z) (2 - z tanh(z / 2))``.

**Shape** (the facts every rule relies on; tests/test_gelu_silu.py checks them on dense grids). Each is
``g(z) = z / 2 + e(z)`` with ``e`` even, so ``g' - 1/2`` is odd and ``g''`` even. ``g''`` has exactly one positive
zero ``p`` (GELU: ``sqrt 2``; SiLU: the root of ``z tanh(z / 2) = 2``; GELU-tanh: computed), so ``g'`` decreases on
``(-inf, -p]``, increases on ``[-p, p]`` and decreases on ``[p, inf)``, from ``g'(-inf) = 0`` to ``g'(inf) = 1``:
``g'(-p) < 0`` is its minimum and ``g'(p) = 1 - g'(-p) > 1`` its maximum (the slope restriction of
:class:`~lipbound.ops.base.Traits`). ``g'`` has one zero ``m`` in ``(-p, 0)``: ``g`` decreases on ``(-inf, m]`` and
increases on ``[m, inf)``, with minimum ``g(m)`` (GELU about -0.170 at -0.752, SiLU about -0.278 at -1.278).

**Rules on** ``[l, u]``:

* interval: ``[g(clamp(m, l, u)), max(g(l), g(u))]`` (``g`` is unimodal);
* derivative range: ``min`` / ``max`` of ``g'(l)``, ``g'(u)`` and, where ``-p`` / ``p`` lies in ``[l, u]``, the
  global minimum / maximum of ``g'``;
* linear relaxation: one slope ``a`` for both planes (the chord's; the tangent's at the midpoint on intervals too
  narrow for an accurate chord) and the exact offsets ``max`` / ``min`` over ``[l, u]`` of ``h(z) = g(z) - a z``.
  ``h' = g' - a`` is monotone on each of the three pieces of ``[l, u]`` cut at ``-p`` and ``p``, so on each piece
  ``h`` has at most one critical point, found by bisection on the sign of ``h'``; the extremes of ``h`` are among
  ``h`` at the ends of the pieces and at those critical points. A critical point is only known to lie in the final
  bisection bracket ``[z_0, z_1]``, so it contributes ``h(z_0) +- L (z_1 - z_0)`` with ``L = max |g'| + |a| >= |h'|``.

**Rounding.** The constants (``p``, ``m``, ``g(m)``, the extremes of ``g'``) are computed once in float64 and rounded
outward; ``p`` and ``m`` are used with a ``1e-9`` tolerance (a point within it of ``p`` counts as inside). Every
computed value ``v`` of ``g``, ``g'`` or ``h`` is widened by ``16 eps (|v| + (1 + |a|) |z|) + tiny`` (``eps`` of the
dtype), which covers torch's few-ulp ``erf`` / ``exp`` / ``tanh`` and the cancellation in ``1 + erf(z / sqrt 2)``
for negative ``z`` (an absolute error of a few ulps of ``|z|``). So the planes bound the exact real ``g``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import UnsupportedOperatorError
from lipbound.ops.base import Bounds, ElementwiseOp, Traits
from lipbound.ops.registry import REGISTRY

Fn = Callable[[Tensor], Tensor]

#: a point within this distance of the computed ``p`` or ``m`` is treated as possibly being it
_TOL = 1e-9
_PAD = 16  # ulps of widening for every computed value


def _bisect(fn: Fn, lo: float, hi: float, iters: int = 200) -> float:
    """A root of ``fn`` in ``[lo, hi]`` (float64 scalar bisection; ``fn(lo)`` and ``fn(hi)`` of opposite signs)."""
    a, b = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    sa = torch.sign(fn(a))
    for _ in range(iters):
        mid = (a + b) / 2
        if torch.sign(fn(mid)) == sa:
            a = mid
        else:
            b = mid
    return float((a + b) / 2)


def _down(c: float, like: Tensor) -> Tensor:
    """The float64 constant ``c`` as a scalar of ``like``'s dtype, rounded down (by a few ulps of that dtype)."""
    return torch.tensor(c - 4 * torch.finfo(like.dtype).eps * max(1.0, abs(c)), dtype=like.dtype, device=like.device)


def _up(c: float, like: Tensor) -> Tensor:
    """The float64 constant ``c`` in ``like``'s dtype, rounded up."""
    return torch.tensor(c + 4 * torch.finfo(like.dtype).eps * max(1.0, abs(c)), dtype=like.dtype, device=like.device)


def _pad(v: Tensor, z: Tensor, a: Tensor | float = 0.0) -> Tensor:
    """Rounding widening of a computed value ``v`` of ``g(z)``, ``g'(z)`` or ``g(z) - a z`` (module docstring)."""
    eps = torch.finfo(v.dtype).eps
    a_abs = a.abs() if isinstance(a, Tensor) else abs(a)
    return _PAD * eps * (v.abs() + (1 + a_abs) * z.abs()) + torch.finfo(v.dtype).tiny


class _SmoothUnimodal(ElementwiseOp):
    """Shared rules of GELU / GELU-tanh / SiLU (module docstring). Subclasses give ``forward``, ``derivative`` and
    ``second`` (``g''``, used once to locate ``p``), and call :meth:`_constants` at class creation."""

    #: ``p`` (positive zero of ``g''``), ``m`` (zero of ``g'``), ``g(m)`` rounded down, ``[min g', max g']`` outward
    P: float
    M: float
    GMIN: float
    DMIN: float
    DMAX: float

    @classmethod
    def _constants(cls, p: float | None = None) -> None:
        op = cls()
        if p is None:
            p = _bisect(op.second, 0.5, 4.0)
        m = _bisect(op.derivative, -p, 0.0)
        t64 = torch.tensor
        gm = float(op.forward(t64(m, dtype=torch.float64)))
        dmin = float(op.derivative(t64(-p, dtype=torch.float64)))
        dmax = float(op.derivative(t64(p, dtype=torch.float64)))
        # outward by far more than the float64 evaluation error and the quadratic error of an approximate extremum
        cls.P, cls.M = p, m
        cls.GMIN = gm - 1e-12
        cls.DMIN, cls.DMAX = dmin - 1e-12, dmax + 1e-12

    def second(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def traits(self) -> Traits:
        return Traits(slope=(self.DMIN, self.DMAX), smooth=True, global_kind=self.name)

    def interval(self, b: Bounds) -> Bounds:
        l, u = b
        gl, gu = self.forward(l), self.forward(u)
        hi = torch.maximum(gl + _pad(gl, l), gu + _pad(gu, u))
        lo = torch.minimum(gl - _pad(gl, l), gu - _pad(gu, u))
        inside = (l <= self.M + _TOL) & (u >= self.M - _TOL)
        return torch.where(inside, torch.minimum(lo, _down(self.GMIN, lo)), lo), hi

    def derivative_bounds(self, l: Tensor, u: Tensor) -> Bounds:
        dl, du = self.derivative(l), self.derivative(u)
        lo = torch.minimum(dl - _pad(dl, l), du - _pad(du, u))
        hi = torch.maximum(dl + _pad(dl, l), du + _pad(du, u))
        has_min = (l <= -self.P + _TOL) & (u >= -self.P - _TOL)
        has_max = (l <= self.P + _TOL) & (u >= self.P - _TOL)
        lo = torch.where(has_min, torch.minimum(lo, _down(self.DMIN, lo)), lo)
        hi = torch.where(has_max, torch.maximum(hi, _up(self.DMAX, hi)), hi)
        return lo, hi

    def relax(self, l: Tensor, u: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        eps = torch.finfo(l.dtype).eps
        width = u - l
        gl, gu = self.forward(l), self.forward(u)
        wide = width > math.sqrt(eps) * (1 + l.abs() + u.abs())
        chord = (gu - gl) / torch.where(wide, width, torch.ones_like(width))
        a = torch.where(wide, chord, self.derivative((l + u) / 2))
        lip = max(abs(self.DMIN), abs(self.DMAX)) + a.abs()

        def h(z: Tensor) -> tuple[Tensor, Tensor]:
            v = self.forward(z) - a * z
            return v, _pad(v, z, a)

        # candidates: l, u, the piece ends -p, p inside (l, u) and the bisection brackets of the three pieces
        hl, pl = h(l)
        hu, pu = h(u)
        up = torch.maximum(hl + pl, hu + pu)
        lo = torch.minimum(hl - pl, hu - pu)
        cuts = torch.tensor([-math.inf, -self.P, self.P, math.inf], dtype=l.dtype, device=l.device)
        for k in range(3):
            a0 = torch.clamp(l, min=cuts[k])
            b0 = torch.clamp(u, max=cuts[k + 1])
            live = a0 < b0
            a0 = torch.where(live, a0, l)
            b0 = torch.where(live, b0, l)
            for end in (a0, b0):
                v, pv = h(end)
                up = torch.where(live, torch.maximum(up, v + pv), up)
                lo = torch.where(live, torch.minimum(lo, v - pv), lo)
            z0, z1 = self._bracket(a, a0, b0)
            v0, p0 = h(z0)
            v1, p1 = h(z1)
            slack = lip * (z1 - z0)
            up = torch.where(live, torch.maximum(up, torch.maximum(v0 + p0, v1 + p1) + slack), up)
            lo = torch.where(live, torch.minimum(lo, torch.minimum(v0 - p0, v1 - p1) - slack), lo)
        return a, lo, a.clone(), up

    def _bracket(self, a: Tensor, z0: Tensor, z1: Tensor) -> tuple[Tensor, Tensor]:
        """Bisection on ``sign(g' - a)`` over ``[z0, z1]`` (elementwise): the returned bracket contains the root of
        ``g' - a`` when ``g' - a`` is monotone with a sign change on ``[z0, z1]``."""
        iters = 60 if z0.dtype == torch.float64 else 36
        s0 = torch.sign(self.derivative(z0) - a)
        for _ in range(iters):
            mid = (z0 + z1) / 2
            same = torch.sign(self.derivative(mid) - a) == s0
            z0 = torch.where(same, mid, z0)
            z1 = torch.where(same, z1, mid)
        return z0, z1


_SQRT1_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_K = math.sqrt(2 / math.pi)
_C = 0.044715


class GELU(_SmoothUnimodal):
    """``gelu(z) = z Phi(z)`` (torch's ``approximate="none"``)."""

    name = "gelu"

    def forward(self, z: Tensor) -> Tensor:
        return F.gelu(z)

    def derivative(self, z: Tensor) -> Tensor:
        return 0.5 * (1 + torch.erf(z * _SQRT1_2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI

    def second(self, z: Tensor) -> Tensor:
        return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI * (2 - z * z)


class GELUTanh(_SmoothUnimodal):
    """``gelu_tanh(z) = z (1 + tanh(k (z + c z^3))) / 2`` (torch's ``approximate="tanh"``)."""

    name = "gelu_tanh"

    def forward(self, z: Tensor) -> Tensor:
        return F.gelu(z, approximate="tanh")

    def derivative(self, z: Tensor) -> Tensor:
        t = torch.tanh(_K * (z + _C * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _K * (1 + 3 * _C * z * z)

    def second(self, z: Tensor) -> Tensor:
        # with s = k (z + c z^3): g'' = (1 - t^2) (s' + z (s'' / 2 - t s'^2)), s' = k (1 + 3 c z^2), s'' = 6 k c z
        t = torch.tanh(_K * (z + _C * z**3))
        s1 = _K * (1 + 3 * _C * z * z)
        return (1 - t * t) * (s1 + z * (3 * _K * _C * z - t * s1 * s1))


class SiLU(_SmoothUnimodal):
    """``silu(z) = z sigmoid(z)`` (Swish with ``beta = 1``)."""

    name = "silu"

    def forward(self, z: Tensor) -> Tensor:
        return F.silu(z)

    def derivative(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 + z * torch.sigmoid(-z))

    def second(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z) * torch.sigmoid(-z) * (2 - z * torch.tanh(z / 2))


GELU._constants(math.sqrt(2.0))
GELUTanh._constants()
SiLU._constants()


def _gelu(builder, x, approximate: str):
    if approximate == "none":
        return builder.add(GELU(), [x])
    if approximate == "tanh":
        return builder.add(GELUTanh(), [x])
    raise UnsupportedOperatorError(
        f"GELU(approximate={approximate!r})", builder.origin, hint="approximate must be 'none' or 'tanh'"
    )


@REGISTRY.module(nn.GELU, name="GELU")
def _gelu_module(builder, m: nn.GELU, args, kwargs):
    return _gelu(builder, args[0], m.approximate)


@REGISTRY.function(F.gelu, name="GELU")
def _gelu_function(builder, module, args, kwargs):
    return _gelu(builder, args[0], kwargs.get("approximate", args[1] if len(args) > 1 else "none"))


@REGISTRY.module(nn.SiLU, name="SiLU")
@REGISTRY.function(F.silu, name="SiLU")
def _silu(builder, module, args, kwargs):
    return builder.add(SiLU(), [args[0]])
