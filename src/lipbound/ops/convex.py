"""Convex activations with an increasing derivative: Softplus and ELU (``alpha <= 1``).

Relaxation on ``[l, u]`` (valid for every convex ``sigma``): upper = the chord, lower = the tangent at
``t = l + alpha (u - l)`` (``alpha = 1/2`` by default, optimised with ``optimize=True``). Interval: ``[sigma(l),
sigma(u)]`` (both are increasing). Derivative range: ``[sigma'(l), sigma'(u)]`` (``sigma'`` is increasing), with
the Clarke interval at ELU's kink (``[alpha, 1]`` at 0) inside it.

* ``softplus_beta(z) = log(1 + exp(beta z)) / beta``, ``sigma' = sigmoid(beta z)``. torch computes the switched
  function ``s(z) = z`` where ``beta z > threshold`` (default 20) and the op does too, so forward values and
  Jacobians match the model. ``s`` is not convex at the switch: it drops below the smooth function by at most
  ``g = log(1 + exp(-threshold)) / beta <= exp(-threshold) / beta``. The relaxation is that of the smooth
  function with the lower plane and the interval's lower end moved down by ``g`` when ``beta u > threshold``;
  the derivative range's upper end is 1 there (the switched branch's slope).
* ``elu(z) = z`` (z > 0), ``alpha (exp(z) - 1)`` (z <= 0); convex only for ``0 <= alpha <= 1`` (refused otherwise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import UnsupportedOperatorError
from lipbound.ops.base import ElementwiseOp, Traits, chord_relaxation
from lipbound.ops.registry import REGISTRY


class _Convex(ElementwiseOp):
    has_alpha = True

    def default_alpha(self, l: Tensor, u: Tensor) -> Tensor:
        return torch.full_like(l, 0.5)

    def interval(self, b):
        return self.forward(b[0]), self.forward(b[1])

    def relax(self, l, u, alpha=None):
        uw, ub = chord_relaxation(self.forward(l), self.forward(u), l, u)
        a = self.default_alpha(l, u) if alpha is None else alpha
        t = l + a * (u - l)
        lw = self.derivative(t)
        return lw, self.forward(t) - lw * t, uw, ub

    def derivative_bounds(self, l, u):
        return self.derivative(l), self.derivative(u)


class Softplus(_Convex):
    name = "softplus"

    def traits(self) -> Traits:
        # torch switches to the identity above ``threshold``: the value jumps by up to ``gap`` there, so difference
        # quotients across the switch are unbounded (no slope restriction, not smooth); the relaxations absorb it
        return Traits()

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta, self.threshold = float(beta), float(threshold)
        # the switched branch's largest drop below the smooth function, widened against rounding
        self.gap = math.log1p(math.exp(-self.threshold)) / self.beta * (1 + 1e-6) + 1e-300

    def smooth(self, z: Tensor) -> Tensor:
        """``log(1 + exp(beta z)) / beta`` without the switch, written ``relu(z) + log1p(exp(-beta |z|)) / beta``
        so it never overflows."""
        return torch.relu(z) + torch.log1p(torch.exp(-self.beta * z.abs())) / self.beta

    def forward(self, z):
        return F.softplus(z, beta=self.beta, threshold=self.threshold)

    def _switched(self, u: Tensor) -> Tensor:
        return self.beta * u > self.threshold

    def interval(self, b):
        l, u = b
        return self.smooth(l) - self.gap * self._switched(u).to(l.dtype), self.smooth(u)

    def relax(self, l, u, alpha=None):
        uw, ub = chord_relaxation(self.smooth(l), self.smooth(u), l, u)
        a = self.default_alpha(l, u) if alpha is None else alpha
        t = l + a * (u - l)
        lw = torch.sigmoid(self.beta * t)
        lb = self.smooth(t) - lw * t - self.gap * self._switched(u).to(l.dtype)
        return lw, lb, uw, ub

    def derivative(self, z):
        return torch.where(self.beta * z > self.threshold, torch.ones_like(z), torch.sigmoid(self.beta * z))

    def derivative_bounds(self, l, u):
        return torch.sigmoid(self.beta * l), torch.where(
            self._switched(u), torch.ones_like(u), torch.sigmoid(self.beta * u)
        )


class ELU(_Convex):
    name = "elu"

    def traits(self) -> Traits:
        # alpha in [0, 1] (the converter refuses others); alpha = 0 is exactly ReLU
        if self.alpha == 0.0:
            return Traits(kink_at_zero=True, slope=(0.0, 1.0), pieces=(0.0, 1.0), homogeneous=True)
        return Traits(slope=(0.0, 1.0), smooth=self.alpha == 1.0)

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def forward(self, z):
        return F.elu(z, alpha=self.alpha)

    def derivative(self, z):
        return torch.where(z > 0, torch.ones_like(z), self.alpha * torch.exp(torch.clamp(z, max=0)))

    def derivative_bounds(self, l, u):
        # the Clarke derivative at the kink z = 0 is [alpha, 1]: an interval touching 0 gets both ends
        one = torch.ones_like(l)
        return torch.where(l > 0, one, self.derivative(l)), torch.where(u >= 0, one, self.derivative(u))


def _elu(builder, x, alpha: float):
    if not 0 <= alpha <= 1:
        raise UnsupportedOperatorError(
            f"ELU(alpha={alpha})", builder.origin, hint="only 0 <= alpha <= 1 (convex) is supported"
        )
    return builder.add(ELU(alpha), [x])


@REGISTRY.module(nn.Softplus, name="Softplus")
def _softplus_module(builder, m, args, kwargs):
    if m.beta <= 0:
        raise UnsupportedOperatorError(f"Softplus(beta={m.beta})", builder.origin, hint="beta must be > 0")
    return builder.add(Softplus(m.beta, m.threshold), [args[0]])


@REGISTRY.function(F.softplus, name="Softplus")
def _softplus_function(builder, module, args, kwargs):
    a = dict(zip(["input", "beta", "threshold"], args, strict=False))
    a.update(kwargs)
    beta = float(a.get("beta", 1.0))
    if beta <= 0:
        raise UnsupportedOperatorError(f"softplus(beta={beta})", builder.origin, hint="beta must be > 0")
    return builder.add(Softplus(beta, float(a.get("threshold", 20.0))), [a["input"]])


@REGISTRY.module(nn.ELU, name="ELU")
def _elu_module(builder, m, args, kwargs):
    return _elu(builder, args[0], float(m.alpha))


@REGISTRY.function(F.elu, name="ELU")
def _elu_function(builder, module, args, kwargs):
    a = dict(zip(["input", "alpha"], args, strict=False))
    a.update(kwargs)
    return _elu(builder, a["input"], float(a.get("alpha", 1.0)))
