"""Convex activations with an increasing derivative: Softplus and ELU (``alpha <= 1``).

Relaxation on ``[l, u]`` (valid for every convex ``sigma``): upper = the chord, lower = the tangent at
``t = l + alpha (u - l)`` (``alpha = 1/2`` by default, optimised with ``optimize=True``). Interval: ``[sigma(l),
sigma(u)]`` (both are increasing). Derivative range: ``[sigma'(l), sigma'(u)]`` (``sigma'`` is increasing), with
the Clarke interval at ELU's kink (``[alpha, 1]`` at 0) inside it.

* ``softplus_beta(z) = log(1 + exp(beta z)) / beta``, ``sigma' = sigmoid(beta z)``. torch switches to the identity
  where ``beta z > threshold`` (default 20): a value gap below ``2e-9 / beta``; the bounds are for the smooth
  function, and the derivative range ``<= 1`` covers the switched branch.
* ``elu(z) = z`` (z > 0), ``alpha (exp(z) - 1)`` (z <= 0); convex only for ``0 <= alpha <= 1`` (refused otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import UnsupportedOperatorError
from lipbound.ops.base import ElementwiseOp, chord_relaxation
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

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = float(beta)

    def forward(self, z):
        return F.softplus(z, beta=self.beta, threshold=1e9)

    def derivative(self, z):
        return torch.sigmoid(self.beta * z)


class ELU(_Convex):
    name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def forward(self, z):
        return F.elu(z, alpha=self.alpha)

    def derivative(self, z):
        return torch.where(z > 0, torch.ones_like(z), self.alpha * torch.exp(torch.clamp(z, max=0)))


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
    return builder.add(Softplus(m.beta), [args[0]])


@REGISTRY.function(F.softplus, name="Softplus")
def _softplus_function(builder, module, args, kwargs):
    a = dict(zip(["input", "beta", "threshold"], args, strict=False))
    a.update(kwargs)
    return builder.add(Softplus(float(a.get("beta", 1.0))), [a["input"]])


@REGISTRY.module(nn.ELU, name="ELU")
def _elu_module(builder, m, args, kwargs):
    return _elu(builder, args[0], float(m.alpha))


@REGISTRY.function(F.elu, name="ELU")
def _elu_function(builder, module, args, kwargs):
    a = dict(zip(["input", "alpha"], args, strict=False))
    a.update(kwargs)
    return _elu(builder, a["input"], float(a.get("alpha", 1.0)))
