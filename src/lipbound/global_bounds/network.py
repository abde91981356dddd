"""Layered form of a network for global Lipschitz bounds.

A feed-forward network is brought to the form

    h_0 = x,    h_{k+1} = s_k(W_k h_k + b_k)            (plain block)
                h_{k+1} = h_k + s_k(W_k h_k + b_k)      (residual block, ``residual[k]``; W_k square)
    f(x) = W_L h_L + b_L

with dense float64 matrices ``W_k`` (``(out_k, in_k)``, feature maps flattened in C-order). Consecutive affine
operations (Linear, Conv2d, Flatten/reshape, eval BatchNorm, AvgPool2d, Dropout/Identity, scaling by constants)
are composed into one matrix: an affine segment ``g`` starting at state ``s`` (dimension ``n``) is evaluated on the
``n + 1`` points ``0, e_1, ..., e_n``, so ``b = g(0)`` and column ``i`` of ``W`` is ``g(e_i) - g(0)`` (exact in
float64 up to rounding). Biases never enter a global Lipschitz bound, but they are kept so that
:meth:`LayeredNetwork.forward` can be checked against the model.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import (
    InvalidInputError,
    InvalidModelError,
    LipboundError,
    ShapeMismatchError,
    UnsupportedOperatorError,
)
from lipbound.nn.activations import GroupSort
from lipbound.nn.householder import Householder

KINDS = ("relu", "leaky_relu", "tanh", "sigmoid", "maxmin", "groupsort", "householder", "identity")
SLOPE_RESTRICTED = ("relu", "leaky_relu", "tanh", "sigmoid", "identity")
SUPPORTED = [
    "Linear",
    "Conv2d",
    "Flatten / reshape / view",
    "BatchNorm1d/2d (eval)",
    "AvgPool2d",
    "Dropout / Identity",
    "scaling / adding constants",
    "ReLU",
    "LeakyReLU",
    "Tanh",
    "Sigmoid",
    "lipbound.nn.MaxMin",
    "lipbound.nn.GroupSort",
    "lipbound.nn.Householder",
    "residual x + act(W x + b)",
]
MAX_DENSE = 200_000_000  # entries of one dense weight matrix


def _refuse_dense(rows: int, cols: int, dtype: torch.dtype, where: str) -> None:
    """Refuse, before allocating it, a dense (rows x cols) matrix above :data:`MAX_DENSE` entries.

    The layered form expands each affine segment into a dense matrix (the image of the identity); on large convs
    that needs rows * cols * itemsize bytes, estimated here first so the caller gets an error instead of an
    out-of-memory kill.
    """
    entries = rows * cols
    if entries > MAX_DENSE:
        nbytes = entries * torch.empty((), dtype=dtype).element_size()
        raise InvalidModelError(
            f"global bounds at {where!r} would expand an affine segment into a dense {rows} x {cols} matrix "
            f"({nbytes / 2**30:.1f} GiB, limit {MAX_DENSE} entries); use a smaller input size or the local engine"
        )


@dataclass
class Activation:
    """An activation between two affine maps.

    ``slope = (alpha, beta)``: for slope-restricted kinds, ``alpha <= (s(a) - s(b)) / (a - b) <= beta`` entrywise
    (ReLU, tanh: (0, 1); sigmoid: (0, 1/4); LeakyReLU(a): (min(a, 1), max(a, 1))). ``None`` for GroupSort, MaxMin
    and Householder, which are 1-Lipschitz in l2 but not slope-restricted. ``shape`` is the per-sample shape the
    activation acts on (channel grouping of feature maps uses it).
    """

    kind: str
    slope: tuple[float, float] | None
    group_size: int = 1
    grouping: str = "consecutive"
    module: nn.Module | None = None
    shape: tuple[int, ...] | None = None

    @property
    def slope_restricted(self) -> bool:
        return self.slope is not None


@dataclass
class LayeredNetwork:
    """``f(x) = W_L s(W_{L-1} ... s(W_0 x + b_0) ...) + b_L`` with optional residual blocks (see module doc)."""

    weights: list[Tensor]
    activations: list[Activation]
    residual: list[bool]
    convs: list[object | None]
    input_shape: tuple[int, ...]
    biases: list[Tensor] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """Number of activation layers ``L``."""
        return len(self.activations)

    @property
    def dims(self) -> list[int]:
        """``[n_0, n_1, ..., n_L, n_out]``: input, hidden state and output dimensions."""
        return [int(self.weights[0].shape[1])] + [int(w.shape[0]) for w in self.weights]

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate on a batch ``x`` of shape ``(B, *input_shape)`` (or ``(B, n_0)``); returns ``(B, n_out)``."""
        h = x.reshape(x.shape[0], -1).to(torch.float64)
        for k, w in enumerate(self.weights):
            z = h @ w.T
            if k < len(self.biases) and self.biases[k] is not None:
                z = z + self.biases[k]
            if k == len(self.activations):
                return z
            y = apply_activation(self.activations[k], z)
            h = h + y if self.residual[k] else y
        return h  # pragma: no cover - weights always has one more entry than activations


