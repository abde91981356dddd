"""Per-sample normalization (LayerNorm, GroupNorm, InstanceNorm, RMSNorm) lowered to four primitive ops.

With the per-sample input reshaped (contiguously) to ``G`` groups of ``M`` elements, ``x -> (G, M)``:

    mu_g = (1/M) sum_m x_gm                     GroupMean      (linear, exact rules)
    c = x - B(mu)                               GroupBroadcast B: (G,) -> (G, M) (linear), then a WeightedSum
    v_g = (1/M) sum_m c_gm^2                    Square (elementwise), GroupMean      (biased variance, as torch)
    s_g = (v_g + eps)^(-1/2)                    Rsqrt (elementwise, on z > 0)
    y = c * B(s)                                Product (bilinear, two inputs)
    y <- gamma * y + beta                       Affine (the norm's elementwise affine, when present)

RMSNorm skips the centring (``v_g = mean(x^2)``). Relaxations (all sound on the whole input interval):

* Square ``z^2`` (convex): upper chord ``(l + u) z - l u``, lower tangent at the midpoint ``m``: ``2 m z - m^2``;
  interval ``[0 or min(l^2, u^2), max(l^2, u^2)]``; derivative ``2 z`` in ``[2 l, 2 u]``.
* Rsqrt ``z^(-1/2)`` (convex, decreasing on ``z > 0``): upper chord, lower tangent at the midpoint; interval
  ``[u^(-1/2), l^(-1/2)]``; derivative ``-z^(-3/2) / 2`` (increasing) in ``[d(l), d(u)]``. An interval reaching
  ``z <= 0`` (``eps = 0`` and a box containing a constant group) is refused: ``1/sqrt`` is unbounded there.
* Product ``a b`` (McCormick): ``a b >= l_b a + l_a b - l_a l_b`` and ``>= u_b a + u_a b - u_a u_b``;
  ``a b <= u_b a + l_a b - l_a u_b`` and ``<= l_b a + u_a b - u_a l_b``; the engine uses the average of each pair
  (a convex combination of valid planes is valid): slopes ``(l_b + u_b)/2`` on ``a`` and ``(l_a + u_a)/2`` on
  ``b``. Jacobian rule: ``g_a = b g``, ``g_b = a g`` (Products of a forward node and a backward node).

Square and Rsqrt get their Jacobian rule from :class:`~lipbound.engine.jacobian.GatedProduct` (``sigma'(z) g``
with the derivative range above). Per-sample norms are not globally Lipschitz in general (a near-constant group
makes ``1/sqrt(v + eps)`` as large as ``eps^(-1/2)``), so ``global_lipschitz`` refuses them; local bounds hold on
the given box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import InvalidModelError, ShapeMismatchError
from lipbound.ops.arith import Affine, WeightedSum
from lipbound.ops.base import Bounds, ElementwiseOp, LinearOp, chord_relaxation
from lipbound.ops.registry import REGISTRY

# ------------------------------------------------------------------------------------------ linear group maps


class GroupMean(LinearOp):
    """``(*in_shape) -> (G,)``: the mean of each of ``G`` contiguous groups of ``M`` elements."""

    name = "group_mean"

    def __init__(self, in_shape: tuple[int, ...], groups: int) -> None:
        self.in_shape, self.groups = tuple(in_shape), int(groups)
        self.size = math.prod(self.in_shape) // self.groups

    def apply(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.in_shape)]
        return x.reshape(*lead, self.groups, self.size).mean(-1)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        lead = y.shape[:-1]
        return ((y / self.size).unsqueeze(-1).expand(*lead, self.groups, self.size).reshape(*lead, *self.in_shape),)

    def abs(self) -> GroupMean:
        return self

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return self.size + 1

    def describe(self) -> str:
        return f"group_mean[{self.in_shape}->{self.groups}]"


class GroupBroadcast(LinearOp):
    """``(G,) -> (*out_shape)``: every element of group ``g`` (``M`` contiguous elements) gets ``s_g``."""

    name = "group_broadcast"

    def __init__(self, out_shape: tuple[int, ...], groups: int) -> None:
        self.out_shape, self.groups = tuple(out_shape), int(groups)
        self.size = math.prod(self.out_shape) // self.groups

    def apply(self, s: Tensor) -> Tensor:
        lead = s.shape[:-1]
        return s.unsqueeze(-1).expand(*lead, self.groups, self.size).reshape(*lead, *self.out_shape)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        lead = y.shape[: y.dim() - len(self.out_shape)]
        return (y.reshape(*lead, self.groups, self.size).sum(-1),)

    def abs(self) -> GroupBroadcast:
        return self

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return self.size + 1

    def describe(self) -> str:
        return f"group_broadcast[{self.groups}->{self.out_shape}]"


# ------------------------------------------------------------------------------------------ elementwise ops


class Square(ElementwiseOp):
    """``z^2`` (see the module docstring for its rules)."""

    name = "square"

    def forward(self, z: Tensor) -> Tensor:
        return z * z

    def interval(self, b: Bounds) -> Bounds:
        l, u = b
        hi = torch.maximum(l * l, u * u)
        lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(l), torch.minimum(l * l, u * u))
        return lo, hi

    def relax(self, l, u, alpha=None):
        m = (l + u) / 2
        return 2 * m, -m * m, l + u, -l * u

    def derivative_bounds(self, l, u):
        return 2 * l, 2 * u

    def derivative(self, z):
        return 2 * z


class Rsqrt(ElementwiseOp):
    """``z^(-1/2)`` on ``z > 0`` (see the module docstring); ``origin`` names the norm in error messages."""

    name = "rsqrt"

    def __init__(self, origin: str = "") -> None:
        self.origin = origin

    def _check(self, l: Tensor) -> None:
        if not bool((l > 0).all()):
            raise InvalidModelError(
                f"normalization at {self.origin!r}: the variance (+ eps) can reach {float(l.min()):.3g} <= 0 in the "
                "box, where 1/sqrt(variance + eps) is unbounded; use eps > 0 (torch's default is 1e-5)"
            )

    def forward(self, z: Tensor) -> Tensor:
        return torch.rsqrt(z)

    def interval(self, b: Bounds) -> Bounds:
        l, u = b
        self._check(l)
        return torch.rsqrt(u), torch.rsqrt(l)

    def relax(self, l, u, alpha=None):
        self._check(l)
        uw, ub = chord_relaxation(torch.rsqrt(l), torch.rsqrt(u), l, u)
        m = (l + u) / 2
        lw = self.derivative(m)
        return lw, torch.rsqrt(m) - lw * m, uw, ub

    def derivative_bounds(self, l, u):
        self._check(l)
        return self.derivative(l), self.derivative(u)

    def derivative(self, z):
        return -0.5 * torch.rsqrt(z) / z


class Product(ElementwiseOp):
    """``h = a * b`` of two same-shape tensors (McCormick; see the module docstring)."""

    name = "product"
    n_inputs = 2

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b

    def interval(self, ab: Bounds, bb: Bounds) -> Bounds:
        (la, ua), (lb, ub) = ab, bb
        p = torch.stack(torch.broadcast_tensors(la * lb, la * ub, ua * lb, ua * ub))
        return p.min(0).values, p.max(0).values

    def relax_inputs(self, bounds, alpha=None):
        (la, ua), (lb, ub) = bounds
        wa = (lb + ub) / 2
        wb = (la + ua) / 2
        wa, wb = torch.broadcast_tensors(wa, wb)
        low = -(la * lb + ua * ub) / 2
        high = -(la * ub + ua * lb) / 2
        return [wa, wb], low, [wa, wb], high

    def relax(self, l, u, alpha=None):  # pragma: no cover - two-input op: the engine calls relax_inputs
        raise TypeError("Product has two inputs; use relax_inputs")

    def jacobian(self, jb, node, g) -> list:
        a, b = node.inputs
        return [jb.add(Product(), [b, g], shape=node.shape), jb.add(Product(), [a, g], shape=node.shape)]

    def derivative_bounds(self, l, u):  # pragma: no cover - not an activation
        raise TypeError("Product has no scalar derivative; its Jacobian rule is bilinear")


# ------------------------------------------------------------------------------------------ lowering


def group_norm_node(builder, x, groups: int, eps: float, weight=None, bias=None, center: bool = True):
    """Normalize ``x`` per sample over ``groups`` contiguous groups, then the optional elementwise affine.

    ``weight`` / ``bias`` broadcast against the per-sample shape (GroupNorm: ``(C, 1, 1)``, LayerNorm: the
    normalized shape). ``center=False`` gives RMS normalization.
    """
    where = builder.origin
    shape = x.shape
    if groups < 1 or math.prod(shape) % groups:
        raise ShapeMismatchError(f"normalization at {where!r}: {groups} groups do not divide the input {shape}")
    if eps < 0:
        raise InvalidModelError(f"normalization at {where!r} has eps={eps} < 0")
    c = x
    if center:
        mean = builder.add(GroupMean(shape, groups), [x], name="norm_mean")
        spread = builder.add(GroupBroadcast(shape, groups), [mean], name="norm_mean_b")
        c = builder.add(WeightedSum([1.0, -1.0]), [x, spread], name="norm_center")
    sq = builder.add(Square(), [c], name="norm_square")
    var = builder.add(GroupMean(shape, groups), [sq], name="norm_var")
    dt = builder.value(var).dtype
    shifted = builder.add(Affine(torch.ones((), dtype=dt), torch.tensor(float(eps), dtype=dt)), [var], "norm_eps")
    inv = builder.add(Rsqrt(where), [shifted], name="norm_rsqrt")
    inv_b = builder.add(GroupBroadcast(shape, groups), [inv], name="norm_rsqrt_b")
    y = builder.add(Product(), [c, inv_b], name="norm_scale")
    if weight is not None or bias is not None:
        w = weight.detach().to(dt) if weight is not None else torch.ones((), dtype=dt)
        b = bias.detach().to(dt) if bias is not None else None
        y = builder.add(Affine(w, b), [y], name="norm_affine")
    return y


def _last_dims_groups(builder, x, normalized_shape) -> int:
    ns = tuple(int(s) for s in ((normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape))
    if tuple(x.shape[len(x.shape) - len(ns) :]) != ns:
        raise ShapeMismatchError(
            f"normalization at {builder.origin!r} over the last dims {ns}, but the input is {x.shape}"
        )
    return math.prod(x.shape[: len(x.shape) - len(ns)])


def _channel_affine(x, weight, bias):
    view = (x.shape[0],) + (1,) * (len(x.shape) - 1)
    return (
        None if weight is None else weight.detach().reshape(view),
        None if bias is None else bias.detach().reshape(view),
    )


@REGISTRY.module(nn.LayerNorm, name="LayerNorm")
def _layer_norm_module(builder, m: nn.LayerNorm, args, kwargs):
    x = args[0]
    return group_norm_node(
        builder, x, _last_dims_groups(builder, x, m.normalized_shape), m.eps, m.weight, getattr(m, "bias", None)
    )


@REGISTRY.function(F.layer_norm, name="LayerNorm")
def _layer_norm_function(builder, module, args, kwargs):
    a = dict(zip(["input", "normalized_shape", "weight", "bias", "eps"], args, strict=False))
    a.update(kwargs)
    x = a["input"]
    groups = _last_dims_groups(builder, x, a["normalized_shape"])
    return group_norm_node(builder, x, groups, a.get("eps", 1e-5), a.get("weight"), a.get("bias"))


@REGISTRY.module(nn.GroupNorm, name="GroupNorm")
def _group_norm_module(builder, m: nn.GroupNorm, args, kwargs):
    x = args[0]
    if not x.shape or x.shape[0] != m.num_channels:
        raise ShapeMismatchError(f"GroupNorm at {builder.origin!r} expects {m.num_channels} channels, got {x.shape}")
    w, b = _channel_affine(x, m.weight, m.bias)
    return group_norm_node(builder, x, m.num_groups, m.eps, w, b)


@REGISTRY.function(F.group_norm, name="GroupNorm")
def _group_norm_function(builder, module, args, kwargs):
    a = dict(zip(["input", "num_groups", "weight", "bias", "eps"], args, strict=False))
    a.update(kwargs)
    x = a["input"]
    w, b = _channel_affine(x, a.get("weight"), a.get("bias"))
    return group_norm_node(builder, x, int(a["num_groups"]), a.get("eps", 1e-5), w, b)


@REGISTRY.module(nn.InstanceNorm1d, nn.InstanceNorm2d, name="InstanceNorm1d/2d (no running stats)")
def _instance_norm_module(builder, m, args, kwargs):
    x = args[0]
    if m.track_running_stats and not m.training:
        from lipbound.ops.batchnorm import batchnorm_node  # eval with running stats: a per-channel affine map

        return batchnorm_node(builder, x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)
    if not x.shape or x.shape[0] != m.num_features:
        raise ShapeMismatchError(f"InstanceNorm at {builder.origin!r} expects {m.num_features} channels")
    w, b = _channel_affine(x, m.weight, m.bias)
    return group_norm_node(builder, x, x.shape[0], m.eps, w, b)


if hasattr(nn, "RMSNorm"):

    @REGISTRY.module(nn.RMSNorm, name="RMSNorm")
    def _rms_norm_module(builder, m, args, kwargs):
        x = args[0]
        eps = m.eps if m.eps is not None else torch.finfo(builder.value(x).dtype).eps
        groups = _last_dims_groups(builder, x, m.normalized_shape)
        return group_norm_node(builder, x, groups, eps, m.weight, None, center=False)
