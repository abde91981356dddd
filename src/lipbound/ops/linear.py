"""Fully connected layer ``y = W x + b`` (``nn.Linear``, ``F.linear``).

Rules: exact. Interval ``(W c + b, |W| r)``; back-substitution ``Lambda -> Lambda W``; Jacobian ``g -> W^T g``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import ShapeMismatchError
from lipbound.ops.base import LinearOp
from lipbound.ops.registry import REGISTRY


class LinearLayer(LinearOp):
    name = "linear"

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def apply(self, x: Tensor) -> Tensor:
        return x @ self.weight.T

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        return (y @ self.weight,)

    def abs(self) -> LinearLayer:
        return LinearLayer(self.weight.abs())

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return max(self.weight.shape)

    def describe(self) -> str:
        return f"linear[{self.weight.shape[1]}->{self.weight.shape[0]}]"


def _make(builder, x, weight: Tensor, bias: Tensor | None):
    if x.shape[-1] != weight.shape[1]:
        raise ShapeMismatchError(
            f"linear layer at {builder.origin!r} expects {weight.shape[1]} input features, got shape {x.shape}"
        )
    return builder.add(LinearLayer(weight, bias), [x])


@REGISTRY.module(nn.Linear, name="Linear")
def _from_module(builder, module: nn.Linear, args, kwargs):
    return _make(builder, args[0], module.weight, module.bias)


@REGISTRY.function(F.linear, name="Linear")
def _from_function(builder, module, args, kwargs):
    x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return _make(builder, x, weight, bias)