def apply_activation(act: Activation, z: Tensor) -> Tensor:
    """Apply ``act`` to flat features ``z`` of shape ``(B, n)``."""
    if act.kind in ("relu", "leaky_relu", "tanh", "sigmoid", "identity"):
        fn = {
            "relu": torch.relu,
            "tanh": torch.tanh,
            "sigmoid": torch.sigmoid,
            "identity": lambda t: t,
            "leaky_relu": lambda t: F.leaky_relu(t, act.slope[0] if act.slope[1] == 1.0 else act.slope[1]),
        }[act.kind]
        return fn(z)
    shape = act.shape or (z.shape[1],)
    return act.module(z.reshape(z.shape[0], *shape)).reshape(z.shape[0], -1)


def group_index(act: Activation) -> Tensor:
    """Group id of every flat feature for GroupSort/MaxMin (features of one group are permuted among themselves).

    Grouping acts on the channel dimension (dim 0 of ``act.shape``) at each spatial position: "consecutive" groups
    channels ``(0..g-1), (g..2g-1), ...``; "halves" pairs channel ``i`` with ``i + C/2``.
    """
    shape = act.shape
    c, rest = shape[0], math.prod(shape[1:])
    ch = torch.arange(c)
    gid = ch % (c // 2) if act.grouping == "halves" else ch // act.group_size
    spatial = torch.arange(rest)
    return (gid[:, None] * rest + spatial[None, :]).reshape(-1)


# --------------------------------------------------------------------------------------------------- extraction


def _activation_of_module(m: nn.Module) -> Activation | None:
    if isinstance(m, Householder):
        return Activation("householder", None, 2, getattr(m, "grouping", "consecutive"), module=m)
    if isinstance(m, GroupSort):
        if m.group_size == 1:
            return Activation("identity", (1.0, 1.0))
        kind = "maxmin" if m.group_size == 2 else "groupsort"
        return Activation(kind, None, m.group_size, m.grouping, module=m)
    if isinstance(m, nn.ReLU):
        return Activation("relu", (0.0, 1.0))
    if isinstance(m, nn.LeakyReLU):
        a = float(m.negative_slope)
        return Activation("leaky_relu", (min(a, 1.0), max(a, 1.0)))
    if isinstance(m, nn.Tanh):
        return Activation("tanh", (0.0, 1.0))
    if isinstance(m, nn.Sigmoid):
        return Activation("sigmoid", (0.0, 0.25))
    return None


_AFFINE_MODULES = (
    nn.Linear,
    nn.Conv2d,
    nn.Flatten,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
)
_AFFINE_FUNCTIONS = {
    F.linear,
    F.conv2d,
    F.avg_pool2d,
    torch.flatten,
    torch.reshape,
    operator.neg,
    torch.neg,
}
_AFFINE_METHODS = {"view", "reshape", "flatten", "contiguous", "neg"}
_ADD = {operator.add, operator.iadd, torch.add, "add"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", operator.truediv, torch.div, "div"}
_ACT_FUNCTIONS = {
    torch.relu: ("relu", (0.0, 1.0)),
    F.relu: ("relu", (0.0, 1.0)),
    "relu": ("relu", (0.0, 1.0)),
    torch.tanh: ("tanh", (0.0, 1.0)),
    F.tanh: ("tanh", (0.0, 1.0)),
    "tanh": ("tanh", (0.0, 1.0)),
    torch.sigmoid: ("sigmoid", (0.0, 0.25)),
    F.sigmoid: ("sigmoid", (0.0, 0.25)),
    "sigmoid": ("sigmoid", (0.0, 0.25)),
}


@dataclass
class _Val:
    """A value affine in the state of segment ``seg``: ``V[0]`` is its value at state 0, ``V[1 + i]`` at ``e_i``."""

    seg: int
    V: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.V.shape[1:])

    def is_state(self) -> bool:
        """True if this value is exactly the segment's state (identity map, no offset)."""
        flat = self.V.reshape(self.V.shape[0], -1)
        n = flat.shape[0] - 1
        if flat.shape[1] != n:
            return False
        eye = torch.eye(n, dtype=flat.dtype, device=flat.device)
        return bool((flat[0] == 0).all() and (flat[1:] == eye).all())


class _Extractor:
    """Interpreter that turns a sequence of affine ops and activations into a :class:`LayeredNetwork`."""

    def __init__(self, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype
        self.input_shape = tuple(input_shape)
        self.weights: list[Tensor] = []
        self.biases: list[Tensor] = []
        self.acts: list[Activation] = []
        self.residual: list[bool] = []
        self.convs: list[object | None] = []
        self.origins: list[str] = []
        self.live = 0  # id of the segment values may be computed in
        self.next_seg = 1
        self.seg_prev: dict[int, int] = {}  # segment -> segment whose activation produced it
        self.seg_act: dict[int, int] = {}  # segment -> index of that activation
        self.seg_ops: dict[int, list[Any]] = {0: []}  # affine ops applied in a segment (for ``convs``)

    def state(self, shape: tuple[int, ...], where: str = "input") -> _Val:
        n = math.prod(shape)
        _refuse_dense(n + 1, n, self.dtype, where)
        V = torch.cat([torch.zeros(1, n, dtype=self.dtype), torch.eye(n, dtype=self.dtype)]).reshape(n + 1, *shape)
        return _Val(self.live, V)

    def materialize(self, v: Any, where: str) -> Any:
        """Make ``v`` a hidden state (identity activation) so that it can start a residual block."""
        if not isinstance(v, _Val) or v.is_state():
            return v
        return self.activation(Activation("identity", (1.0, 1.0)), v, where)

    def _check_live(self, v: _Val, what: str, where: str) -> None:
        if v.seg != self.live:
            raise UnsupportedOperatorError(
                what,
                where,
                SUPPORTED,
                hint="a value from before an activation is reused (only residual blocks x + act(W x + b) are allowed)",
            )

    def affine(self, fn: Any, vals: list[_Val], where: str, what: str, op: Any = None) -> _Val:
        """Apply an affine op ``fn`` to tracked values of the live segment (constants are closed over by ``fn``)."""
        for v in vals:
            self._check_live(v, what, where)
        try:  # one row: the output shape, before the full dense image is built
            probe = fn(*(v.V[:1] for v in vals))
        except RuntimeError:  # the op closes over the full row count (e.g. h.view(h.size(0), -1)): no pre-check
            probe = None
        if isinstance(probe, Tensor) and probe.dim() >= 1:
            _refuse_dense(vals[0].V.shape[0], probe[0].numel(), self.dtype, where)
        out = fn(*(v.V for v in vals))
        if not isinstance(out, Tensor) or out.shape[0] != vals[0].V.shape[0]:
            raise UnsupportedOperatorError(what, where, SUPPORTED, hint="op changes the batch dimension")
        self.seg_ops[self.live].append(op if op is not None else what)
        return _Val(self.live, out)

    def add(self, a: _Val, b: _Val, where: str, kb: float = 1.0) -> _Val:
        if a.seg == b.seg == self.live:
            return self.affine(lambda x, y: x + kb * y, [a, b], where, "add")
        if kb == 1.0 and a.seg == self.live and b.seg != self.live:
            a, b = b, a
        if kb == 1.0 and b.seg == self.live and self.seg_prev.get(b.seg) == a.seg:
            k = self.seg_act[b.seg]
            if a.is_state() and b.is_state() and not self.residual[k] and not self.seg_ops[b.seg]:
                self.residual[k] = True
                new = self.next_seg
                self.next_seg += 1
                self.seg_prev[new], self.seg_act[new] = self.seg_prev[b.seg], k
                self.seg_ops[new] = []
                self.live = new
                return self.state(b.shape)
        raise UnsupportedOperatorError(
            "add across an activation",
            where,
            SUPPORTED,
            hint="only residual blocks x + act(W x + b) with the block input added unchanged are supported",
        )

    def activation(self, act: Activation, z: _Val, where: str) -> _Val:
        self._check_live(z, act.kind, where)
        flat = z.V.reshape(z.V.shape[0], -1)
        b = flat[0].clone()
        W = (flat[1:] - flat[0]).T.contiguous()
        self._push_weight(W, b, where)
        act.shape = z.shape
        self._check_activation(act, where)
        self.acts.append(act)
        self.residual.append(False)
        new = self.next_seg
        self.next_seg += 1
        self.seg_prev[new], self.seg_act[new] = self.live, len(self.acts) - 1
        self.seg_ops[new] = []
        self.live = new
        return self.state(z.shape, where)

    def _check_activation(self, act: Activation, where: str) -> None:
        if act.kind in ("maxmin", "groupsort"):
            c = act.shape[0] if act.shape else 0
            if c % act.group_size or (act.grouping == "halves" and c % 2):
                raise ShapeMismatchError(
                    f"{act.kind} at {where!r}: {c} channels are not divisible into groups of {act.group_size}"
                )

    def _push_weight(self, W: Tensor, b: Tensor, where: str) -> None:
        ops = self.seg_ops[self.live]
        convs = [o for o in ops if not isinstance(o, str)]
        only_reshapes = all(isinstance(o, str) and o in ("reshape", "identity") for o in ops if isinstance(o, str))
        self.convs.append(convs[0] if len(convs) == 1 and only_reshapes else None)
        self.weights.append(W)
        self.biases.append(b)
        self.origins.append(where)

    def finish(self, out: _Val, where: str) -> LayeredNetwork:
        self._check_live(out, "output", where)
        flat = out.V.reshape(out.V.shape[0], -1)
        self._push_weight((flat[1:] - flat[0]).T.contiguous(), flat[0].clone(), where)
        return LayeredNetwork(
            self.weights, self.acts, self.residual, self.convs, self.input_shape, self.biases, self.origins
        )


def _conv_op(m: nn.Conv2d, shape: tuple[int, ...], where: str) -> object:
    from lipbound.ops.conv import Conv2dLayer, _padding

    if m.padding_mode != "zeros":
        raise UnsupportedOperatorError(
            f"Conv2d(padding_mode={m.padding_mode!r})", where, SUPPORTED, hint="only zero padding is supported"
        )
    pad = _padding(m.padding, m.weight, m.dilation, where)
    ws = getattr(m, "standardized_weight", None)  # lipbound.nn.WSConv2d: the conv with W_hat, never W
    with torch.no_grad():
        w = ws() if callable(ws) else m.weight
    return Conv2dLayer(w.detach(), m.bias, shape, m.stride, pad, m.dilation, m.groups)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _AFFINE_MODULES) or _activation_of_module(m) is not None:
            return True
        if type(m).__name__ in ("PowerNorm", "BatchChannelNorm2d"):  # lipbound.nn norms: see _module_call
            return True
        return super().is_leaf_module(m, qualname)


def _infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            return (int(m.in_features),)
        if isinstance(m, nn.Conv2d):
            raise InvalidInputError(
                f"input_shape is required for a convolutional model (first layer {name!r} is Conv2d); "
                "pass e.g. input_shape=(3, 32, 32)"
            )
    raise InvalidInputError("cannot infer input_shape (no Linear layer found); pass input_shape=...")


PER_SAMPLE_NORMS: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
PER_SAMPLE_NORM_HINT = (
    "per-sample normalization is not globally Lipschitz in general (on a near-constant input 1/sqrt(var + eps) "
    "reaches eps^-1/2); local_lipschitz bounds it on a box"
)


def _from_module(model: nn.Module, input_shape: tuple[int, ...]) -> LayeredNetwork:
    from lipbound.graph.mode import for_inference

    model = for_inference(model)
    try:
        g = _Tracer().trace(model)
    except Exception as e:
        raise InvalidModelError(f"torch.fx could not trace {type(model).__name__}: {e}") from e
    m64 = copy.deepcopy(model).to(torch.float64)
    modules = dict(m64.named_modules())
    ex = _Extractor(input_shape)
    env: dict[fx.Node, Any] = {}

    def is_act(n: fx.Node) -> bool:
        if n.op == "call_module":
            return _activation_of_module(modules[str(n.target)]) is not None
        return n.op in ("call_function", "call_method") and (
            n.target in _ACT_FUNCTIONS or n.target in (F.leaky_relu, "leaky_relu")
        )

    block_inputs = _block_inputs(list(g.nodes), lambda n: n.all_input_nodes, _is_add_node, is_act)

    def look(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n])

    for n in g.nodes:
        where = str(n.target) if n.op == "call_module" else n.name
        if n.op == "placeholder":
            if any(isinstance(v, _Val) for v in env.values()):
                raise InvalidModelError("models with more than one input are not supported")
            env[n] = ex.state(input_shape)
        elif n.op == "get_attr":
            obj: Any = m64
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            env[n] = obj.detach() if isinstance(obj, Tensor) else obj
        elif n.op == "call_module":
            env[n] = _module_call(ex, modules[str(n.target)], look(n.args), where)
        elif n.op in ("call_function", "call_method"):
            env[n] = _function_call(ex, n.target, look(n.args), look(n.kwargs), where)
        if n in block_inputs:
            env[n] = ex.materialize(env[n], where)
        if n.op == "output":
            out = look(n.args[0])
            if not isinstance(out, _Val):
                raise InvalidModelError("the model must return a single tensor")
            return ex.finish(out, "output")
    raise InvalidModelError("traced model has no output")  # pragma: no cover


