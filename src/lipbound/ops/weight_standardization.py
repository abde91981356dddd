"""Lowering of the normalization layers of :mod:`lipbound.nn` whose per-sample map is affine.

* ``WSConv2d`` / ``WSLinear``: the convolution / linear layer with the standardized weight ``W_hat``
  (:meth:`standardized_weight`), exact; the raw weight is never bounded.
* ``PowerNorm`` in eval mode: the per-feature affine map ``gamma / sqrt(phi + eps) * x + beta`` (exact). Training
  mode depends on the batch and is refused; GroupScaling (``scaling_groups``) is nonlinear and is refused here.
"""

from __future__ import annotations

import torch

from lipbound.errors import InvalidModelError, UnsupportedOperatorError
from lipbound.nn.power_norm import PowerNorm
from lipbound.nn.weight_standardization import WSConv2d, WSLinear
from lipbound.ops.arith import Affine
from lipbound.ops.conv import make_conv
from lipbound.ops.linear import _make as make_linear
from lipbound.ops.registry import REGISTRY


@REGISTRY.module(WSConv2d, name="WSConv2d")
def _ws_conv(builder, m: WSConv2d, args, kwargs):
    if m.padding_mode != "zeros":
        raise UnsupportedOperatorError(
            f"WSConv2d(padding_mode={m.padding_mode!r})", builder.origin, hint="only zero padding is supported"
        )
    with torch.no_grad():
        w_hat = m.standardized_weight()
    return make_conv(builder, args[0], w_hat, m.bias, m.stride, m.padding, m.dilation, m.groups)


@REGISTRY.module(WSLinear, name="WSLinear")
def _ws_linear(builder, m: WSLinear, args, kwargs):
    with torch.no_grad():
        w_hat = m.standardized_weight()
    return make_linear(builder, args[0], w_hat, m.bias)


@REGISTRY.module(PowerNorm, name="PowerNorm (eval)")
def _power_norm(builder, m: PowerNorm, args, kwargs):
    if m.training:
        raise InvalidModelError(f"PowerNorm at {builder.origin!r} is in training mode; call model.eval()")
    if len(args) > 1 or kwargs.get("mask") is not None:
        raise UnsupportedOperatorError(
            "PowerNorm(x, mask)", builder.origin, hint="a padding mask is not a per-sample map"
        )
    if m.scaling_groups is not None:
        raise UnsupportedOperatorError(
            "PowerNorm(scaling_groups=...)", builder.origin, hint="GroupScaling is not lowered yet"
        )
    x = args[0]
    if not x.shape or x.shape[-1] != m.num_features:
        raise InvalidModelError(f"PowerNorm at {builder.origin!r} has {m.num_features} features, input {x.shape}")
    with torch.no_grad():
        scale = m.inference_scale()
    return builder.add(Affine(scale.detach(), m.bias.detach()), [x])
