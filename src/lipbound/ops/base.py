"""Operator base classes.

Every node of a lipbound graph carries an :class:`Op`. Tensors seen by an op always have leading *batch-like*
dimensions followed by the node's per-sample shape; ops must work for any number of leading dimensions so that
the same code serves concrete evaluation (``(B, *shape)``) and linear-bound coefficients (``(B, S, *shape)``,
``S`` specification rows).

Three kinds of op exist:

* :class:`LinearOp` -- an affine map ``y = M(x_1, ..., x_k) + b`` with ``M`` linear. Its rules are exact:
  interval bounds use centre/radius ``(M c + b, |M| r)``, linear bounds are back-substituted with the adjoint
  ``M^T`` and the Jacobian (vector-Jacobian product) of input ``i`` is ``M_i^T g``.
* :class:`ElementwiseOp` -- ``y = sigma(z)`` applied entrywise. It provides interval bounds, linear relaxations
  ``lw*z + lb <= sigma(z) <= uw*z + ub`` on ``[l, u]`` and, for the Jacobian, the range ``[d_l, d_u]`` of the
  Clarke derivative of ``sigma`` over ``[l, u]``.
* leaves (:class:`InputOp`, :class:`ConstOp`) that start a graph.

Ops that are compositions of these (MaxMin, GroupSort) are *lowered* by their converter into primitive nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

Bounds = tuple[Tensor, Tensor]


def _leading(x: Tensor, shape: Sequence[int]) -> tuple[int, ...]:
    """Leading (batch-like) dimensions of ``x`` whose trailing dimensions equal ``shape``."""
    k = len(shape)
    return tuple(x.shape[: x.dim() - k]) if k else tuple(x.shape)


class Op:
    """Base class of all operators (see module docstring)."""

    #: short op name used in messages and the supported-op table
    name: ClassVar[str] = "op"
    #: number of graph inputs
    n_inputs: ClassVar[int] = 1

    def forward(self, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def interval(self, *bounds: Bounds) -> Bounds:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Op:
        """Return a copy of the op with all tensor attributes cast (ops are immutable after construction)."""
        new = object.__new__(type(self))
        for k, v in self.__dict__.items():
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype if v.is_floating_point() else None)
            elif isinstance(v, Op):
                v = v.to(dtype, device)
            new.__dict__[k] = v
        return new

    def parameters(self) -> list[Tensor]:
        """Tensors of the op (used to validate weights are finite)."""
        return [v for v in self.__dict__.values() if isinstance(v, Tensor)]

    def describe(self) -> str:
        return self.name


class InputOp(Op):
    """The network input (a leaf). Its bounds are the input box."""

    name = "input"
    n_inputs = 0


class ConstOp(Op):
    """A constant leaf ``value`` (with batch dimension)."""

    name = "const"
    n_inputs = 0

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def forward(self) -> Tensor:
        return self.value

    def interval(self) -> Bounds:
        return self.value, self.value


class LinearOp(Op):
    """Affine op ``y = sum_i M_i x_i + b``.

    Subclasses implement :meth:`apply` (the linear part, no bias), :meth:`apply_transpose` (the adjoint: for a
    cotangent ``y`` returns ``M_i^T y`` for every input) and :meth:`abs` (the op with entrywise ``|M|``). Both
    must accept any leading dimensions.
    """

    bias: Tensor | None = None

    def apply(self, *xs: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply_transpose(self, y: Tensor) -> tuple[Tensor, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def abs(self) -> LinearOp:  # pragma: no cover - abstract
        raise NotImplementedError

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        """Most products summed for one entry of ``M x`` or of ``M^T y`` (the ``n`` of the rounding bound
        ``gamma_n``, :mod:`lipbound.engine.rounding`); the default assumes a dense map."""
        return in_numel + out_numel

    def forward(self, *xs: Tensor) -> Tensor:
        y = self.apply(*xs)
        return y if self.bias is None else y + self.bias

    def jacobian(self, jb, node, g) -> list:
        """Jacobian rule: for every input ``i`` a backward node computing ``M_i^T g`` (default: one input)."""
        return [jb.transpose(self, g)]

    def interval(self, *bounds: Bounds) -> Bounds:
        centres = [(l + u) / 2 for l, u in bounds]
        radii = [(u - l) / 2 for l, u in bounds]
        c = self.forward(*centres)
        r = self.abs().apply(*radii)
        return c - r, c + r

    def bias_term(self, lam: Tensor, out_shape: Sequence[int], acc: torch.dtype | None = None) -> Tensor:
        """``<lam, b>`` summed over the per-sample output dims; shape = leading dims of ``lam``.

        ``acc``: dtype of the products and the sum (float64 for the engine's rigorous accumulation)."""
        k = len(out_shape)
        if self.bias is None:
            return lam.new_zeros(_leading(lam, out_shape), dtype=acc or lam.dtype)
        prod = lam.to(acc or lam.dtype) * self.bias.to(acc or lam.dtype)  # bias broadcasts on the trailing dims
        return prod.sum(dim=tuple(range(lam.dim() - k, lam.dim()))) if k else prod


@dataclass(frozen=True)
class Traits:
    """What analyses may assume about an activation ``sigma`` (read instead of ``isinstance`` checks).

    * ``kink_at_zero``: ``sigma`` is piecewise linear with its only kink at ``z = 0`` (ReLU, LeakyReLU): it is
      linear on each side, so splitting a pre-activation at 0 makes it exact (Branch and Bound, MILP) and a point
      is differentiable iff no such pre-activation is exactly 0 (attained lower bounds).
    * ``pieces``: for ``kink_at_zero`` ops, the slopes ``(left, right)`` of the two linear pieces, so
      ``sigma(z) = left z + (right - left) relu(z)`` (ReLU ``(0, 1)``, LeakyReLU(a) ``(a, 1)``); ``None`` otherwise.
    * ``slope``: ``[inf sigma', sup sigma']`` over the real line (the slope restriction ``[alpha, beta]`` of
      LipSDP: ``(sigma(a) - sigma(b)) / (a - b)`` lies in it for all ``a != b``); ``None`` if unbounded.
    * ``homogeneous``: positively homogeneous, ``sigma(t z) = t sigma(z)`` for ``t >= 0``.
    * ``smooth``: continuously differentiable on the real line.
    * ``global_kind``: name under which global bounds treat it as a scalar slope-restricted activation
      (``"relu"``, ``"tanh"``, ...), ``None`` if they cannot.
    """

    kink_at_zero: bool = False
    slope: tuple[float, float] | None = None
    pieces: tuple[float, float] | None = None
    homogeneous: bool = False
    smooth: bool = False
    global_kind: str | None = None

    @property
    def lipschitz(self) -> float | None:
        """``max |sigma'|`` over the real line (``None`` if unbounded)."""
        return None if self.slope is None else max(abs(self.slope[0]), abs(self.slope[1]))

    @property
    def monotone(self) -> bool:
        """Non-decreasing (``inf sigma' >= 0``)."""
        return self.slope is not None and self.slope[0] >= 0


class ElementwiseOp(Op):
    """Entrywise activation ``y = sigma(z)``.

    Subclasses implement :meth:`forward`, :meth:`interval`, :meth:`relax` and :meth:`derivative_bounds`, and
    declare what analyses may assume about them in :meth:`traits`.
    """

    #: True if the lower relaxation has a free slope parameter alpha (optimised with ``optimize=True``)
    has_alpha: ClassVar[bool] = False

    def traits(self) -> Traits:
        """Properties of ``sigma`` (see :class:`Traits`); the default assumes nothing."""
        return Traits()

    def relax(self, l: Tensor, u: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Linear bounds ``lw*z + lb <= sigma(z) <= uw*z + ub`` valid for all ``z`` in ``[l, u]``.

        ``alpha`` (same shape as ``l``, values in [0, 1]) selects among valid lower relaxations.
        Returns ``(lw, lb, uw, ub)``.
        """
        raise NotImplementedError  # pragma: no cover

    def relax_inputs(self, bounds: list[Bounds], alpha: Tensor | None = None):
        """Relaxation in the general multi-input form used by the engine (see :mod:`lipbound.engine.crown`)."""
        lw, lb, uw, ub = self.relax(bounds[0][0], bounds[0][1], alpha)
        return [lw], lb, [uw], ub

    def default_alpha(self, l: Tensor, u: Tensor) -> Tensor:
        """Initial alpha for optimisation (the CROWN heuristic)."""
        return torch.zeros_like(l)

    def derivative_bounds(self, l: Tensor, u: Tensor) -> Bounds:
        """Range ``[d_l, d_u]`` of every element of the Clarke derivative of ``sigma`` over ``[l, u]``."""
        raise NotImplementedError  # pragma: no cover

    def jacobian(self, jb, node, g) -> list:
        """Jacobian rule: ``g_in = sigma'(z) * g``, a gated product whose gate range comes from ``[l_z, u_z]``."""
        return [jb.gate(self, node.inputs[0], g)]

    def derivative(self, z: Tensor) -> Tensor:
        """One element of the Clarke derivative at ``z`` (what autograd uses)."""
        raise NotImplementedError  # pragma: no cover


def chord_relaxation(f_l: Tensor, f_u: Tensor, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the chord through ``(l, f_l)`` and ``(u, f_u)`` (degenerate intervals: slope 0)."""
    width = u - l
    safe = width > 0
    slope = torch.where(safe, (f_u - f_l) / torch.where(safe, width, torch.ones_like(width)), torch.zeros_like(l))
    return slope, f_l - slope * l


def kink_pieces(op: Op) -> tuple[float, float] | None:
    """``(left, right)`` slopes of an activation linear on each side of 0 (``Traits.kink_at_zero``), else ``None``.

    What Branch and Bound splits, the MILP encodes and the lower-bound search smooths; read from the op's traits.
    """
    if not isinstance(op, ElementwiseOp):
        return None
    t = op.traits()
    return t.pieces if t.kink_at_zero else None