def _is_add_node(n: fx.Node) -> bool:
    return n.op in ("call_function", "call_method") and (n.target in _ADD or n.target in _SUB)


def _block_inputs(nodes: list[Any], inputs: Any, is_add: Any, is_act: Any) -> set[Any]:
    """Values ``a`` used in ``a + g(a)`` where ``g`` passes through an activation: they become hidden states."""
    anc: dict[Any, set[Any]] = {}  # ancestors
    via: dict[Any, set[Any]] = {}  # ancestors reached through at least one activation
    for n in nodes:
        a: set[Any] = set()
        v: set[Any] = set()
        for i in inputs(n):
            a |= anc[i] | {i}
            v |= via[i]
        anc[n] = a
        via[n] = set(a) if is_act(n) else v
    out = set()
    for n in nodes:
        ins = list(inputs(n))
        if is_add(n) and len(ins) == 2:
            a, b = ins
            if a in via[b]:
                out.add(a)
            elif b in via[a]:
                out.add(b)
    return out


def _module_call(ex: _Extractor, m: nn.Module, args: tuple, where: str) -> Any:
    act = _activation_of_module(m)
    x = args[0]
    if not isinstance(x, _Val):
        raise UnsupportedOperatorError(type(m).__name__, where, SUPPORTED, hint="module applied to a constant")
    if act is not None:
        return ex.activation(act, x, where)
    if isinstance(m, _AFFINE_MODULES):
        if len(args) != 1:
            raise UnsupportedOperatorError(type(m).__name__, where, SUPPORTED, hint="extra call arguments")
        op: Any = "identity" if isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)) else type(m).__name__
        if isinstance(m, nn.Flatten):
            op = "reshape"
        if isinstance(m, nn.Conv2d):
            if len(x.shape) != 3:
                raise ShapeMismatchError(f"Conv2d at {where!r} expects (C, H, W) per sample, got {x.shape}")
            op = _conv_op(m, x.shape, where)
        try:
            return ex.affine(m, [x], where, type(m).__name__, op)
        except LipboundError:
            raise
        except Exception as e:
            raise ShapeMismatchError(f"{type(m).__name__} at {where!r} failed on input shape {x.shape}: {e}") from e
    kind = type(m).__name__
    if kind == "PowerNorm" and len(args) == 1 and not m.training and m.scaling_groups is None:
        return ex.affine(m, [x], where, kind)  # eval PowerNorm: the per-feature affine gamma / sqrt(phi + eps)
    hint = PER_SAMPLE_NORM_HINT if isinstance(m, PER_SAMPLE_NORMS) or kind == "BatchChannelNorm2d" else ""
    if kind == "PowerNorm":
        hint = "training mode (call .eval()), a padding mask, or GroupScaling (per-sample, not globally Lipschitz)"
    raise UnsupportedOperatorError(kind, where, SUPPORTED, hint=hint)


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _function_call(ex: _Extractor, target: Any, args: tuple, kwargs: dict, where: str) -> Any:
    flat: list[Any] = []
    fx.node.map_aggregate((args, kwargs), lambda v: flat.append(v) or v)
    tracked = [a for a in flat if isinstance(a, _Val)]
    if isinstance(args[0], _Val) and (target in ("size", "dim") or (target is getattr and args[1] == "shape")):
        full = args[0].V.shape  # the batch dimension is the n + 1 evaluation points
        if target == "dim":
            return len(full)
        return full[args[1]] if target == "size" and len(args) > 1 else full
    if not tracked:  # arithmetic on python values / constants
        return getattr(args[0], target)(*args[1:], **kwargs) if isinstance(target, str) else target(*args, **kwargs)
    name = _name(target)
    if target in _ACT_FUNCTIONS:
        kind, slope = _ACT_FUNCTIONS[target]
        return ex.activation(Activation(kind, slope), args[0], where)
    if target in (F.leaky_relu, "leaky_relu"):
        a = float(args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01))
        return ex.activation(Activation("leaky_relu", (min(a, 1.0), max(a, 1.0))), args[0], where)
    if target in _ADD or target in _SUB:
        alpha = float(kwargs.get("alpha", 1.0))
        other = args[1] if len(args) > 1 else kwargs["other"]
        sign = -1.0 if target in _SUB else 1.0
        a = args[0]
        if isinstance(a, _Val) and isinstance(other, _Val):
            return ex.add(a, other, where, sign * alpha)
        if isinstance(a, _Val):
            return ex.affine(lambda x: x + sign * alpha * other, [a], where, "add constant")
        return ex.affine(lambda y: a + sign * alpha * y, [other], where, "add constant")
    if target in _MUL:
        other = args[1] if len(args) > 1 else kwargs["other"]
        if len(tracked) != 1 or (target in (operator.truediv, torch.div, "div") and isinstance(other, _Val)):
            raise UnsupportedOperatorError(name, where, SUPPORTED, hint="only multiplication by constants is linear")
        div = target in (operator.truediv, torch.div, "div")
        x, c = (args[0], other) if isinstance(args[0], _Val) else (other, args[0])
        return ex.affine(lambda v: v / c if div else v * c, [x], where, "scale")
    if target is F.dropout or target == "dropout":
        if (args[2] if len(args) > 2 else kwargs.get("training", True)) is True:
            raise InvalidModelError(f"F.dropout at {where!r} is called with training=True")
        return args[0]
    if target is F.batch_norm:
        if (args[5] if len(args) > 5 else kwargs.get("training", False)) is True:
            raise InvalidModelError(f"batch_norm at {where!r} is called with training=True")
    elif target not in _AFFINE_FUNCTIONS and target not in _AFFINE_METHODS:
        raise UnsupportedOperatorError(name, where, SUPPORTED)
    kind = "reshape" if name in ("view", "reshape", "flatten", "contiguous") else name

    def run(*vs: Tensor) -> Any:
        it = iter(vs)
        a2, k2 = fx.node.map_aggregate((args, kwargs), lambda v: next(it) if isinstance(v, _Val) else v)
        if isinstance(target, str):
            return getattr(a2[0], target)(*a2[1:], **k2)
        return target(*a2, **k2)

    return ex.affine(run, tracked, where, kind)


