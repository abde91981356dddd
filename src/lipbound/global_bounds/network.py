"""Layered form of a network for global Lipschitz bounds, read from the one model intake (:mod:`lipbound.graph`).

A feed-forward network is brought to the form

    h_0 = x,    h_{k+1} = s_k(W_k h_k + b_k)            (plain block)
                h_{k+1} = h_k + s_k(W_k h_k + b_k)      (residual block, ``residual[k]``; W_k square)
    f(x) = W_L h_L + b_L

The model is traced by :func:`lipbound.graph.trace` (TorchScript and ONNX models arrive as the same
:class:`~lipbound.graph.ir.Graph`), in float64. Each ``W_k`` is an :class:`~lipbound.global_bounds.segments.
AffineSegment`: the graph's own Linear/Conv/BatchNorm/reshape/sum ops between two activations, kept as a
structured operator. ``net.weights[k]`` is its dense matrix, built on first use (refused above :data:`MAX_DENSE`
entries before allocation), with an entrywise rounding bound ``net.segments[k].dense()[1]`` that every method adds.

Activations are read from the ops' traits (:class:`lipbound.ops.base.Traits`: ``global_kind``, ``slope``,
``homogeneous``), never from a list of types; MaxMin / GroupSort / Householder are recorded by their converters as
composites (``graph.meta["composites"]``) and seen here as one activation, their lowered body being skipped.
Unsupported operators raise the intake's own :class:`UnsupportedOperatorError` with the registry's list.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError, UnsupportedOperatorError
from lipbound.global_bounds import segments as _segments
from lipbound.global_bounds.segments import AffineSegment, frobenius_upper
from lipbound.linalg import conv_operator_norm_upper, matrix_norm_upper

#: activation kinds (traits' ``global_kind``) that are positively homogeneous, for hand-built :class:`Activation`
#: objects that carry no op (intake-built ones take ``homogeneous`` from the op's traits)
_HOMOGENEOUS_FALLBACK = ("relu", "leaky_relu", "identity", "maxmin", "groupsort", "householder")


def supported() -> list[str]:
    """The registry's supported-operator names (the same list as the local engine's errors)."""
    from lipbound.ops.catalog import REGISTRY  # ops -> nn -> global_bounds: imported on use (import cycle)

    return REGISTRY.supported()


def __getattr__(name: str) -> Any:
    if name == "SUPPORTED":  # the former hand-written list: now the registry's
        return supported()
    if name == "MAX_DENSE":  # the dense-size limit lives in (and is patched in) lipbound.global_bounds.segments
        return _segments.MAX_DENSE
    raise AttributeError(name)


def _refuse_dense(rows: int, cols: int, dtype: torch.dtype, where: str) -> None:
    """Refuse, before allocating it, a dense (rows x cols) matrix above ``segments.MAX_DENSE`` entries."""
    _segments.refuse_dense(rows, cols, where, dtype)


@dataclass
class Activation:
    """An activation between two affine maps.

    ``slope = (alpha, beta)``: for slope-restricted kinds, ``alpha <= (s(a) - s(b)) / (a - b) <= beta`` entrywise
    (from the op's traits). ``None`` for GroupSort, MaxMin and Householder, which are 1-Lipschitz in l2 but not
    slope-restricted. ``shape`` is the per-sample shape the activation acts on (channel grouping uses it).
    ``homogeneous``: ``s(t z) = t s(z)`` for ``t >= 0`` (traits; derived from ``kind`` when not given).
    ``op``: the graph op (elementwise activations) used to evaluate it.
    """

    kind: str
    slope: tuple[float, float] | None
    group_size: int = 1
    grouping: str = "consecutive"
    module: nn.Module | None = None
    shape: tuple[int, ...] | None = None
    homogeneous: bool | None = None
    op: Any = None

    def __post_init__(self) -> None:
        if self.homogeneous is None:
            self.homogeneous = self.kind in _HOMOGENEOUS_FALLBACK

    @property
    def slope_restricted(self) -> bool:
        return self.slope is not None


class DenseSegment:
    """A given dense matrix as a segment (hand-built :class:`LayeredNetwork`; its entries are exact by definition)."""

    def __init__(self, w: Tensor, where: str = "", conv: Any = None) -> None:
        self.w = w
        self.where = where
        self.n_out, self.n_in = int(w.shape[0]), int(w.shape[1])
        self.in_shape, self.out_shape = (self.n_in,), (self.n_out,)
        self._conv = conv
        self.rel = 0.0

    def conv(self) -> Any:
        return self._conv

    def dense(self) -> tuple[Tensor, Tensor]:
        w = self.w.to(torch.float64)
        return w, torch.zeros_like(w)

    def dense_size(self) -> int:
        return self.n_in * self.n_out

    def apply(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.w.to(x.dtype).T

    def apply_t(self, y: Tensor) -> Tensor:
        return y @ self.w.to(y.dtype)

    def abs_apply(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.w.abs().to(x.dtype).T

    def abs_apply_t(self, y: Tensor) -> Tensor:
        return y @ self.w.abs().to(y.dtype)

    def norm_upper(self, norm: str = "2") -> float:
        w = self.w.to(torch.float64)
        if norm == "inf":
            return matrix_norm_upper(w, "inf")
        if self._conv is not None:
            return conv_operator_norm_upper(self._conv)
        return matrix_norm_upper(w, 2, max_iter=30 if min(w.shape) <= 2048 else 12)


class _LazyWeights(Sequence):
    """``weights[k]``: segment ``k``'s dense float64 matrix, built (or refused) on first access."""

    def __init__(self, segs: list[Any]) -> None:
        self._segs = segs

    def __len__(self) -> int:
        return len(self._segs)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self._segs[k].dense()[0]

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))


