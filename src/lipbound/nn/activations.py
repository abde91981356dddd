"""Gradient-norm-preserving activations with an explicit grouping convention.

Both act on the feature dimension (dim 1: ``(B, C)`` or ``(B, C, H, W)``).

Grouping conventions (``grouping=``):

* ``"consecutive"``: groups are consecutive features ``(0..g-1), (g..2g-1), ...``; for pairs ``(0,1), (2,3), ...``.
* ``"halves"`` (MaxMin only): pairs are ``(i, i + C/2)``; the max goes to the first half, the min to the second.

Within a group, GroupSort writes the values sorted in *descending* order back to the group's positions, so
``GroupSort(2, "consecutive")`` equals ``MaxMin("consecutive")``: ``(a, b) -> (max(a, b), min(a, b))``.
Both are 1-Lipschitz in l2 and permute their input (gradient-norm preserving).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipbound.errors import ShapeMismatchError

GROUPINGS = ("consecutive", "halves")


class GroupSort(nn.Module):
    """Sort each group of ``group_size`` consecutive features in descending order."""

    def __init__(self, group_size: int = 2, grouping: str = "consecutive") -> None:
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        if grouping == "halves" and group_size != 2:
            raise ValueError("grouping='halves' is defined for group_size=2 (MaxMin) only")
        self.group_size, self.grouping = int(group_size), grouping

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, grouping={self.grouping!r}"

    def forward(self, x: Tensor) -> Tensor:
        c, g = x.shape[1], self.group_size
        if c % g:
            raise ValueError("GroupSort/MaxMin: the number of features is not divisible by the group size")
        if self.grouping == "halves":
            a, b = x[:, : c // 2], x[:, c // 2 :]
            return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
        shape = x.shape
        y = x.reshape(shape[0], c // g, g, *shape[2:])
        y = torch.sort(y, dim=2, descending=True).values
        return y.reshape(shape)

    def pairs_schedule(self, c: int) -> list[list[tuple[int, int]]]:
        """Rounds of disjoint compare-exchange pairs ``(i, j)`` (max to ``i``, min to ``j``) that compute this layer
        on ``c`` features (odd-even transposition sort within each group: ``g`` rounds)."""
        g = self.group_size
        if c % g:
            raise ShapeMismatchError(f"{type(self).__name__}: {c} features are not divisible into groups of {g}")
        if self.grouping == "halves":
            return [[(i, i + c // 2) for i in range(c // 2)]]
        if g == 1:
            return []
        rounds = []
        for r in range(g if g > 2 else 1):
            pairs = [(s + k, s + k + 1) for s in range(0, c, g) for k in range(r % 2, g - 1, 2)]
            if pairs:
                rounds.append(pairs)
        return rounds


class MaxMin(GroupSort):
    """Pairwise ``(a, b) -> (max(a, b), min(a, b))`` (GroupSort with groups of 2)."""

    def __init__(self, grouping: str = "consecutive") -> None:
        super().__init__(2, grouping)

    def extra_repr(self) -> str:
        return f"grouping={self.grouping!r}"
