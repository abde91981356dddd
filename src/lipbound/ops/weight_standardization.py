"""Lowering of the normalization layers of :mod:`lipbound.nn` whose per-sample map is affine.

* ``WSConv2d`` / ``WSLinear``: the convolution / linear layer with the standardized weight ``W_hat``
  (:meth:`standardized_weight`), exact; the raw weight is never bounded.
* ``PowerNorm`` in eval mode: the per-feature affine map ``gamma / sqrt(phi + eps) * x + beta`` (exact), preceded,
  with ``scaling_groups``, by GroupScaling = RMS normalization of each group of ``C/G`` consecutive features
  (:func:`~lipbound.ops.normalization.group_norm_node` with ``center=False``; relaxed).
* ``BatchChannelNorm2d`` in eval mode: the per-channel affine map of its estimated statistics
  (:func:`~lipbound.ops.batchnorm.batchnorm_node`, exact), then the group normalization with the per-group affine
  expanded to its channels (:func:`~lipbound.ops.normalization.group_norm_node`, relaxed).

Training mode of PowerNorm / BatchChannelNorm2d depends on the batch (and updates statistics): refused.
"""

from __future__ import annotations

import math

import torch

from lipbound.errors import InvalidModelError, ShapeMismatchError, UnsupportedOperatorError
from lipbound.nn.batch_channel_norm import BatchChannelNorm2d
from lipbound.nn.power_norm import PowerNorm
from lipbound.nn.weight_standardization import WSConv2d, WSLinear
from lipbound.ops.arith import Affine
from lipbound.ops.batchnorm import batchnorm_node
from lipbound.ops.conv import make_conv
from lipbound.ops.linear import _make as make_linear
from lipbound.ops.normalization import group_norm_node
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
    x = args[0]
    if not x.shape or x.shape[-1] != m.num_features:
        raise InvalidModelError(f"PowerNorm at {builder.origin!r} has {m.num_features} features, input {x.shape}")
    if m.scaling_groups is not None:  # per token and group: x / sqrt(mean(x^2) + eps)
        tokens = math.prod(x.shape[:-1])
        x = group_norm_node(builder, x, tokens * m.scaling_groups, m.eps, center=False)
    with torch.no_grad():
        scale = m.inference_scale()
    return builder.add(Affine(scale.detach(), m.bias.detach()), [x])


@REGISTRY.module(BatchChannelNorm2d, name="BatchChannelNorm2d (eval)")
def _batch_channel_norm(builder, m: BatchChannelNorm2d, args, kwargs):
    if m.training:
        raise InvalidModelError(f"BatchChannelNorm2d at {builder.origin!r} is in training mode; call model.eval()")
    x = args[0]
    if len(x.shape) != 3 or x.shape[0] != m.num_channels:
        raise ShapeMismatchError(
            f"BatchChannelNorm2d at {builder.origin!r} expects ({m.num_channels}, H, W) per sample, got {x.shape}"
        )
    xh = batchnorm_node(builder, x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)
    k = m.num_channels // m.num_groups
    w = m.group_weight.detach().repeat_interleave(k).reshape(-1, 1, 1)
    b = m.group_bias.detach().repeat_interleave(k).reshape(-1, 1, 1)
    return group_norm_node(builder, xh, m.num_groups, m.eps, w, b)
