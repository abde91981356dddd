"""Reshapes: ``nn.Flatten``, ``torch.flatten``, ``view``/``reshape`` (batch dimension kept).

Rules: exact (a reshape is a permutation-free linear map; its adjoint is the inverse reshape).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.graph.ir import BatchDim
from lipbound.ops.base import LinearOp
from lipbound.ops.registry import REGISTRY


class Reshape(LinearOp):
    name = "reshape"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def apply(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[: x.dim() - len(self.in_shape)], *self.out_shape)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        return (y.reshape(*y.shape[: y.dim() - len(self.out_shape)], *self.in_shape),)

    def abs(self) -> Reshape:
        return self

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return 1

    def describe(self) -> str:
        return f"reshape[{self.in_shape}->{self.out_shape}]"


def reshape_node(builder, x, out_shape: tuple[int, ...]):
    if tuple(out_shape) == x.shape:
        return x
    if math.prod(out_shape) != x.numel:
        raise ShapeMismatchError(f"cannot reshape {x.shape} to {tuple(out_shape)} at {builder.origin!r}")
    return builder.add(Reshape(x.shape, tuple(out_shape)), [x])


def flatten_node(builder, x, start_dim: int = 1, end_dim: int = -1):
    full = (None, *x.shape)
    nd = len(full)
    s, e = start_dim % nd, end_dim % nd
    if s == 0:
        raise UnsupportedOperatorError("flatten over the batch dimension", builder.origin)
    if e < s:
        return x
    shape = (*full[1:s], math.prod(full[s : e + 1]), *full[e + 1 :])
    return reshape_node(builder, x, tuple(shape))


@REGISTRY.module(nn.Flatten, name="Flatten / reshape / view")
def _flatten_module(builder, m: nn.Flatten, args, kwargs):
    return flatten_node(builder, args[0], m.start_dim, m.end_dim)


@REGISTRY.function(torch.flatten, name="Flatten / reshape / view")
@REGISTRY.method("flatten", name="Flatten / reshape / view")
def _flatten(builder, module, args, kwargs):
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return flatten_node(builder, args[0], start, end)


@REGISTRY.function(torch.reshape, name="Flatten / reshape / view")
@REGISTRY.method("view", "reshape", name="Flatten / reshape / view")
def _reshape(builder, module, args, kwargs):
    x = args[0]
    shape = args[1:] if len(args) > 1 else (kwargs.get("shape") or kwargs.get("size"),)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    shape = list(shape)
    if not shape:
        raise ShapeMismatchError(f"empty target shape at {builder.origin!r}")
    head = shape[0]
    if isinstance(head, BatchDim) or (head == -1 and all(isinstance(s, int) and s >= 0 for s in shape[1:])):
        rest = shape[1:]
    else:
        raise UnsupportedOperatorError(
            "reshape that mixes the batch dimension",
            builder.origin,
            hint="keep the batch dimension first, e.g. x.view(x.size(0), -1)",
        )
    if any(isinstance(s, BatchDim) for s in rest):
        raise UnsupportedOperatorError("reshape that moves the batch dimension", builder.origin)
    rest = fill_inferred_dim([int(s) for s in rest], x.numel, x.shape, tuple(shape), builder.origin)
    return reshape_node(builder, x, tuple(rest))


def fill_inferred_dim(rest: list[int], numel: int, in_shape, target, where: str) -> list[int]:
    """Replace the (at most one) ``-1`` of a per-sample target shape by the size that keeps ``numel`` elements."""
    if rest.count(-1) > 1:
        raise ShapeMismatchError(f"more than one -1 in reshape at {where!r}")
    if -1 in rest:
        known = math.prod(s for s in rest if s != -1)
        if known == 0 or numel % known:
            raise ShapeMismatchError(f"cannot reshape {in_shape} to {target} at {where!r}")
        rest[rest.index(-1)] = numel // known
    return rest
