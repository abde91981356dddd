"""AvgPool2d, lowered to a depthwise convolution with weights ``1 / (k_h k_w)`` (rules of Conv2d, exact).

Supported when the average always divides by the full window: no padding, or ``count_include_pad=True``;
``ceil_mode`` only when it adds no partial window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.ops.conv import _pair, make_conv
from lipbound.ops.registry import REGISTRY


def avgpool_node(
    builder,
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    where = builder.origin
    if len(x.shape) != 3:
        raise ShapeMismatchError(f"avg_pool2d at {where!r} expects (C, H, W) per sample, got {x.shape}")
    k = _pair(kernel_size)
    s = _pair(stride if stride not in (None, []) else kernel_size)
    p = _pair(padding)
    if any(p) and not count_include_pad:
        raise UnsupportedOperatorError("AvgPool2d(count_include_pad=False) with padding", where)
    if ceil_mode:
        for i in range(2):
            n = x.shape[1 + i] + 2 * p[i] - k[i]
            if n % s[i]:
                raise UnsupportedOperatorError("AvgPool2d(ceil_mode=True) with a partial window", where)
    c = x.shape[0]
    div = divisor_override or k[0] * k[1]
    value = builder.value(x)
    w = torch.full((c, 1, *k), 1.0 / div, dtype=value.dtype, device=value.device)
    out = make_conv(builder, x, w, None, s, p, 1, c)
    if div & (div - 1):  # 1 / div is rounded unless div is a power of two: the exact map is (1 + d) times this one
        out.op.rel_error = float(torch.finfo(value.dtype).eps)
    return out


@REGISTRY.module(nn.AvgPool2d, name="AvgPool2d")
def _from_module(builder, m: nn.AvgPool2d, args, kwargs):
    return avgpool_node(
        builder,
        args[0],
        m.kernel_size,
        m.stride,
        m.padding,
        m.ceil_mode,
        m.count_include_pad,
        m.divisor_override,
    )


@REGISTRY.function(F.avg_pool2d, name="AvgPool2d")
def _from_function(builder, module, args, kwargs):
    names = [
        "input",
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
    ]
    a = dict(zip(names, args, strict=False))
    a.update(kwargs)
    x = a.pop("input")
    return avgpool_node(builder, x, **a)
