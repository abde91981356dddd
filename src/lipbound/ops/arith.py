"""Affine arithmetic: sums of nodes (residual add/sub), scaling and shifting by constants.

* :class:`WeightedSum` ``y = sum_i k_i x_i`` (``+``, ``-``, ``torch.add(alpha=)``, ``torch.sub``).
* :class:`Affine` ``y = k * x + b`` with constant ``k``, ``b`` broadcast over the per-sample shape (``x * c``,
  ``x / c``, ``-x``, ``x + c``; also eval-mode BatchNorm).

All rules are exact. Broadcasting between two *traced* tensors of different shapes is not supported.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.graph.ir import Node
from lipbound.ops.base import LinearOp
from lipbound.ops.registry import REGISTRY


class WeightedSum(LinearOp):
    name = "sum"

    def __init__(self, coeffs: list[float]) -> None:
        self.coeffs = [float(k) for k in coeffs]
        self.n_inputs = len(self.coeffs)

    def apply(self, *xs: Tensor) -> Tensor:
        out = xs[0] * self.coeffs[0] if self.coeffs[0] != 1 else xs[0]
        for k, x in zip(self.coeffs[1:], xs[1:], strict=True):
            out = out + (x if k == 1 else k * x)
        return out

    def apply_transpose(self, y: Tensor) -> tuple[Tensor, ...]:
        return tuple(y if k == 1 else k * y for k in self.coeffs)

    def abs(self) -> WeightedSum:
        return WeightedSum([abs(k) for k in self.coeffs])

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return len(self.coeffs) + 1

    def jacobian(self, jb, node, g) -> list:
        return [g if k == 1 else jb.add(Affine(torch.tensor(k, dtype=jb.dtype)), [g]) for k in self.coeffs]

    def to(self, dtype=None, device=None) -> WeightedSum:
        return WeightedSum(self.coeffs)

    def describe(self) -> str:
        return "sum" + str(self.coeffs)


class Affine(LinearOp):
    """``y = k * x + b`` entrywise, ``k`` and ``b`` constants broadcastable to the per-sample shape."""

    name = "affine"

    def __init__(self, scale: Tensor, bias: Tensor | None = None) -> None:
        self.scale = scale.detach()
        self.bias = None if bias is None else bias.detach()

    def apply(self, x: Tensor) -> Tensor:
        return x * self.scale

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        return (y * self.scale,)

    def abs(self) -> Affine:
        return Affine(self.scale.abs())

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return 2

    def describe(self) -> str:
        return "affine" if self.scale.dim() else f"scale[{self.scale.item():.4g}]"


def _const(v) -> Tensor | None:
    """A Python number becomes a float64 tensor (never torch's float32 default: 0.7 must stay 0.7 in a float64
    graph); it is cast to the operand's dtype afterwards."""
    if isinstance(v, (int, float)):
        return torch.tensor(float(v), dtype=torch.float64)
    if isinstance(v, Tensor):
        return v.detach()
    return None


def _check_broadcast(c: Tensor, node: Node, where: str) -> Tensor:
    """A constant must broadcast to the per-sample shape without changing it (a leading batch dim of 1 is ok)."""
    shape = node.shape
    if c.dim() > len(shape):
        if c.dim() == len(shape) + 1 and c.shape[0] == 1:
            c = c[0]
        else:
            raise ShapeMismatchError(f"constant of shape {tuple(c.shape)} does not broadcast to {shape} at {where!r}")
    try:
        if torch.broadcast_shapes(c.shape, shape) != torch.Size(shape):
            raise RuntimeError
    except RuntimeError:
        raise ShapeMismatchError(
            f"constant of shape {tuple(c.shape)} does not broadcast to {shape} at {where!r}"
        ) from None
    return c


def _dtype_of(builder, node: Node):
    return builder.value(node).dtype


def add_nodes(builder, a, b, kb: float = 1.0):
    """``a + kb * b`` for nodes or constants."""
    where = builder.origin
    if isinstance(a, Node) and isinstance(b, Node):
        if a.shape != b.shape:
            raise UnsupportedOperatorError(
                "add/sub with broadcasting", where, hint=f"operand shapes {a.shape} and {b.shape} differ"
            )
        return builder.add(WeightedSum([1.0, kb]), [a, b])
    if isinstance(a, Node):
        c = _const(b)
        if c is None:
            raise UnsupportedOperatorError(f"add of {type(b).__name__}", where)
        c = _check_broadcast(c.to(_dtype_of(builder, a)), a, where)
        return builder.add(Affine(torch.ones((), dtype=c.dtype), kb * c), [a])
    if isinstance(b, Node):  # constant + kb * node
        c = _const(a)
        if c is None:
            raise UnsupportedOperatorError(f"add of {type(a).__name__}", where)
        c = _check_broadcast(c.to(_dtype_of(builder, b)), b, where)
        return builder.add(Affine(torch.tensor(kb, dtype=c.dtype), c), [b])
    return a + kb * b


def scale_node(builder, x, k):
    where = builder.origin
    if isinstance(k, Node):
        if isinstance(x, Node):
            raise UnsupportedOperatorError(
                "mul of two traced tensors", where, hint="only multiplication by constants is linear"
            )
        x, k = k, x
    c = _const(k)
    if c is None:
        raise UnsupportedOperatorError(f"mul by {type(k).__name__}", where)
    c = _check_broadcast(c.to(_dtype_of(builder, x)), x, where)
    return builder.add(Affine(c), [x])


@REGISTRY.function(operator.add, operator.iadd, torch.add, name="Add (residual)")
@REGISTRY.method("add", name="Add (residual)")
def _add(builder, module, args, kwargs):
    alpha = kwargs.get("alpha", 1)
    other = args[1] if len(args) > 1 else kwargs["other"]
    return add_nodes(builder, args[0], other, float(alpha))


@REGISTRY.function(operator.sub, operator.isub, torch.sub, name="Sub")
@REGISTRY.method("sub", name="Sub")
def _sub(builder, module, args, kwargs):
    alpha = kwargs.get("alpha", 1)
    other = args[1] if len(args) > 1 else kwargs["other"]
    return add_nodes(builder, args[0], other, -float(alpha))


@REGISTRY.function(operator.mul, operator.imul, torch.mul, name="Scale by constant")
@REGISTRY.method("mul", name="Scale by constant")
def _mul(builder, module, args, kwargs):
    return scale_node(builder, args[0], args[1] if len(args) > 1 else kwargs["other"])


@REGISTRY.function(operator.truediv, torch.div, name="Scale by constant")
@REGISTRY.method("div", name="Scale by constant")
def _div(builder, module, args, kwargs):
    d = args[1] if len(args) > 1 else kwargs["other"]
    if isinstance(d, Node):
        raise UnsupportedOperatorError("division by a traced tensor", builder.origin)
    c = _const(d)
    if c is None:
        raise UnsupportedOperatorError(f"div by {type(d).__name__}", builder.origin)
    out = scale_node(builder, args[0], 1.0 / c)
    if isinstance(out, Node) and isinstance(out.op, Affine):  # 1 / c is rounded once (global bounds widen by it)
        out.op.rel_error = float(torch.finfo(out.op.scale.dtype).eps if out.op.scale.is_floating_point() else 0.0)
    return out


@REGISTRY.function(operator.neg, torch.neg, name="Scale by constant")
@REGISTRY.method("neg", name="Scale by constant")
def _neg(builder, module, args, kwargs):
    return scale_node(builder, args[0], -1.0)
