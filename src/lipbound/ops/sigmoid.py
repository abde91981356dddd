"""Sigmoid: monotone, S-shaped; relaxation in :mod:`lipbound.ops._sshape`; ``s'(z) = s(z) (1 - s(z))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.ops._sshape import sshape_derivative_bounds, sshape_relax
from lipbound.ops.base import ElementwiseOp, Traits
from lipbound.ops.registry import REGISTRY


def _dsigmoid(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s)


class Sigmoid(ElementwiseOp):
    name = "sigmoid"

    def traits(self) -> Traits:
        return Traits(slope=(0.0, 0.25), smooth=True, global_kind="sigmoid")

    def forward(self, z):
        return torch.sigmoid(z)

    def interval(self, b):
        return torch.sigmoid(b[0]), torch.sigmoid(b[1])

    def relax(self, l, u, alpha=None):
        return sshape_relax(torch.sigmoid, _dsigmoid, l, u)

    def derivative_bounds(self, l, u):
        return sshape_derivative_bounds(_dsigmoid, l, u)

    def derivative(self, z):
        return _dsigmoid(z)


@REGISTRY.module(nn.Sigmoid, name="Sigmoid")
@REGISTRY.function(torch.sigmoid, F.sigmoid, name="Sigmoid")
@REGISTRY.method("sigmoid", name="Sigmoid")
def _convert(builder, module, args, kwargs):
    return builder.add(Sigmoid(), [args[0]])
