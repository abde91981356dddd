"""Import-time shape values: shape vectors with a symbolic batch size and the integer arithmetic on them.

Both importers (:mod:`lipbound.graph.onnx_import`, :mod:`lipbound.graph.torchscript`) see shape computations that
the exporter left in the model (``Shape``/``aten::size``, ``Gather``, ``Concat``, ``Reshape`` targets). Every entry
of such a shape is a known int except the batch size, which is represented by
:data:`~lipbound.graph.trace.BATCH`. These helpers fold that arithmetic to constants:

* :class:`SymShape` is a shape vector whose entries are ints or ``BATCH``;
* :func:`sym_arith` does int arithmetic on entries and rejects any arithmetic involving ``BATCH`` (its value is
  not known at import time, so the result could not be represented);
* :func:`per_sample_axis` maps an axis of the batched tensor (batch first) to an axis of the per-sample shape,
  rejecting the batch axis itself;
* :func:`resolve_reshape` turns a batched reshape target ``(head, *rest)`` into the per-sample shape ``rest``,
  with ``-1`` inferred from the feature count and, for ONNX, ``0`` copying the input dimension. The target is
  accepted only if ``prod(rest)`` equals the per-sample feature count, i.e. the batch dimension stays apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.graph.ir import BatchDim, Node
from lipbound.ops.shape import fill_inferred_dim


class SymShape(tuple):
    """A shape vector whose entries are ints or ``BATCH`` (the unknown batch size)."""


def is_batch(v: Any) -> bool:
    return isinstance(v, BatchDim)


def scalar(v: Any) -> Any:
    """The Python number held by a one-element tensor; any other value unchanged."""
    if isinstance(v, Tensor) and v.numel() == 1:
        return v.reshape(()).item()
    return v


def sym_arith(fn: Callable[[Any, Any], Any], a: Any, b: Any, where: str) -> Any:
    """Integer arithmetic on shape entries; arithmetic involving the batch size cannot be represented."""
    if is_batch(a) or is_batch(b):
        raise UnsupportedOperatorError("shape arithmetic on the batch dimension", where)
    return fn(a, b)


def is_full_range(start: Any, end: Any, step: Any) -> bool:
    """Whether the slice ``start:end:step`` keeps a whole axis (exporters write "to the end" as ``>= 2**62``)."""
    return start in (None, 0) and (end is None or end >= 2**62) and step in (None, 1)


def per_sample_axis(axis: int, ndim: int, where: str) -> int:
    """Map an axis of the batched tensor (``ndim`` dims, batch first) to a per-sample axis."""
    a = axis + ndim if axis < 0 else axis
    if a == 0:
        raise UnsupportedOperatorError("operation over the batch dimension", where)
    if not 0 < a < ndim:
        raise ShapeMismatchError(f"axis {axis} out of range for a {ndim}-d tensor at {where!r}")
    return a - 1


def resolve_reshape(x: Node, target: list[Any], where: str, allow_zero: bool = False) -> tuple[int, ...]:
    """Per-sample target shape of a batched reshape whose first entry stands for the batch dimension.

    The first entry may be ``BATCH``, ``0`` (ONNX: copy), ``-1`` or a fixed export-time batch size; the rest may
    contain one ``-1`` and (ONNX, ``allow_zero``) zeros copying the input's dimension.
    """
    if not target:
        raise ShapeMismatchError(f"empty target shape at {where!r}")
    rest = list(target[1:])
    if any(is_batch(s) for s in rest):
        raise UnsupportedOperatorError("reshape that moves the batch dimension", where)
    full = (None, *x.shape)
    rest = [int(full[i + 1]) if (s == 0 and allow_zero and i + 1 < len(full)) else int(s) for i, s in enumerate(rest)]
    rest = fill_inferred_dim(rest, x.numel, x.shape, target, where)
    head = target[0]
    if math.prod(rest) != x.numel:
        if is_batch(head) or head == 0:
            raise ShapeMismatchError(f"cannot reshape per-sample shape {x.shape} to {tuple(rest)} at {where!r}")
        raise UnsupportedOperatorError(
            "reshape that mixes the batch dimension",
            where,
            hint=f"target {list(target)} does not keep the {x.numel} per-sample features together",
        )
    return tuple(rest)