# ------------------------------------------------------------------------------------------------ Graph frontend


def _from_graph(graph: Any) -> LayeredNetwork:
    from lipbound.ops.arith import WeightedSum
    from lipbound.ops.base import ConstOp, ElementwiseOp, InputOp, LinearOp
    from lipbound.ops.conv import Conv2dLayer
    from lipbound.ops.leaky_relu import LeakyReLU
    from lipbound.ops.relu import ReLU
    from lipbound.ops.shape import Reshape
    from lipbound.ops.sigmoid import Sigmoid
    from lipbound.ops.tanh import Tanh

    g = graph.to(torch.float64)
    ex = _Extractor(g.input_shape)
    env: dict[int, Any] = {}
    block_inputs = _block_inputs(
        g.nodes,
        lambda n: n.inputs,
        lambda n: isinstance(n.op, WeightedSum) and len(n.inputs) == 2,
        lambda n: isinstance(n.op, ElementwiseOp) or type(n.op).__name__ == "FeatureMix",
    )
    for n in g.nodes:
        where = n.origin or n.name
        op = n.op
        ins = [env[id(i)] for i in n.inputs]
        if isinstance(op, InputOp):
            env[id(n)] = ex.state(n.shape)
        elif isinstance(op, ConstOp):
            env[id(n)] = op.value
        elif type(op).__name__ == "FeatureMix":
            raise UnsupportedOperatorError(
                "lowered MaxMin/GroupSort",
                where,
                SUPPORTED,
                hint="pass the nn.Module instead of a traced Graph so the sorting layer is kept whole",
            )
        elif isinstance(op, WeightedSum) and len(ins) == 2 and all(isinstance(v, _Val) for v in ins):
            a, b = ins
            if op.coeffs[0] != 1.0:
                a = ex.affine(lambda v, k=op.coeffs[0]: k * v, [a], where, "scale")
            env[id(n)] = ex.add(a, b, where, op.coeffs[1])
        elif isinstance(op, LinearOp):
            vals = [v for v in ins if isinstance(v, _Val)]
            if len(vals) != len(ins):
                raise UnsupportedOperatorError(op.describe(), where, SUPPORTED, hint="constant operand")
            tag: Any = op if isinstance(op, Conv2dLayer) else ("reshape" if isinstance(op, Reshape) else op.name)
            env[id(n)] = ex.affine(lambda *vs, o=op: o.forward(*vs), vals, where, op.describe(), tag)
        elif isinstance(op, ElementwiseOp):
            if isinstance(op, ReLU):
                act = Activation("relu", (0.0, 1.0))
            elif isinstance(op, LeakyReLU):
                act = Activation("leaky_relu", (min(op.a, 1.0), max(op.a, 1.0)))
            elif isinstance(op, Tanh):
                act = Activation("tanh", (0.0, 1.0))
            elif isinstance(op, Sigmoid):
                act = Activation("sigmoid", (0.0, 0.25))
            else:
                raise UnsupportedOperatorError(op.describe(), where, SUPPORTED)
            env[id(n)] = ex.activation(act, ins[0], where)
        else:
            raise UnsupportedOperatorError(op.describe(), where, SUPPORTED)
        if n in block_inputs:
            env[id(n)] = ex.materialize(env[id(n)], where)
    return ex.finish(env[id(g.output)], "output")