@dataclass
class LayeredNetwork:
    """``f(x) = W_L s(W_{L-1} ... s(W_0 x + b_0) ...) + b_L`` with optional residual blocks (see module doc).

    ``segments[k]`` is the structured operator of ``W_k``; ``weights[k]`` its dense matrix (lazy for
    intake-built networks). A network built from dense ``weights`` gets exact :class:`DenseSegment` wrappers.
    """

    weights: Sequence[Tensor]
    activations: list[Activation]
    residual: list[bool]
    convs: list[object | None]
    input_shape: tuple[int, ...]
    biases: list[Tensor] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    segments: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.segments is None:
            convs = list(self.convs) + [None] * (len(self.weights) - len(self.convs))
            where = list(self.origins) + [""] * (len(self.weights) - len(self.origins))
            self.segments = [DenseSegment(w, where[k], convs[k]) for k, w in enumerate(self.weights)]

    @property
    def depth(self) -> int:
        """Number of activation layers ``L``."""
        return len(self.activations)

    @property
    def dims(self) -> list[int]:
        """``[n_0, n_1, ..., n_L, n_out]``: input, hidden state and output dimensions."""
        return [int(self.segments[0].n_in)] + [int(s.n_out) for s in self.segments]

    def dense_errors(self) -> list[float]:
        """``||W_hat_k - W_k||_F`` upper bounds (rounding of the dense matrices; 0 for exact given weights)."""
        return [frobenius_upper(s.dense()[1]) if s.rel else 0.0 for s in self.segments]

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate on a batch ``x`` of shape ``(B, *input_shape)`` (or ``(B, n_0)``); returns ``(B, n_out)``."""
        h = x.reshape(x.shape[0], -1).to(torch.float64)
        for k, seg in enumerate(self.segments):
            z = seg.apply(h)
            if k < len(self.biases) and self.biases[k] is not None:
                z = z + self.biases[k]
            if k == len(self.activations):
                return z
            y = apply_activation(self.activations[k], z)
            h = h + y if self.residual[k] else y
        return h  # pragma: no cover - one more segment than activations


def apply_activation(act: Activation, z: Tensor) -> Tensor:
    """Apply ``act`` to flat features ``z`` of shape ``(B, n)``."""
    shape = act.shape or (z.shape[1],)
    if act.op is not None:
        return act.op.forward(z.reshape(z.shape[0], *shape)).reshape(z.shape[0], -1)
    if act.module is not None:
        return act.module(z.reshape(z.shape[0], *shape)).reshape(z.shape[0], -1)
    fn = {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "identity": lambda t: t,
        "leaky_relu": lambda t: F.leaky_relu(t, act.slope[0] if act.slope[1] == 1.0 else act.slope[1]),
    }[act.kind]
    return fn(z)


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


# --------------------------------------------------------------------------------------------------- intake

PER_SAMPLE_NORMS: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
PER_SAMPLE_NORM_HINT = (
    "per-sample normalization is not globally Lipschitz in general (on a near-constant input 1/sqrt(var + eps) "
    "reaches eps^-1/2); local_lipschitz bounds it on a box"
)
_LAYERED_HINT = (
    "global bounds need affine ops (Linear, Conv2d, eval BatchNorm, AvgPool2d, reshapes, sums, constants) between "
    "slope-restricted activations or MaxMin/GroupSort/Householder; " + PER_SAMPLE_NORM_HINT
)


@dataclass
class _Open:
    """The segment being built: state node ``src``, its affine nodes, and where the state came from."""

    src: Any
    nodes: list[Any]
    prev: int | None  # segment whose activation produced ``src``
    act: int | None  # index of that activation


class _Layering:
    """Walk a float64 :class:`~lipbound.graph.ir.Graph` in topological order and cut it at activations."""

    def __init__(self, graph: Any, modules: dict[str, nn.Module] | None = None) -> None:
        self.g = graph
        self.modules = modules or {}  # module path -> module, only to word errors
        self.comps = {c["output"]: c for c in graph.meta.get("composites", [])}
        self.inner = {name for c in self.comps.values() for name in c["inner"]} - set(self.comps)
        self.by_name = {n.name: n for n in graph.nodes}
        self.segs: list[AffineSegment] = []
        self.acts: list[Activation] = []
        self.residual: list[bool] = []
        self.open: list[_Open] = [_Open(graph.input, [], None, None)]
        self.live = 0
        self.seg_of: dict[int, int] = {id(graph.input): 0}
        self.const: set[int] = set()
        self.const_nodes: list[Any] = []

    # ------------------------------------------------------------------------------------------------ helpers

    def _where(self, n: Any) -> str:
        return n.origin or n.name

    def _hint(self, n: Any, default: str) -> str:
        """A specific reason when the node comes from a module known not to be globally Lipschitz."""
        m = self.modules.get(n.origin)
        kind = type(m).__name__
        if kind == "PowerNorm":
            return "training mode (call .eval()), a padding mask, or GroupScaling (per-sample, not globally Lipschitz)"
        if isinstance(m, PER_SAMPLE_NORMS) or kind == "BatchChannelNorm2d":
            return PER_SAMPLE_NORM_HINT
        return default

    def _check_live(self, n: Any, what: str, where: str) -> None:
        if self.seg_of.get(id(n)) != self.live:
            raise UnsupportedOperatorError(
                what,
                where,
                supported(),
                hint="a value from before an activation is reused (only residual blocks x + act(W x + b) are allowed)",
            )

    def _close(self, dst: Any, where: str) -> None:
        o = self.open[self.live]
        self.segs.append(AffineSegment(self.const_nodes + o.nodes, o.src, dst, where))

    def _start(self, src: Any, prev: int | None, act: int | None) -> None:
        self.open.append(_Open(src, [], prev, act))
        self.live = len(self.open) - 1
        self.seg_of[id(src)] = self.live

    def activation(self, z: Any, act: Activation, out: Any, where: str) -> None:
        self._check_live(z, act.kind, where)
        act.shape = tuple(z.shape)
        if act.kind in ("maxmin", "groupsort"):
            c = act.shape[0] if act.shape else 0
            if not c or c % act.group_size or (act.grouping == "halves" and c % 2):
                raise ShapeMismatchError(
                    f"{act.kind} at {where!r}: {c} channels are not divisible into groups of {act.group_size}"
                )
        self._close(z, self._where(z))
        self.acts.append(act)
        self.residual.append(False)
        self._start(out, self.live, len(self.acts) - 1)

    def materialize(self, n: Any) -> None:
        """Make ``n`` a state (identity activation) so that it can start a residual block."""
        if self.open[self.live].src is n or self.seg_of.get(id(n)) != self.live:
            return
        self.activation(n, Activation("identity", (1.0, 1.0), homogeneous=True), n, self._where(n))

    def residual_add(self, n: Any, a: Any, b: Any, where: str) -> bool:
        """``a + b`` with ``b`` the output of activation ``k`` applied to ``W a``: mark block ``k`` residual."""
        o = self.open[self.live]
        if self.seg_of.get(id(a)) == self.live:
            a, b = b, a
        if o.src is not b or o.nodes or o.prev is None or o.act is None or self.residual[o.act]:
            return False
        if self.open[o.prev].src is not a:
            return False
        self.residual[o.act] = True
        self._start(n, o.prev, o.act)
        return True

    # ------------------------------------------------------------------------------------------------ walk

    def run(self) -> LayeredNetwork:
        from lipbound.ops.arith import WeightedSum
        from lipbound.ops.base import ConstOp, ElementwiseOp, InputOp, LinearOp

        g = self.g
        blocks = _block_inputs(g.nodes, lambda n: n.inputs, self._is_add, self._is_act)
        for n in g.nodes:
            if isinstance(n.op, InputOp) or (n.name in self.inner):
                continue  # the input, or the lowered body of a composite activation
            where = self._where(n)
            op = n.op
            if n.name in self.comps:
                c = self.comps[n.name]
                act = Activation(c["kind"], None, c["group_size"], c["grouping"], module=c["module"], homogeneous=True)
                self.activation(self.by_name[c["input"]], act, n, where)
            elif isinstance(op, ConstOp):
                self.const.add(id(n))
                self.const_nodes.append(n)
            elif isinstance(op, ElementwiseOp):
                t = op.traits()
                if t.global_kind is None or t.slope is None:
                    hint = "global bounds need a slope-restricted activation (traits with global_kind and slope)"
                    raise UnsupportedOperatorError(op.describe(), where, supported(), hint=self._hint(n, hint))
                act = Activation(t.global_kind, tuple(map(float, t.slope)), homogeneous=t.homogeneous, op=op)
                self.activation(n.inputs[0], act, n, where)
            elif isinstance(op, LinearOp):
                tracked = [i for i in n.inputs if id(i) not in self.const]
                if not tracked:
                    self.const.add(id(n))
                    self.const_nodes.append(n)
                    continue
                segs = {self.seg_of.get(id(i)) for i in tracked}
                if isinstance(op, WeightedSum) and len(tracked) == 2 and len(segs) == 2:
                    if op.coeffs == [1.0, 1.0] and self.residual_add(n, *tracked, where):
                        continue
                    raise UnsupportedOperatorError(
                        "add across an activation",
                        where,
                        supported(),
                        hint="only residual blocks x + act(W x + b) with the block input added unchanged are supported",
                    )
                for i in tracked:
                    self._check_live(i, op.describe(), where)
                self.open[self.live].nodes.append(n)
                self.seg_of[id(n)] = self.live
            else:
                raise UnsupportedOperatorError(op.describe(), where, supported(), hint=self._hint(n, _LAYERED_HINT))
            if n in blocks:
                self.materialize(n)
        out = g.output
        if id(out) in self.const:
            raise InvalidModelError("the model output does not depend on its input (constant network)")
        self._check_live(out, "output", "output")
        self._close(out, "output")
        biases = [s.offset() for s in self.segs]
        return LayeredNetwork(
            _LazyWeights(self.segs),
            self.acts,
            self.residual,
            [s.conv() for s in self.segs],
            tuple(g.input_shape),
            biases,
            [s.where for s in self.segs],
            segments=self.segs,
        )

    def _is_act(self, n: Any) -> bool:
        from lipbound.ops.base import ElementwiseOp

        return n.name in self.comps or (isinstance(n.op, ElementwiseOp) and n.name not in self.inner)

    @staticmethod
    def _is_add(n: Any) -> bool:
        from lipbound.ops.arith import WeightedSum

        return isinstance(n.op, WeightedSum) and len(n.inputs) == 2


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


# ------------------------------------------------------------------------------------------------------- public


def extract(model_or_graph: Any, input_shape: tuple[int, ...] | None = None, check: bool = True) -> LayeredNetwork:
    """Bring an ``nn.Module``, a TorchScript module or a lipbound ``Graph`` to layered form (module docstring).

    ``input_shape`` is the per-sample input shape; inferred from the first ``nn.Linear`` if omitted (required for
    convolutional and TorchScript models). Modules are traced in float64 by the same intake as the local engine
    (:func:`lipbound.graph.trace`), which raises :class:`UnsupportedOperatorError` for operators it does not know;
    operators it knows but that are not affine or a global-bounds activation raise it here. With ``check`` the
    layered form is compared with the graph on random inputs. No dense matrix is formed here.
    """
    if isinstance(model_or_graph, LayeredNetwork):
        return model_or_graph
    with torch.no_grad():
        return _extract(model_or_graph, input_shape, check)


def to_graph(model_or_graph: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """The float64 :class:`~lipbound.graph.ir.Graph` of a model (traced in float64: BatchNorm folds in float64)."""
    from lipbound.graph.ir import Graph
    from lipbound.graph.mode import for_inference
    from lipbound.graph.trace import trace

    m = model_or_graph
    if isinstance(m, Graph):
        return m.to(torch.float64)
    if isinstance(m, torch.jit.ScriptModule):
        if input_shape is None:
            raise InvalidInputError("input_shape is required for a TorchScript model (e.g. input_shape=(784,))")
        return trace(m, tuple(int(s) for s in input_shape)).to(torch.float64)
    if isinstance(m, nn.Module):
        m = for_inference(m)
        shape = tuple(int(s) for s in input_shape) if input_shape is not None else _infer_input_shape(m)
        return trace(copy.deepcopy(m).to(torch.float64), shape).to(torch.float64)
    raise InvalidModelError(f"expected an nn.Module or a lipbound Graph, got {type(m).__name__}")


def _extract(model_or_graph: Any, input_shape: tuple[int, ...] | None, check: bool) -> LayeredNetwork:
    g = to_graph(model_or_graph, input_shape)
    g.check_finite()
    modules = dict(model_or_graph.named_modules()) if isinstance(model_or_graph, nn.Module) else {}
    net = _Layering(g, modules).run()
    if check:
        _check(net, g)
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
            "model",
            supported(),
            hint=f"the layered form does not reproduce the model (max error {err})",
        )
