"""MaxMin and GroupSort (``lipbound.nn``), lowered to compare-exchange rounds of ReLU networks.

A compare-exchange of features ``(i, j)`` is exact in ReLU form: with ``d = x_i - x_j``,
``max(x_i, x_j) = x_j + relu(d)`` and ``min(x_i, x_j) = x_i - relu(d)``. A round of disjoint pairs is
``r = relu(D x)``, ``y = M x + N r`` with fixed 0/+-1 matrices acting on the feature dimension. GroupSort of group
size ``g`` is ``g`` rounds of odd-even transposition sort. Clarke derivatives are preserved: at ``x_i = x_j`` the
ReLU gate ranges over [0, 1], giving every convex combination of the two selections.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.errors import ShapeMismatchError
from lipbound.nn.activations import GroupSort, MaxMin
from lipbound.ops.arith import WeightedSum
from lipbound.ops.base import LinearOp
from lipbound.ops.registry import REGISTRY
from lipbound.ops.relu import ReLU


class FeatureMix(LinearOp):
    """``y[i] = sum_j P[i, j] x[j]`` along the first per-sample (feature) dimension; ``P`` is constant."""

    name = "feature_mix"

    def __init__(self, matrix: Tensor, ndim: int) -> None:
        self.matrix = matrix
        self.ndim = int(ndim)  # number of per-sample dims (feature dim first)

    def _mix(self, x: Tensor, m: Tensor) -> Tensor:
        fdim = x.dim() - self.ndim
        return torch.movedim(torch.movedim(x, fdim, -1) @ m.T, -1, fdim)

    def apply(self, x: Tensor) -> Tensor:
        return self._mix(x, self.matrix)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        return (self._mix(y, self.matrix.T),)

    def abs(self) -> FeatureMix:
        return FeatureMix(self.matrix.abs(), self.ndim)

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return max(self.matrix.shape)

    def describe(self) -> str:
        return f"feature_mix[{self.matrix.shape[1]}->{self.matrix.shape[0]}]"


def compare_exchange(builder, x, pairs: list[tuple[int, int]]):
    """Lower one round of disjoint compare-exchanges (max to ``i``, min to ``j``) on node ``x``."""
    c, p = x.shape[0], len(pairs)
    value = builder.value(x)
    kw = {"dtype": value.dtype, "device": value.device}
    d = torch.zeros(p, c, **kw)
    m = torch.eye(c, **kw)
    n = torch.zeros(c, p, **kw)
    for k, (i, j) in enumerate(pairs):
        d[k, i], d[k, j] = 1.0, -1.0
        m[i, i], m[i, j] = 0.0, 1.0  # y_i = x_j + r
        m[j, j], m[j, i] = 0.0, 1.0  # y_j = x_i - r
        n[i, k], n[j, k] = 1.0, -1.0
    nd = len(x.shape)
    diff = builder.add(FeatureMix(d, nd), [x], name="cmp_diff")
    r = builder.add(ReLU(), [diff], name="cmp_relu")
    passthrough = builder.add(FeatureMix(m, nd), [x], name="cmp_pass")
    spread = builder.add(FeatureMix(n, nd), [r], name="cmp_spread")
    return builder.add(WeightedSum([1.0, 1.0]), [passthrough, spread], name="cmp_out")


@REGISTRY.module(GroupSort, MaxMin, name="MaxMin / GroupSort")
def _convert(builder, m: GroupSort, args, kwargs):
    x = args[0]
    if not x.shape:
        raise ShapeMismatchError(f"{type(m).__name__} at {builder.origin!r} needs a feature dimension")
    x0, start = x, len(builder.nodes)
    for pairs in m.pairs_schedule(x.shape[0]):
        x = compare_exchange(builder, x, pairs)
    if hasattr(builder, "composite"):
        kind = "maxmin" if m.group_size == 2 else "groupsort"
        builder.composite(m, x0, x, start, kind, m.group_size)  # kept whole for global bounds (one activation)
    return x