# ------------------------------------------------------------------------------------------------------- public


def extract(model_or_graph: Any, input_shape: tuple[int, ...] | None = None, check: bool = True) -> LayeredNetwork:
    """Bring an ``nn.Module`` (or a lipbound ``Graph`` of Linear/Conv/elementwise ops) to layered form.

    ``input_shape`` is the per-sample input shape; inferred from the first ``nn.Linear`` if omitted (required for
    convolutional models). Raises :class:`UnsupportedOperatorError` naming the op, its module path and the
    supported list for anything else. With ``check`` the result is compared with the model on random inputs.
    """

    if isinstance(model_or_graph, LayeredNetwork):
        return model_or_graph
    with torch.no_grad():
        return _extract(model_or_graph, input_shape, check)


def _extract(model_or_graph: Any, input_shape: tuple[int, ...] | None, check: bool) -> LayeredNetwork:
    from lipbound.graph.ir import Graph

    if isinstance(model_or_graph, torch.jit.ScriptModule):
        if input_shape is None:
            raise InvalidInputError("input_shape is required for a TorchScript model (e.g. input_shape=(784,))")
        from lipbound.graph.trace import trace

        model_or_graph = trace(model_or_graph, tuple(int(s) for s in input_shape))
    if isinstance(model_or_graph, Graph):
        net = _from_graph(model_or_graph)
        ref = model_or_graph.to(torch.float64)
    elif isinstance(model_or_graph, nn.Module):
        from lipbound.graph.mode import for_inference

        model_or_graph = for_inference(model_or_graph)
        shape = tuple(int(s) for s in input_shape) if input_shape is not None else _infer_input_shape(model_or_graph)
        net = _from_module(model_or_graph, shape)
        ref = copy.deepcopy(model_or_graph).to(torch.float64)
    else:
        raise InvalidModelError(f"expected an nn.Module or a lipbound Graph, got {type(model_or_graph).__name__}")
    for k, w in enumerate(net.weights):
        if not torch.isfinite(w).all() or not torch.isfinite(net.biases[k]).all():
            raise InvalidModelError(f"non-finite (NaN or inf) weights in layer {k} at {net.origins[k]!r}")
        if w.numel() > MAX_DENSE:
            raise InvalidModelError(f"layer {k} at {net.origins[k]!r} is too large to expand densely {tuple(w.shape)}")
    if check:
        _check(net, ref)
    return net


def _check(net: LayeredNetwork, ref: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, *net.input_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want = ref(x).reshape(4, -1)
        got = net.forward(x)
    if want.shape != got.shape or not torch.allclose(want, got, atol=1e-7, rtol=1e-6):
        err = (want - got).abs().max().item() if want.shape == got.shape else f"shape {tuple(got.shape)}"
        raise UnsupportedOperatorError(
            "non-affine operation between activations",
            type(ref).__name__,
            SUPPORTED,
            hint=f"the layered form does not reproduce the model (max error {err})",
        )
