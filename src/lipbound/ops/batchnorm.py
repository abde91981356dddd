"""BatchNorm1d/2d in eval mode: ``y = gamma (x - mu) / sqrt(var + eps) + beta``, a per-channel affine map.

Lowered to :class:`~lipbound.ops.arith.Affine` with scale ``gamma / sqrt(var + eps)`` (rules exact).
Training-mode BatchNorm depends on the batch and is rejected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import InvalidModelError, ShapeMismatchError
from lipbound.ops.arith import Affine
from lipbound.ops.registry import REGISTRY


def batchnorm_node(builder, x, mean: Tensor, var: Tensor, weight, bias, eps: float):
    c = mean.shape[0]
    if not x.shape or x.shape[0] != c:
        raise ShapeMismatchError(f"batchnorm at {builder.origin!r} has {c} channels, input shape is {x.shape}")
    scale = (weight if weight is not None else torch.ones_like(mean)) / torch.sqrt(var + eps)
    shift = (bias if bias is not None else torch.zeros_like(mean)) - mean * scale
    view = (c,) + (1,) * (len(x.shape) - 1)
    op = Affine(scale.detach().reshape(view), shift.detach().reshape(view))
    # var + eps, sqrt and the division each round once: the exact scale is (1 + d) scale, |d| <= 4 u (global bounds)
    op.rel_error = 2 * float(torch.finfo(scale.dtype).eps)
    return builder.add(op, [x])


@REGISTRY.module(nn.BatchNorm1d, nn.BatchNorm2d, name="BatchNorm1d/2d (eval)")
def _from_module(builder, m, args, kwargs):
    if m.training:
        raise InvalidModelError(f"BatchNorm at {builder.origin!r} is in training mode; call model.eval()")
    if m.running_mean is None:
        raise InvalidModelError(f"BatchNorm at {builder.origin!r} has no running statistics")
    return batchnorm_node(builder, args[0], m.running_mean, m.running_var, m.weight, m.bias, m.eps)


@REGISTRY.function(F.batch_norm, name="BatchNorm1d/2d (eval)")
def _from_function(builder, module, args, kwargs):
    names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    a = dict(zip(names, args, strict=False))
    a.update(kwargs)
    if a.get("training", False):
        raise InvalidModelError(f"batch_norm at {builder.origin!r} is called with training=True")
    return batchnorm_node(
        builder,
        a["input"],
        a["running_mean"],
        a["running_var"],
        a.get("weight"),
        a.get("bias"),
        a.get("eps", 1e-5),
    )
