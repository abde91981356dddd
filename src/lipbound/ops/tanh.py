"""Tanh: monotone, S-shaped; relaxation in :mod:`lipbound.ops._sshape`; ``tanh'(z) = 1 - tanh(z)^2``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.ops._sshape import sshape_derivative_bounds, sshape_relax
from lipbound.ops.base import ElementwiseOp, Traits
from lipbound.ops.registry import REGISTRY


def _dtanh(z: Tensor) -> Tensor:
    return 1 - torch.tanh(z) ** 2


class Tanh(ElementwiseOp):
    name = "tanh"

    def traits(self) -> Traits:
        return Traits(slope=(0.0, 1.0), smooth=True, global_kind="tanh")

    def forward(self, z):
        return torch.tanh(z)

    def interval(self, b):
        return torch.tanh(b[0]), torch.tanh(b[1])

    def relax(self, l, u, alpha=None):
        return sshape_relax(torch.tanh, _dtanh, l, u)

    def derivative_bounds(self, l, u):
        return sshape_derivative_bounds(_dtanh, l, u)

    def derivative(self, z):
        return _dtanh(z)


@REGISTRY.module(nn.Tanh, name="Tanh")
@REGISTRY.function(torch.tanh, F.tanh, name="Tanh")
@REGISTRY.method("tanh", name="Tanh")
def _convert(builder, module, args, kwargs):
    return builder.add(Tanh(), [args[0]])
