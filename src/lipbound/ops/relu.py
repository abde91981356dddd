"""ReLU ``sigma(z) = max(z, 0)``.

* interval: ``[relu(l), relu(u)]``
* relaxation on an unstable ``[l, u]`` (``l < 0 < u``): upper chord ``u (z - l) / (u - l)``, lower ``alpha z`` with
  ``alpha in [0, 1]`` (CROWN heuristic: ``alpha = 1`` iff ``u >= -l``; optimised with ``optimize=True``).
* Clarke derivative range: ``{1}`` if ``l > 0``, ``{0}`` if ``u < 0``, else ``[0, 1]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.ops.base import ElementwiseOp, Traits
from lipbound.ops.registry import REGISTRY


class ReLU(ElementwiseOp):
    name = "relu"
    has_alpha = True

    def traits(self) -> Traits:
        return Traits(kink_at_zero=True, slope=(0.0, 1.0), pieces=(0.0, 1.0), homogeneous=True, global_kind="relu")

    def forward(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def interval(self, b):
        l, u = b
        return torch.relu(l), torch.relu(u)

    def default_alpha(self, l: Tensor, u: Tensor) -> Tensor:
        return (u >= -l).to(l.dtype)

    def relax(self, l, u, alpha=None):
        active, inactive = l >= 0, u <= 0
        unstable = ~(active | inactive)
        width = torch.where(unstable, u - l, torch.ones_like(l))
        uw = torch.where(active, torch.ones_like(l), torch.where(unstable, u / width, torch.zeros_like(l)))
        ub = torch.where(unstable, -l * u / width, torch.zeros_like(l))
        a = self.default_alpha(l, u) if alpha is None else alpha
        lw = torch.where(active, torch.ones_like(l), torch.where(unstable, a, torch.zeros_like(l)))
        return lw, torch.zeros_like(l), uw, ub

    def derivative_bounds(self, l, u):
        return (l > 0).to(l.dtype), (u >= 0).to(l.dtype)

    def derivative(self, z):
        return (z > 0).to(z.dtype)


@REGISTRY.module(nn.ReLU, name="ReLU")
@REGISTRY.function(torch.relu, F.relu, name="ReLU")
@REGISTRY.method("relu", name="ReLU")
def _convert(builder, module, args, kwargs):
    return builder.add(ReLU(), [args[0]])
