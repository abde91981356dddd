"""MaxPool2d and Hardtanh / ReLU6 / clamp, lowered EXACTLY to linear maps and ReLUs (so every ReLU rule applies:
relaxations, Jacobian gates with their Clarke range, Branch and Bound splits, the kink-aware lower bound).

* ``max(a, b) = b + relu(a - b)``. A max-pool window of ``K`` entries is reduced by a tournament of ``log2 K``
  such rounds; the window entries are first gathered (:class:`Gather`, a 0/1 selection matrix) into a leading axis
  of length ``K' = 2^ceil(log2 K)``, padding the list with repeats of the window's first entry and replacing
  out-of-image (``-inf`` padded) positions by the nearest in-window pixel: repeats do not change a max.
* ``clamp(x, lo, hi) = lo + relu(x - lo) - relu(x - hi)`` (Hardtanh, ReLU6 = clamp to [0, 6]); one-sided clamps
  keep one ReLU: ``max(x, lo) = lo + relu(x - lo)``, ``min(x, hi) = hi - relu(hi - x)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.ops.arith import Affine, WeightedSum
from lipbound.ops.base import LinearOp
from lipbound.ops.conv import _pair
from lipbound.ops.registry import REGISTRY
from lipbound.ops.relu import ReLU


class Gather(LinearOp):
    """``y.flat[i] = x.flat[index[i]]`` (``0`` where ``index[i] == -1``): a 0/1 selection matrix; its adjoint
    scatters and adds."""

    name = "gather"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], index: Tensor) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        index = index.reshape(-1).long()
        if index.numel() != math.prod(self.out_shape):
            raise ShapeMismatchError(f"gather index has {index.numel()} entries for output {self.out_shape}")
        self.valid = index >= 0
        self.index = index.clamp(min=0)
        counts = torch.bincount(self.index[self.valid], minlength=math.prod(self.in_shape))
        self.fan_out = int(counts.max()) if counts.numel() else 1  # the adjoint's longest sum

    def apply(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.in_shape)]
        picked = x.reshape(*lead, -1).index_select(-1, self.index.to(x.device))
        if not bool(self.valid.all()):
            picked = picked * self.valid.to(device=x.device, dtype=x.dtype)
        return picked.reshape(*lead, *self.out_shape)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        lead = y.shape[: y.dim() - len(self.out_shape)]
        flat = y.reshape(*lead, -1)
        if not bool(self.valid.all()):
            flat = flat * self.valid.to(device=y.device, dtype=y.dtype)
        out = flat.new_zeros(*lead, math.prod(self.in_shape))
        out.index_add_(out.dim() - 1, self.index.to(y.device), flat)
        return (out.reshape(*lead, *self.in_shape),)

    def abs(self) -> Gather:
        return self

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return self.fan_out + 1

    def describe(self) -> str:
        return f"gather[{self.in_shape}->{self.out_shape}]"


def _max_of_two(builder, a, b):
    """``max(a, b) = b + relu(a - b)`` (exact)."""
    d = builder.add(WeightedSum([1.0, -1.0]), [a, b], name="max_diff")
    r = builder.add(ReLU(), [d], name="max_relu")
    return builder.add(WeightedSum([1.0, 1.0]), [b, r], name="max_out")


def _max_of_rows(builder, node, n: int, rest: tuple[int, ...]):
    """Max over the leading axis (length ``n``) of ``node`` (shape ``(n, *rest)``) by a pairwise tournament; an odd
    element is carried to the next round (no entry is ever compared with a copy of itself)."""
    m = math.prod(rest)
    while n > 1:
        half = n // 2
        shape = (n, *rest)
        a = builder.add(Gather(shape, (half, *rest), torch.arange(half * m)), [node], name="pool_a")
        b = builder.add(Gather(shape, (half, *rest), torch.arange(half * m) + half * m), [node], name="pool_b")
        best = _max_of_two(builder, a, b)
        if n % 2:  # [best; last] via two zero-filled gathers
            k = half + 1
            keep = torch.cat([torch.arange(half * m), torch.full((m,), -1)])
            last = torch.cat([torch.full((half * m,), -1), torch.arange(m) + 2 * half * m])
            g1 = builder.add(Gather((half, *rest), (k, *rest), keep), [best], name="pool_keep")
            g2 = builder.add(Gather(shape, (k, *rest), last), [node], name="pool_carry")
            best = builder.add(WeightedSum([1.0, 1.0]), [g1, g2], name="pool_join")
            half = k
        node, n = best, half
    return node


def _window_entries(size: int, k: int, s: int, p: int, ceil_mode: bool) -> tuple[list[list[int]], int]:
    """For each output position along one axis, the distinct in-image input coordinates of its window."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
        out -= 1
    return [[i for i in range(o * s - p, o * s - p + k) if 0 <= i < size] for o in range(out)], out


