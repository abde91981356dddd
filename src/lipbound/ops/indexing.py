"""Indexing and layout: slicing (``x[:, 2:5]``, ``x[..., ::2]``, integer and index-tensor keys on per-sample
axes), ``cat`` / ``stack``, ``permute`` / ``transpose`` / ``.T``-free axis swaps, ``squeeze`` / ``unsqueeze``.

Every one of them is a 0/1 selection map on the flattened per-sample features, ``y = S vec(x)`` with
``S[k, index[k]] = 1`` (:class:`Gather`), stored as the index vector, never as a dense matrix: ``apply`` is an
``index_select``, the adjoint ``S^T`` an ``index_add``, ``|S| = S``. ``cat`` of ``x_1 .. x_m`` is
``y = sum_i E_i vec(x_i)`` with each ``E_i`` a :class:`Gather` that writes zeros (index ``-1``) outside the
block of ``x_i``. Rules: exact; the rounding of ``S^T`` is that of sums of at most ``fan_out`` terms.

The batch axis is never indexed, reordered or concatenated over: such calls are refused by name.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.graph.ir import Node
from lipbound.ops.arith import WeightedSum
from lipbound.ops.base import LinearOp
from lipbound.ops.registry import REGISTRY
from lipbound.ops.shape import reshape_node


class Gather(LinearOp):
    """``y.flat[i] = x.flat[index[i]]`` (``0`` where ``index[i] == -1``): a 0/1 selection matrix; its adjoint
    scatters and adds."""

    name = "gather"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], index: Tensor) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        index = index.reshape(-1).long()
        if index.numel() != math.prod(self.out_shape):
            raise ShapeMismatchError(f"gather index has {index.numel()} entries for output {self.out_shape}")
        self.valid = index >= 0
        self.index = index.clamp(min=0)
        counts = torch.bincount(self.index[self.valid], minlength=math.prod(self.in_shape))
        self.fan_out = int(counts.max()) if counts.numel() else 1  # the adjoint's longest sum

    def apply(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.in_shape)]
        picked = x.reshape(*lead, -1).index_select(-1, self.index.to(x.device))
        if not bool(self.valid.all()):
            picked = picked * self.valid.to(device=x.device, dtype=x.dtype)
        return picked.reshape(*lead, *self.out_shape)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        lead = y.shape[: y.dim() - len(self.out_shape)]
        flat = y.reshape(*lead, -1)
        if not bool(self.valid.all()):
            flat = flat * self.valid.to(device=y.device, dtype=y.dtype)
        out = flat.new_zeros(*lead, math.prod(self.in_shape))
        out.index_add_(out.dim() - 1, self.index.to(y.device), flat)
        return (out.reshape(*lead, *self.in_shape),)

    def abs(self) -> Gather:
        return self

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return self.fan_out + 1

    def describe(self) -> str:
        return f"gather[{self.in_shape}->{self.out_shape}]"


def select_node(builder, x: Node, index: Tensor, name: str = "select") -> Node:
    """``y.flat[k] = x.flat[index.flat[k]]``; per-sample output shape ``index.shape`` (identity skipped)."""
    flat = index.reshape(-1).long()
    if tuple(index.shape) == tuple(x.shape) and torch.equal(flat, torch.arange(x.numel)):
        return x
    if tuple(index.shape) != tuple(x.shape) and torch.equal(flat, torch.arange(x.numel)):
        return reshape_node(builder, x, tuple(index.shape))
    return builder.add(Gather(x.shape, tuple(index.shape), flat), [x], name=name)


def feature_index(x: Node) -> Tensor:
    """Flat indices of the per-sample features of ``x``, arranged in its per-sample shape."""
    return torch.arange(x.numel).reshape(x.shape)


def concat_node(builder, xs: list, axis: int) -> Node:
    """``cat(xs, per-sample axis)`` as ``sum_i E_i vec(x_i)`` (module docstring)."""
    where = builder.origin
    if not all(isinstance(x, Node) for x in xs):
        raise UnsupportedOperatorError(
            "cat of a traced tensor with a constant tensor", where, hint="concatenate traced tensors only"
        )
    if len(xs) == 1:
        return xs[0]
    ref = xs[0].shape
    for x in xs:
        if len(x.shape) != len(ref) or any(x.shape[d] != ref[d] for d in range(len(ref)) if d != axis):
            raise ShapeMismatchError(f"cat at {where!r}: per-sample shapes {[x.shape for x in xs]} do not match")
    out_shape = list(ref)
    out_shape[axis] = sum(x.shape[axis] for x in xs)
    parts = []
    for k, x in enumerate(xs):
        pieces = [feature_index(x) if j == k else torch.full(y.shape, -1, dtype=torch.long) for j, y in enumerate(xs)]
        index = torch.cat(pieces, dim=axis)
        parts.append(builder.add(Gather(x.shape, tuple(out_shape), index), [x], name="cat_place"))
    return builder.add(WeightedSum([1.0] * len(parts)), parts, name="cat")


def _per_sample_axis(builder, x: Node, dim: int, what: str, extra: int = 0) -> int:
    """Map a full-tensor axis (batch first; negative allowed) to a per-sample axis; refuse the batch axis."""
    nd = len(x.shape) + 1 + extra
    if not -nd <= dim < nd:
        raise ShapeMismatchError(f"{what} at {builder.origin!r}: dim {dim} out of range for {nd} dimensions")
    d = dim % nd
    if d == 0:
        raise UnsupportedOperatorError(f"{what} over the batch dimension", builder.origin)
    return d - 1


def _has_node(key) -> bool:
    if isinstance(key, Node):
        return True
    if isinstance(key, (tuple, list)):
        return any(_has_node(k) for k in key)
    if isinstance(key, slice):
        return any(isinstance(v, Node) for v in (key.start, key.stop, key.step))
    return False


@REGISTRY.function(operator.getitem, name="Slicing / indexing")
def _getitem(builder, module, args, kwargs):
    x, key = args[0], args[1]
    if not isinstance(x, Node):  # a shape tuple or a constant: evaluate it
        return operator.getitem(x, key)
    if _has_node(key):
        raise UnsupportedOperatorError(
            "indexing with a traced tensor", builder.origin, hint="index with constants (ints, slices, index tensors)"
        )
    # apply the key to the flat indices of a batch of two: the batch axis must come out untouched
    n = x.numel
    probe = torch.arange(2 * n).reshape(2, *x.shape)
    try:
        picked = probe[key]
    except (IndexError, TypeError, RuntimeError) as e:
        raise ShapeMismatchError(f"indexing at {builder.origin!r} with {key!r}: {e}") from e
    if (
        picked.dim() == 0
        or picked.shape[0] != 2
        or not torch.equal(picked[1] - picked[0], torch.full_like(picked[0], n))
    ):
        raise UnsupportedOperatorError(
            f"indexing {key!r} that selects over the batch dimension",
            builder.origin,
            hint="keep the batch axis whole, e.g. x[:, 2:5] or x[..., 0]",
        )
    return select_node(builder, x, picked[0], name="slice")


def _tensor_list(args, kwargs, name: str):
    xs = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    if not isinstance(xs, (list, tuple)) or not xs:
        raise ShapeMismatchError(f"{name} needs a non-empty list of tensors")
    return list(xs), int(dim)


@REGISTRY.function(torch.cat, torch.concat, torch.concatenate, name="cat / stack")
def _cat(builder, module, args, kwargs):
    xs, dim = _tensor_list(args, kwargs, "cat")
    if not isinstance(xs[0], Node):
        raise UnsupportedOperatorError("cat of constant tensors with traced ones", builder.origin)
    return concat_node(builder, xs, _per_sample_axis(builder, xs[0], dim, "cat"))


@REGISTRY.function(torch.stack, name="cat / stack")
def _stack(builder, module, args, kwargs):
    xs, dim = _tensor_list(args, kwargs, "stack")
    if not all(isinstance(x, Node) for x in xs):
        raise UnsupportedOperatorError("stack of a traced tensor with a constant tensor", builder.origin)
    if any(x.shape != xs[0].shape for x in xs):
        raise ShapeMismatchError(f"stack at {builder.origin!r}: shapes {[x.shape for x in xs]} differ")
    d = _per_sample_axis(builder, xs[0], dim, "stack", extra=1)
    lifted = [reshape_node(builder, x, (*x.shape[:d], 1, *x.shape[d:])) for x in xs]
    return concat_node(builder, lifted, d)


@REGISTRY.function(torch.permute, name="permute / transpose")
@REGISTRY.method("permute", name="permute / transpose")
def _permute(builder, module, args, kwargs):
    x = args[0]
    dims = args[1:] if len(args) > 1 else (kwargs["dims"],)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list, torch.Size)):
        dims = tuple(dims[0])
    full = [int(d) % (len(x.shape) + 1) for d in dims]
    if sorted(full) != list(range(len(x.shape) + 1)):
        raise ShapeMismatchError(f"permute at {builder.origin!r}: {tuple(dims)} is not a permutation")
    if full[0] != 0:
        raise UnsupportedOperatorError("permute that moves the batch dimension", builder.origin)
    return select_node(builder, x, feature_index(x).permute(*[d - 1 for d in full[1:]]), name="permute")


@REGISTRY.function(torch.transpose, torch.swapaxes, name="permute / transpose")
@REGISTRY.method("transpose", "swapaxes", name="permute / transpose")
def _transpose(builder, module, args, kwargs):
    x = args[0]
    a = _per_sample_axis(builder, x, int(args[1] if len(args) > 1 else kwargs["dim0"]), "transpose")
    b = _per_sample_axis(builder, x, int(args[2] if len(args) > 2 else kwargs["dim1"]), "transpose")
    return select_node(builder, x, feature_index(x).transpose(a, b), name="transpose")


@REGISTRY.function(torch.unsqueeze, name="Flatten / reshape / view")
@REGISTRY.method("unsqueeze", name="Flatten / reshape / view")
def _unsqueeze(builder, module, args, kwargs):
    x = args[0]
    d = _per_sample_axis(builder, x, int(args[1] if len(args) > 1 else kwargs["dim"]), "unsqueeze", extra=1)
    return reshape_node(builder, x, (*x.shape[:d], 1, *x.shape[d:]))


@REGISTRY.function(torch.squeeze, name="Flatten / reshape / view")
@REGISTRY.method("squeeze", name="Flatten / reshape / view")
def _squeeze(builder, module, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None:  # every per-sample axis of size 1 (the batch axis is kept even when it has size 1)
        return reshape_node(builder, x, tuple(s for s in x.shape if s != 1))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    axes = {_per_sample_axis(builder, x, int(d), "squeeze") for d in dims}
    return reshape_node(builder, x, tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1)))
