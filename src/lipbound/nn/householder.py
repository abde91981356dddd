"""Householder activation: a learnable reflection on pairs of features (gradient-norm preserving).

For each pair ``z = (z_i, z_j)`` and a unit vector ``v = (cos theta, sin theta)`` (one learnable angle per pair)

    sigma_v(z) = z                     if v^T z > 0,
    sigma_v(z) = (I - 2 v v^T) z       otherwise,

equivalently ``sigma_v(z) = z + 2 v relu(-v^T z)``. Both pieces are orthogonal and agree on ``v^T z = 0``, so
``sigma_v`` is continuous, piecewise orthogonal and 1-Lipschitz in l2; it also satisfies
``(I - v v^T) sigma_v(z) = (I - v v^T) z``. With ``theta = -pi/4`` (the initial value) the reflection swaps the pair
and ``sigma_v`` equals MaxMin: ``(a, b) -> (max(a, b), min(a, b))``.

Pairs follow the grouping convention of :mod:`lipbound.nn.activations`: ``"consecutive"`` pairs ``(0, 1), (2, 3),
...``; ``"halves"`` pairs ``(i, i + C/2)``. Acts on dim 1 of ``(B, C)`` or ``(B, C, H, W)`` inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, ShapeMismatchError
from lipbound.nn.activations import GROUPINGS


class Householder(nn.Module):
    """``sigma_v`` on ``num_features / 2`` pairs, ``v_k = (cos theta_k, sin theta_k)`` (see module docstring)."""

    def __init__(self, num_features: int, grouping: str = "consecutive", theta: Tensor | float | None = None) -> None:
        super().__init__()
        if num_features < 2 or num_features % 2:
            raise InvalidInputError(f"Householder needs an even number of features >= 2, got {num_features}")
        if grouping not in GROUPINGS:
            raise InvalidInputError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.num_features, self.grouping = int(num_features), grouping
        init = torch.full((num_features // 2,), -math.pi / 4)
        if theta is not None:
            init = torch.as_tensor(theta, dtype=init.dtype).expand_as(init).clone()
        self.theta = nn.Parameter(init)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, grouping={self.grouping!r}"

    def pairs(self) -> tuple[Tensor, Tensor]:
        """Indices ``(i, j)`` of the pairs: pair ``k`` is ``(i[k], j[k])``, ``v_k`` acts on ``(z_i, z_j)``."""
        c = self.num_features
        k = torch.arange(c // 2)
        if self.grouping == "halves":
            return k, k + c // 2
        return 2 * k, 2 * k + 1

    def unit_vectors(self) -> tuple[Tensor, Tensor]:
        """``(cos theta, sin theta)``: the components of ``v_k`` on ``z_i`` and ``z_j``."""
        return torch.cos(self.theta), torch.sin(self.theta)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ShapeMismatchError(
                f"Householder({self.num_features}) expects features on dim 1, got input shape {tuple(x.shape)}"
            )
        c = self.num_features
        shape = x.shape
        if self.grouping == "halves":
            a, b = x[:, : c // 2], x[:, c // 2 :]
        else:
            y = x.reshape(shape[0], c // 2, 2, *shape[2:])
            a, b = y[:, :, 0], y[:, :, 1]
        v1, v2 = self.unit_vectors()
        view = (1, c // 2) + (1,) * (x.dim() - 2)
        v1, v2 = v1.to(x.dtype).reshape(view), v2.to(x.dtype).reshape(view)
        r = torch.relu(-(v1 * a + v2 * b))
        a, b = a + 2 * v1 * r, b + 2 * v2 * r
        if self.grouping == "halves":
            return torch.cat([a, b], dim=1)
        return torch.stack([a, b], dim=2).reshape(shape)
