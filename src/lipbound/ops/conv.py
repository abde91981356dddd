"""2-D convolution ``y = K * x + b`` with stride, zero padding, dilation and groups (``nn.Conv2d``, ``F.conv2d``).

Rules: exact. Interval via the convolution with ``|K|``; back-substitution and Jacobian via the transposed
convolution (``conv_transpose2d`` with the output padding that restores the input size).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.ops.base import LinearOp
from lipbound.ops.registry import REGISTRY


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv2dLayer(LinearOp):
    name = "conv2d"

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        in_shape: tuple[int, int, int],
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
    ) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach().reshape(-1, 1, 1)
        self.in_shape = tuple(in_shape)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = int(groups)
        _c, h, w = self.in_shape
        kh, kw = self.weight.shape[-2:]
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        self.out_shape = (self.weight.shape[0], oh, ow)
        # output padding so that the transposed convolution restores (h, w)
        self.output_padding = (
            h - ((oh - 1) * self.stride[0] - 2 * self.padding[0] + self.dilation[0] * (kh - 1) + 1),
            w - ((ow - 1) * self.stride[1] - 2 * self.padding[1] + self.dilation[1] * (kw - 1) + 1),
        )

    def apply(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        y = F.conv2d(
            x.reshape(-1, *self.in_shape),
            self.weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return y.reshape(*lead, *y.shape[1:])

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        lead = y.shape[:-3]
        x = F.conv_transpose2d(
            y.reshape(-1, *self.out_shape),
            self.weight,
            None,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )
        return (x.reshape(*lead, *self.in_shape),)

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        c_out, c_in_group, kh, kw = self.weight.shape
        return max(c_in_group, c_out) * kh * kw

    def abs(self) -> Conv2dLayer:
        return Conv2dLayer(
            self.weight.abs(), None, self.in_shape, self.stride, self.padding, self.dilation, self.groups
        )

    def describe(self) -> str:
        return f"conv2d[{self.in_shape}->{self.out_shape}]"


def _padding(padding, weight: Tensor, dilation, where: str) -> tuple[int, int]:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        d = _pair(dilation)
        tot = [d[i] * (weight.shape[2 + i] - 1) for i in range(2)]
        if any(t % 2 for t in tot):
            raise UnsupportedOperatorError("Conv2d(padding='same')", where, hint="asymmetric 'same' padding")
        return (tot[0] // 2, tot[1] // 2)
    return _pair(padding)


def make_conv(builder, x, weight, bias, stride=1, padding=0, dilation=1, groups=1):
    where = builder.origin
    if len(x.shape) != 3:
        raise ShapeMismatchError(f"conv2d at {where!r} expects a (C, H, W) input per sample, got {x.shape}")
    if x.shape[0] != weight.shape[1] * groups:
        raise ShapeMismatchError(
            f"conv2d at {where!r} expects {weight.shape[1] * groups} input channels, got {x.shape[0]}"
        )
    op = Conv2dLayer(weight, bias, x.shape, stride, _padding(padding, weight, dilation, where), dilation, groups)
    return builder.add(op, [x])


@REGISTRY.module(nn.Conv2d, name="Conv2d")
def _from_module(builder, m: nn.Conv2d, args, kwargs):
    if m.padding_mode != "zeros":
        raise UnsupportedOperatorError(
            f"Conv2d(padding_mode={m.padding_mode!r})", builder.origin, hint="only zero padding is supported"
        )
    return make_conv(builder, args[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


@REGISTRY.function(F.conv2d, name="Conv2d")
def _from_function(builder, module, args, kwargs):
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    a = dict(zip(names, args, strict=False))
    a.update(kwargs)
    return make_conv(
        builder,
        a["input"],
        a["weight"],
        a.get("bias"),
        a.get("stride", 1),
        a.get("padding", 0),
        a.get("dilation", 1),
        a.get("groups", 1),
    )
