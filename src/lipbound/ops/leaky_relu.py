"""LeakyReLU ``sigma(z) = z`` for ``z >= 0``, ``a z`` otherwise.

For ``a <= 1`` sigma is convex: upper chord, lower slope ``a + (1 - a) alpha`` through the origin.
For ``a > 1`` it is concave: the mirror image (lower chord, upper slope through the origin).
Clarke derivative range: ``{1}`` if ``l > 0``, ``{a}`` if ``u < 0``, else ``[min(a,1), max(a,1)]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.ops.base import ElementwiseOp, Traits, chord_relaxation
from lipbound.ops.registry import REGISTRY


class LeakyReLU(ElementwiseOp):
    name = "leaky_relu"
    has_alpha = True

    def traits(self) -> Traits:
        return Traits(
            kink_at_zero=True,
            slope=(min(self.a, 1.0), max(self.a, 1.0)),
            pieces=(self.a, 1.0),
            homogeneous=True,
            global_kind="leaky_relu",
        )

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.a = float(negative_slope)

    def forward(self, z: Tensor) -> Tensor:
        return F.leaky_relu(z, self.a)

    def interval(self, b):
        l, u = b
        fl, fu = self.forward(l), self.forward(u)
        lo, hi = torch.minimum(fl, fu), torch.maximum(fl, fu)
        if self.a < 0:  # not monotone: minimum 0 at z = 0
            lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(lo), lo)
        return lo, hi

    def default_alpha(self, l, u):
        return (u >= -l).to(l.dtype)

    def relax(self, l, u, alpha=None):
        a = self.a
        active, inactive = l >= 0, u <= 0
        unstable = ~(active | inactive)
        cw, cb = chord_relaxation(self.forward(l), self.forward(u), l, u)
        al = self.default_alpha(l, u) if alpha is None else alpha
        tangent = a + (1 - a) * al  # slope through the origin, between a and 1
        fixed = torch.where(active, torch.ones_like(l), torch.full_like(l, a))
        zero = torch.zeros_like(l)
        if a <= 1:  # convex
            lw, lb = torch.where(unstable, tangent, fixed), zero
            uw, ub = torch.where(unstable, cw, fixed), torch.where(unstable, cb, zero)
        else:  # concave
            uw, ub = torch.where(unstable, tangent, fixed), zero
            lw, lb = torch.where(unstable, cw, fixed), torch.where(unstable, cb, zero)
        return lw, lb, uw, ub

    def derivative_bounds(self, l, u):
        lo, hi = min(self.a, 1.0), max(self.a, 1.0)
        dl = torch.where(
            l > 0, torch.ones_like(l), torch.where(u < 0, torch.full_like(l, self.a), torch.full_like(l, lo))
        )
        du = torch.where(
            l > 0, torch.ones_like(l), torch.where(u < 0, torch.full_like(l, self.a), torch.full_like(l, hi))
        )
        return dl, du

    def derivative(self, z):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.a))

    def describe(self) -> str:
        return f"leaky_relu[{self.a:g}]"


@REGISTRY.module(nn.LeakyReLU, name="LeakyReLU")
def _from_module(builder, m: nn.LeakyReLU, args, kwargs):
    return builder.add(LeakyReLU(m.negative_slope), [args[0]])


@REGISTRY.function(F.leaky_relu, name="LeakyReLU")
def _from_function(builder, module, args, kwargs):
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return builder.add(LeakyReLU(slope), [args[0]])