def maxpool_node(builder, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling as ReLU tournaments; windows are grouped by their number of in-image entries (interior, edges,
    corners), each group gets its own tournament, and the groups are scattered into the output."""
    where = builder.origin
    if return_indices:
        raise UnsupportedOperatorError("MaxPool2d(return_indices=True)", where)
    if len(x.shape) != 3:
        raise ShapeMismatchError(f"max_pool2d at {where!r} expects (C, H, W) per sample, got {x.shape}")
    k, p, dil = _pair(kernel_size), _pair(padding), _pair(dilation)
    s = _pair(stride if stride not in (None, []) else kernel_size)
    if dil != (1, 1):
        raise UnsupportedOperatorError("MaxPool2d with dilation > 1", where)
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise ShapeMismatchError(f"max_pool2d at {where!r}: padding {p} exceeds half the kernel {k}")
    c, h, w = x.shape
    rows, oh = _window_entries(h, k[0], s[0], p[0], ceil_mode)
    cols, ow = _window_entries(w, k[1], s[1], p[1], ceil_mode)
    groups: dict[int, list[tuple[int, int]]] = {}
    for a in range(oh):
        for b in range(ow):
            groups.setdefault(len(rows[a]) * len(cols[b]), []).append((a, b))
    chan = torch.arange(c).reshape(1, c, 1) * (h * w)
    parts = []
    for n, positions in sorted(groups.items()):
        flat = torch.tensor([[r * w + q for r in rows[a] for q in cols[b]] for a, b in positions]).T  # (n, P)
        idx = (chan + flat.unsqueeze(1)).reshape(-1)  # (n, C, P)
        pg = len(positions)
        node = builder.add(Gather(x.shape, (n, c, pg), idx), [x], name="pool_windows")
        best = _max_of_rows(builder, node, n, (c, pg))  # (1, C, P)
        where_out = torch.full((c, oh * ow), -1, dtype=torch.long)
        pos = torch.tensor([a * ow + b for a, b in positions])
        where_out[:, pos] = torch.arange(c * pg).reshape(c, pg)
        parts.append(builder.add(Gather((1, c, pg), (c, oh, ow), where_out), [best], name="pool_place"))
    if len(parts) == 1:
        return parts[0]
    return builder.add(WeightedSum([1.0] * len(parts)), parts, name="pool_out")


@REGISTRY.module(nn.MaxPool2d, name="MaxPool2d")
def _maxpool_module(builder, m: nn.MaxPool2d, args, kwargs):
    return maxpool_node(builder, args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)


@REGISTRY.function(F.max_pool2d, name="MaxPool2d")
def _maxpool_function(builder, module, args, kwargs):
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    a = dict(zip(names, args, strict=False))
    a.update(kwargs)
    x = a.pop("input")
    return maxpool_node(builder, x, **a)


# ------------------------------------------------------------------------------------------ clamp family


def _shift(builder, x, c: float, scale: float = 1.0, name: str = "shift"):
    dt = builder.value(x).dtype
    return builder.add(Affine(torch.tensor(scale, dtype=dt), torch.tensor(float(c), dtype=dt)), [x], name=name)


def clamp_node(builder, x, lo: float | None, hi: float | None):
    """``clamp(x, lo, hi)`` lowered to ReLUs (module docstring)."""
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None and not lo <= hi:
        raise ShapeMismatchError(f"clamp at {builder.origin!r} with min {lo} > max {hi}")
    if hi is None:  # lo + relu(x - lo)
        return _shift(builder, builder.add(ReLU(), [_shift(builder, x, -lo)], name="clamp_relu"), lo)
    if lo is None:  # hi - relu(hi - x)
        r = builder.add(ReLU(), [_shift(builder, x, hi, -1.0)], name="clamp_relu")
        return _shift(builder, r, hi, -1.0)
    r_lo = builder.add(ReLU(), [_shift(builder, x, -lo)], name="clamp_relu_lo")
    r_hi = builder.add(ReLU(), [_shift(builder, x, -hi)], name="clamp_relu_hi")
    return _shift(builder, builder.add(WeightedSum([1.0, -1.0]), [r_lo, r_hi], name="clamp_diff"), lo)


def _number(v, what: str, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise UnsupportedOperatorError(f"{what} with a tensor bound", where, hint="only scalar bounds")
        return float(v)
    return float(v)


@REGISTRY.module(nn.Hardtanh, nn.ReLU6, name="Hardtanh / ReLU6 / clamp")
def _hardtanh_module(builder, m, args, kwargs):
    return clamp_node(builder, args[0], float(m.min_val), float(m.max_val))


@REGISTRY.function(F.hardtanh, name="Hardtanh / ReLU6 / clamp")
def _hardtanh_function(builder, module, args, kwargs):
    a = dict(zip(["input", "min_val", "max_val"], args, strict=False))
    a.update(kwargs)
    return clamp_node(builder, a["input"], float(a.get("min_val", -1.0)), float(a.get("max_val", 1.0)))


@REGISTRY.function(F.relu6, name="Hardtanh / ReLU6 / clamp")
def _relu6_function(builder, module, args, kwargs):
    return clamp_node(builder, args[0] if args else kwargs["input"], 0.0, 6.0)


@REGISTRY.function(torch.clamp, torch.clip, name="Hardtanh / ReLU6 / clamp")
@REGISTRY.method("clamp", "clip", name="Hardtanh / ReLU6 / clamp")
def _clamp(builder, module, args, kwargs):
    a = dict(zip(["input", "min", "max"], args, strict=False))
    a.update(kwargs)
    where = builder.origin
    return clamp_node(builder, a["input"], _number(a.get("min"), "clamp", where), _number(a.get("max"), "clamp", where))
