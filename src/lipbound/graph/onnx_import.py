"""Import an ONNX model into a lipbound :class:`~lipbound.graph.ir.Graph`.

The importer is a translation table: every ONNX node is rewritten as the equivalent torch call and dispatched
through the converters of :data:`~lipbound.ops.registry.REGISTRY` (the same ones ``torch.fx`` tracing uses), so
each operator keeps one set of forward/interval/relaxation/Jacobian rules. Values flowing between ONNX nodes are

* graph :class:`~lipbound.graph.ir.Node` objects (tensors that depend on the input, batch dimension first),
* constant tensors (initializers, ``Constant`` nodes and everything computed only from them),
* symbolic shape vectors :class:`~lipbound.graph.symbolic.SymShape` whose entries are ints or
  :data:`~lipbound.graph.trace.BATCH` (what ``Shape`` of a traced tensor yields), so exporter shape arithmetic
  folds to constants (:mod:`lipbound.graph.symbolic`).

ONNX operators without a registry entry of their own use the exact rebuilds of :mod:`lipbound.graph.composite`
(which states their math): ``Slice``/``Gather`` of a traced tensor use ``select``, ``Transpose`` uses ``permute``,
``Concat`` uses ``concat``, ``Max``/``Min`` of two traced tensors use ``maximum``/``minimum`` and ``TopK`` over the
whole last axis (a sort) uses ``sort_last``; ``Squeeze``/``Unsqueeze``/``Reshape`` are per-sample reshapes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lipbound.errors import (
    InvalidModelError,
    LipboundError,
    ModelLoadError,
    ShapeMismatchError,
    UnsupportedOperatorError,
)
from lipbound.graph.builder import GraphBuilder
from lipbound.graph.composite import (
    SortIndices,
    call,
    concat,
    feature_index,
    maximum,
    minimum,
    permute,
    registrar,
    reshape,
    select,
    sort_last,
)
from lipbound.graph.ir import Graph, Node
from lipbound.graph.symbolic import (
    SymShape,
    is_batch,
    is_full_range,
    per_sample_axis,
    resolve_reshape,
    scalar,
    sym_arith,
)
from lipbound.graph.trace import BATCH

# --------------------------------------------------------------------------------------------------------------
# ONNX reading
# --------------------------------------------------------------------------------------------------------------


def _load_proto(path_or_model: Any):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    if isinstance(path_or_model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(path_or_model))
        except Exception as e:
            raise ModelLoadError(f"the bytes given are not a readable ONNX model: {e}") from e
    path = Path(path_or_model)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file not found: {str(path)!r}")
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"{str(path)!r} is not a readable ONNX file ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise ModelLoadError(f"{str(path)!r} is not a readable ONNX file (it has no graph nodes)")
    return model


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _to_torch(arr: np.ndarray) -> Tensor:
    arr = np.array(arr)  # own the memory (writeable)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return torch.from_numpy(arr)


def _declared_input(model) -> tuple[str, list[Any], int]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise InvalidModelError(f"the ONNX model must have exactly one input, it has {len(inputs)}: {names}")
    inp = inputs[0]
    tt = inp.type.tensor_type
    dims: list[Any] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return inp.name, dims, tt.elem_type


_FLOAT_TYPES = {1: torch.float32, 10: torch.float32, 11: torch.float64, 16: torch.float32}


def graph_from_onnx(path_or_model: Any, input_shape: tuple[int, ...] | None = None, *, check: bool = True) -> Graph:
    """Build a Graph from an ONNX file (path), serialized bytes or ``onnx.ModelProto``.

    ``input_shape`` is the per-sample input shape; by default it is read from the model's declared input (first
    dimension = batch). If given and the model declares a different fixed shape, :class:`ShapeMismatchError`.
    With ``check=True`` the graph is compared with ONNX's reference evaluator on random inputs.
    """
    model = _load_proto(path_or_model)
    name, dims, elem = _declared_input(model)
    declared = dims[1:] if dims else []
    if input_shape is None:
        if not dims or any(d is None for d in declared):
            raise ShapeMismatchError(
                f"ONNX input {name!r} has dynamic per-sample dims {dims}; pass input_shape=(...) explicitly"
            )
        input_shape = tuple(int(d) for d in declared)
    input_shape = tuple(int(s) for s in input_shape)
    mismatch = len(declared) != len(input_shape) or any(
        d not in (None, s) for d, s in zip(declared, input_shape, strict=False)
    )
    if dims and mismatch:
        raise ShapeMismatchError(
            f"input_shape {input_shape} does not match the ONNX input {name!r} of shape (batch, {declared})"
        )
    dtype = _FLOAT_TYPES.get(elem, torch.float32)
    imp = _OnnxImporter(model, dtype)
    graph = imp.run(name, input_shape)
    graph.check_finite()
    if check:
        _check_reference(graph, model, name, input_shape, dtype)
    return graph


def _check_reference(graph: Graph, model, name: str, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Compare with ``onnx.reference.ReferenceEvaluator`` (skipped if that evaluator cannot run the model)."""
    try:
        from onnx.reference import ReferenceEvaluator

        sess = ReferenceEvaluator(model)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, *input_shape, generator=gen, dtype=torch.float64).to(dtype)
        ref = torch.from_numpy(np.asarray(sess.run(None, {name: x.numpy()})[0]))
    except Exception:  # the reference evaluator lacks an op or a dtype: nothing to compare with
        return
    with torch.no_grad():
        got = graph(x)
    if ref.shape != got.shape or not torch.allclose(ref.to(got.dtype), got, atol=1e-4, rtol=1e-4):
        err = (ref.to(got.dtype) - got).abs().max().item() if ref.shape == got.shape else f"shape {tuple(ref.shape)}"
        raise LipboundError(f"internal error: imported ONNX graph differs from the model (max error {err})")


# --------------------------------------------------------------------------------------------------------------
# the translation table
# --------------------------------------------------------------------------------------------------------------

Handler = Callable[["_OnnxImporter", list[Any], dict[str, Any]], Any]
_OPS: dict[str, Handler] = {}


_op = registrar(_OPS)


def supported_onnx_ops() -> list[str]:
    """ONNX operator types the importer translates."""
    return sorted(_OPS)


# high-level layers whose ONNX export the importer cannot handle, recognised by an op they always contain, so the
# error names the layer the user wrote instead of the first low-level op that fails (often a Transpose)
KNOWN_BLOCKS: dict[str, tuple[str, str]] = {
    "LSTM": ("LSTM", "recurrent layers (nn.LSTM) are not supported: the bound engine handles feed-forward networks"),
    "GRU": ("GRU", "recurrent layers (nn.GRU) are not supported: the bound engine handles feed-forward networks"),
    "RNN": ("RNN", "recurrent layers (nn.RNN) are not supported: the bound engine handles feed-forward networks"),
    "Softmax": (
        "MultiheadAttention / softmax attention",
        "attention (softmax of input-dependent scores, e.g. nn.MultiheadAttention) is not supported",
    ),
    "Attention": ("MultiheadAttention", "attention layers are not supported"),
}


def _scope(node) -> str:
    return node.name.rsplit("/", 1)[0] if "/" in (node.name or "") else ""


def _attention_scopes(model) -> set[str]:
    """Scopes with a MatMul of two input-dependent tensors (query-key scores): where a Softmax means attention."""
    constant = {t.name for t in model.graph.initializer}
    constant |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return {_scope(n) for n in model.graph.node if n.op_type == "MatMul" and not any(i in constant for i in n.input)}


def _refuse_known_blocks(model) -> None:
    """Raise :class:`UnsupportedOperatorError` naming a recurrent or attention layer before importing anything."""
    attention = _attention_scopes(model)
    for k, node in enumerate(model.graph.node):
        if node.op_type == "Softmax" and _scope(node) not in attention:
            continue  # a plain softmax: the generic unsupported-op error (with the supported list) applies
        if node.op_type in KNOWN_BLOCKS and node.op_type not in _OPS:
            layer, why = KNOWN_BLOCKS[node.op_type]
            scope = _scope(node)
            where = f"{scope or node.name or node.op_type + '#' + str(k)} (ONNX {node.op_type} node {node.name!r})"
            raise UnsupportedOperatorError(layer, where, hint=why)


class _OnnxImporter:
    def __init__(self, model, dtype: torch.dtype) -> None:
        import onnx.numpy_helper as nph

        self.model = model
        self.dtype = dtype
        self.consts: dict[str, Any] = {t.name: self._float(_to_torch(nph.to_array(t))) for t in model.graph.initializer}
        self.cache: dict = {}
        self.b: GraphBuilder

    def _float(self, t: Tensor) -> Tensor:
        return t.to(self.dtype) if t.is_floating_point() else t

    @property
    def where(self) -> str:
        return self.b.origin

    def run(self, input_name: str, input_shape: tuple[int, ...]) -> Graph:
        _refuse_known_blocks(self.model)
        self.b = GraphBuilder(torch.zeros(1, *input_shape, dtype=self.dtype), input_name)
        env: dict[str, Any] = dict(self.consts)
        env[input_name] = self.b.input
        env[""] = None  # omitted optional inputs
        for k, node in enumerate(self.model.graph.node):
            self.b.origin = node.name or f"{node.op_type}#{k}"
            handler = _OPS.get(node.op_type)
            if node.domain not in ("", "ai.onnx") or handler is None:
                raise UnsupportedOperatorError(
                    f"ONNX {node.op_type}", self.b.origin, supported_onnx_ops(), hint=f"node {k} of the ONNX graph"
                )
            args = [env[i] for i in node.input]
            out = handler(self, args, _attrs(node))
            outs = out if isinstance(out, list) else [out]
            for oname, v in zip(node.output, outs, strict=False):
                env[oname] = v
        outputs = list(self.model.graph.output)
        if len(outputs) != 1:
            raise InvalidModelError(f"the ONNX model must have exactly one output, it has {len(outputs)}")
        result = env[outputs[0].name]
        if not isinstance(result, Node):
            raise InvalidModelError("the ONNX model output does not depend on its input")
        return self.b.finish(result, {"source": "onnx"})

    # helpers --------------------------------------------------------------------------------------------------
    def const(self, v: Any, what: str) -> Tensor:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, SymShape) and not any(is_batch(s) for s in v):
            return torch.tensor([int(s) for s in v], dtype=torch.int64)
        raise UnsupportedOperatorError(f"{what} that depends on the input", self.where, hint="it must be a constant")

    def ints(self, v: Any, what: str) -> list[int]:
        return [int(s) for s in self.const(v, what).reshape(-1).tolist()]


def _any_node(args: list[Any]) -> bool:
    return any(isinstance(a, Node) for a in args)


def _any_sym(args: list[Any]) -> bool:
    return any(isinstance(a, SymShape) or is_batch(a) for a in args)


# -- linear layers ---------------------------------------------------------------------------------------------


@_op("Gemm")
def _gemm(imp: _OnnxImporter, args, at):
    a, bmat = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    if not isinstance(a, Node) or isinstance(bmat, Node) or isinstance(c, Node):
        raise UnsupportedOperatorError("ONNX Gemm", imp.where, hint="only input @ constant weight is supported")
    if at.get("transA", 0):
        raise UnsupportedOperatorError("ONNX Gemm(transA=1)", imp.where, hint="it transposes the batch dimension")
    bmat = imp.const(bmat, "Gemm weight")
    weight = alpha * (bmat if at.get("transB", 0) else bmat.T)
    bias = None
    if c is not None:
        c = beta * imp.const(c, "Gemm bias")
        if c.numel() not in (1, weight.shape[0]):
            raise UnsupportedOperatorError("ONNX Gemm with a per-sample bias", imp.where, hint=f"C {tuple(c.shape)}")
        bias = c.reshape(-1).expand(weight.shape[0]).clone()
    return call(F.linear, imp.b, a, weight, bias)


@_op("MatMul")
def _matmul(imp: _OnnxImporter, args, at):
    a, w = args
    if isinstance(a, Node) and not isinstance(w, Node):
        w = imp.const(w, "MatMul weight")
        if w.dim() != 2:
            raise UnsupportedOperatorError("ONNX MatMul with a non-2-D constant", imp.where)
        return call(F.linear, imp.b, a, w.T, None)
    if not _any_node(args):
        return torch.matmul(imp.const(a, "MatMul"), imp.const(w, "MatMul"))
    raise UnsupportedOperatorError("ONNX MatMul", imp.where, hint="only input @ constant matrix is linear")


@_op("Conv")
def _conv(imp: _OnnxImporter, args, at):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    if not isinstance(x, Node) or isinstance(w, Node) or isinstance(bias, Node):
        raise UnsupportedOperatorError("ONNX Conv", imp.where, hint="only a constant kernel is supported")
    w = imp.const(w, "Conv weight")
    if w.dim() != 4:
        raise UnsupportedOperatorError(f"ONNX Conv with {w.dim() - 2}-D kernel", imp.where, hint="only 2-D")
    strides = list(at.get("strides", [1, 1]))
    dil = list(at.get("dilations", [1, 1]))
    pads = _pads(imp, at, x.shape[1:], w.shape[2:], strides, dil)
    return call(F.conv2d, imp.b, x, w, bias, tuple(strides), pads, tuple(dil), int(at.get("group", 1)))


def _pads(imp: _OnnxImporter, at, spatial, kernel, strides, dil) -> tuple[int, int]:
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(2):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - spatial[i])
            if total % 2:
                raise UnsupportedOperatorError(f"auto_pad={auto} with asymmetric padding", imp.where)
            pads.append(total // 2)
        return (pads[0], pads[1])
    if auto == "VALID":
        return (0, 0)
    p = list(at.get("pads", [0, 0, 0, 0]))
    if p[:2] != p[2:]:
        raise UnsupportedOperatorError(f"asymmetric padding {p}", imp.where, hint="pads must be symmetric")
    return (int(p[0]), int(p[1]))


@_op("BatchNormalization")
def _batchnorm(imp: _OnnxImporter, args, at):
    x, scale, bias, mean, var = args[:5]
    if at.get("training_mode", 0):
        raise InvalidModelError(f"BatchNormalization at {imp.where!r} is in training mode; export in eval mode")
    if not isinstance(x, Node):
        raise UnsupportedOperatorError("ONNX BatchNormalization of a constant", imp.where)
    p = [imp.const(t, "BatchNormalization parameter") for t in (mean, var, scale, bias)]
    eps = float(at.get("epsilon", 1e-5))
    return call(F.batch_norm, imp.b, x, p[0], p[1], p[2], p[3], False, 0.0, eps)


@_op("AveragePool")
def _avgpool(imp: _OnnxImporter, args, at):
    x = args[0]
    k = list(at["kernel_shape"])
    if len(k) != 2:
        raise UnsupportedOperatorError(f"ONNX AveragePool over {len(k)} dims", imp.where, hint="only 2-D")
    strides = list(at.get("strides", [1, 1]))
    dil = list(at.get("dilations", [1, 1]))
    if dil != [1, 1]:
        raise UnsupportedOperatorError("ONNX AveragePool with dilations", imp.where)
    pads = _pads(imp, at, x.shape[1:], k, strides, dil)
    include = bool(at.get("count_include_pad", 0))
    return call(F.avg_pool2d, imp.b, x, tuple(k), tuple(strides), pads, bool(at.get("ceil_mode", 0)), include, None)


@_op("GlobalAveragePool")
def _gap(imp: _OnnxImporter, args, at):
    x = args[0]
    return call(F.avg_pool2d, imp.b, x, tuple(x.shape[1:]), tuple(x.shape[1:]), 0, False, True, None)


# -- activations -----------------------------------------------------------------------------------------------


def _unary(fn: Any) -> Handler:
    def handler(imp: _OnnxImporter, args, at):
        if not isinstance(args[0], Node):
            return fn(imp.const(args[0], "operand"))
        return call(fn, imp.b, args[0])

    return handler


_op("Relu")(_unary(torch.relu))
_op("Tanh")(_unary(torch.tanh))
_op("Sigmoid")(_unary(torch.sigmoid))


@_op("LeakyRelu")
def _leaky(imp: _OnnxImporter, args, at):
    return call(F.leaky_relu, imp.b, args[0], float(at.get("alpha", 0.01)))


@_op("Gelu")
def _gelu(imp: _OnnxImporter, args, at):
    approximate = at.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return call(F.gelu, imp.b, args[0], approximate=approximate)


@_op("Identity", "Dropout")
def _identity(imp: _OnnxImporter, args, at):
    if len(args) > 2 and args[2] is not None and bool(scalar(imp.const(args[2], "Dropout training_mode"))):
        raise InvalidModelError(f"Dropout at {imp.where!r} is in training mode; export in eval mode")
    return args[0]


# -- arithmetic ------------------------------------------------------------------------------------------------


def _binary(fn: Any, torch_fn: Any) -> Handler:
    def handler(imp: _OnnxImporter, args, at):
        a, c = args
        if _any_node(args):
            return call(fn, imp.b, a, c)
        if _any_sym(args):
            return sym_arith(fn, scalar(a), scalar(c), imp.where)
        return torch_fn(a, c)

    return handler


_op("Add")(_binary(operator.add, torch.add))
_op("Sub")(_binary(operator.sub, torch.sub))
_op("Mul")(_binary(operator.mul, torch.mul))


@_op("Div")
def _div(imp: _OnnxImporter, args, at):
    a, c = args
    if _any_node(args):
        return call(operator.truediv, imp.b, a, c)
    if _any_sym(args):
        return sym_arith(operator.floordiv, scalar(a), scalar(c), imp.where)
    if not a.is_floating_point() and not c.is_floating_point():
        return torch.div(a, c, rounding_mode="trunc")
    return a / c


@_op("Neg")
def _neg(imp: _OnnxImporter, args, at):
    return call(operator.neg, imp.b, args[0]) if isinstance(args[0], Node) else -imp.const(args[0], "Neg")


def _maxmin(is_max: bool) -> Handler:
    def handler(imp: _OnnxImporter, args, at):
        if not _any_node(args):
            vals = [imp.const(a, "Max/Min operand") for a in args]
            out = vals[0]
            for v in vals[1:]:
                out = torch.maximum(out, v) if is_max else torch.minimum(out, v)
            return out
        if len(args) != 2 or not all(isinstance(a, Node) for a in args):
            raise UnsupportedOperatorError("ONNX Max/Min", imp.where, hint="only of two traced tensors")
        return (maximum if is_max else minimum)(imp.b, args[0], args[1], imp.cache)

    return handler


_op("Max")(_maxmin(True))
_op("Min")(_maxmin(False))


# -- constants and shapes --------------------------------------------------------------------------------------


@_op("Constant")
def _constant(imp: _OnnxImporter, args, at):
    import onnx.numpy_helper as nph

    if "value" in at:
        return imp._float(_to_torch(nph.to_array(at["value"])))
    for key, dt in (("value_float", torch.float32), ("value_floats", torch.float32)):
        if key in at:
            return torch.tensor(at[key], dtype=dt).to(imp.dtype)
    for key in ("value_int", "value_ints"):
        if key in at:
            return torch.tensor(at[key], dtype=torch.int64)
    raise UnsupportedOperatorError(f"ONNX Constant with {sorted(at)}", imp.where)


@_op("Shape")
def _shape(imp: _OnnxImporter, args, at):
    x = args[0]
    if isinstance(x, Node):
        full = SymShape((BATCH, *x.shape))
        start, end = at.get("start", 0), at.get("end", len(full))
        return SymShape(full[start:end])
    return torch.tensor(list(imp.const(x, "Shape").shape), dtype=torch.int64)


@_op("Cast")
def _cast(imp: _OnnxImporter, args, at):
    x = args[0]
    to = int(at.get("to", 1))
    if isinstance(x, Node):
        if to not in _FLOAT_TYPES:
            raise UnsupportedOperatorError(f"ONNX Cast of the traced tensor to type {to}", imp.where)
        return x
    if isinstance(x, SymShape) or is_batch(x):
        return x
    import onnx

    np_type = onnx.helper.tensor_dtype_to_np_dtype(to)
    return imp._float(_to_torch(x.numpy().astype(np_type)))


@_op("Gather")
def _gather(imp: _OnnxImporter, args, at):
    x, idx = args
    axis = int(at.get("axis", 0))
    idx = imp.const(idx, "Gather indices").long()
    if isinstance(x, SymShape):
        items = [x[int(i)] for i in idx.reshape(-1).tolist()]
        if idx.dim() == 0:  # a scalar: a 0-d int tensor, or BATCH
            return items[0] if is_batch(items[0]) else torch.tensor(int(items[0]))
        return SymShape(items)
    if isinstance(x, Node):
        ax = per_sample_axis(axis, len(x.shape) + 1, imp.where)
        pos = feature_index(x)
        size = x.shape[ax]
        picked = torch.index_select(pos, ax, (idx.reshape(-1) % size))
        shape = (*x.shape[:ax], *idx.shape, *x.shape[ax + 1 :])
        return select(imp.b, x, picked.reshape(shape))
    return torch.index_select(x, axis, idx.reshape(-1) % x.shape[axis]).reshape(
        *x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]
    )


def _axes(imp: _OnnxImporter, args, at) -> list[int] | None:
    if len(args) > 1 and args[1] is not None:
        return imp.ints(args[1], "axes")
    return list(at["axes"]) if "axes" in at else None


@_op("Unsqueeze")
def _unsqueeze(imp: _OnnxImporter, args, at):
    x, axes = args[0], _axes(imp, args, at)
    assert axes is not None
    if isinstance(x, Node):
        nd = len(x.shape) + 1 + len(axes)
        shape: list[int | None] = [None, *x.shape]
        for a in sorted(a + nd if a < 0 else a for a in axes):
            if a == 0:
                raise UnsupportedOperatorError("Unsqueeze before the batch dimension", imp.where)
            shape.insert(a, 1)
        return reshape(imp.b, x, tuple(int(s) for s in shape[1:]))  # type: ignore[arg-type]
    if is_batch(x) or isinstance(x, (int, float)):
        return SymShape([x])
    if isinstance(x, SymShape):
        raise UnsupportedOperatorError("Unsqueeze of a shape vector", imp.where)
    out = x
    for a in sorted(a + x.dim() + len(axes) if a < 0 else a for a in axes):
        out = out.unsqueeze(a)
    return out


@_op("Squeeze")
def _squeeze(imp: _OnnxImporter, args, at):
    x, axes = args[0], _axes(imp, args, at)
    if isinstance(x, Node):
        nd = len(x.shape) + 1
        drop = (
            {a + nd if a < 0 else a for a in axes}
            if axes is not None
            else {i + 1 for i, s in enumerate(x.shape) if s == 1}
        )
        if 0 in drop:
            raise UnsupportedOperatorError("Squeeze of the batch dimension", imp.where)
        return reshape(imp.b, x, tuple(s for i, s in enumerate(x.shape) if i + 1 not in drop))
    if isinstance(x, SymShape):
        if len(x) != 1:
            raise UnsupportedOperatorError("Squeeze of a shape vector", imp.where)
        return x[0]
    if axes is None:
        return x.squeeze()
    out = x
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        out = out.squeeze(a)
    return out


@_op("Concat")
def _concat(imp: _OnnxImporter, args, at):
    axis = int(at["axis"])
    if _any_node(args):
        if not all(isinstance(a, Node) for a in args):
            raise UnsupportedOperatorError("ONNX Concat of a traced tensor with a constant", imp.where)
        return concat(imp.b, args, per_sample_axis(axis, len(args[0].shape) + 1, imp.where))
    if _any_sym(args):
        items: list[Any] = []
        for a in args:
            items.extend(a if isinstance(a, SymShape) else ([a] if is_batch(a) else imp.ints(a, "shape")))
        return SymShape(items)
    return torch.cat(args, dim=axis)


@_op("Reshape")
def _reshape(imp: _OnnxImporter, args, at):
    x, shape = args
    target = list(shape) if isinstance(shape, SymShape) else imp.ints(shape, "Reshape shape")
    if isinstance(x, Node):
        allow_zero = not at.get("allowzero", 0)
        return reshape(imp.b, x, resolve_reshape(x, target, imp.where, allow_zero))
    x = imp.const(x, "Reshape input")
    target = [x.shape[i] if (s == 0 and not at.get("allowzero", 0)) else s for i, s in enumerate(target)]
    return x.reshape(target)


@_op("Flatten")
def _flatten(imp: _OnnxImporter, args, at):
    x = args[0]
    axis = int(at.get("axis", 1))
    if not isinstance(x, Node):
        x = imp.const(x, "Flatten")
        a = axis % max(x.dim(), 1) if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), -1)
    nd = len(x.shape) + 1
    a = axis + nd if axis < 0 else axis
    if a != 1 and math.prod(x.shape[: a - 1] if a > 0 else (2,)) != 1:
        raise UnsupportedOperatorError(f"ONNX Flatten(axis={axis})", imp.where, hint="it mixes the batch dimension")
    return call(torch.flatten, imp.b, x, 1)


@_op("Slice")
def _slice(imp: _OnnxImporter, args, at):
    x = args[0]
    if len(args) > 1:
        starts, ends = imp.ints(args[1], "Slice starts"), imp.ints(args[2], "Slice ends")
        axes = imp.ints(args[3], "Slice axes") if len(args) > 3 and args[3] is not None else None
        steps = imp.ints(args[4], "Slice steps") if len(args) > 4 and args[4] is not None else None
    else:  # opset < 10: attributes
        starts, ends, axes, steps = list(at["starts"]), list(at["ends"]), at.get("axes"), None
    if isinstance(x, SymShape):
        if axes not in (None, [0]) or (steps not in (None, [1])):
            raise UnsupportedOperatorError("ONNX Slice of a shape vector", imp.where)
        return SymShape(x[slice(starts[0], ends[0])])
    nd = len(x.shape) + 1 if isinstance(x, Node) else x.dim()
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list[slice] = [slice(None)] * nd
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st < 0:
            raise UnsupportedOperatorError("ONNX Slice with a negative step", imp.where)
        index[a % nd] = slice(s, e, st)
    if not isinstance(x, Node):
        return x[tuple(index)]
    if not is_full_range(index[0].start, index[0].stop, index[0].step):
        raise UnsupportedOperatorError("ONNX Slice of the batch dimension", imp.where)
    pos = feature_index(x)[tuple(index[1:])]
    return select(imp.b, x, pos)


@_op("Transpose")
def _transpose(imp: _OnnxImporter, args, at):
    x = args[0]
    perm = at.get("perm")
    if not isinstance(x, Node):
        x = imp.const(x, "Transpose")
        return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))
    if perm is None or perm[0] != 0:
        raise UnsupportedOperatorError("ONNX Transpose that moves the batch dimension", imp.where)
    return permute(imp.b, x, [p - 1 for p in perm[1:]])


@_op("TopK")
def _topk(imp: _OnnxImporter, args, at):
    x, k = args[0], scalar(imp.const(args[1], "TopK k"))
    if not isinstance(x, Node):
        raise UnsupportedOperatorError("ONNX TopK of a constant", imp.where)
    axis = per_sample_axis(int(at.get("axis", -1)), len(x.shape) + 1, imp.where)
    if axis != len(x.shape) - 1 or int(k) != x.shape[-1] or not at.get("sorted", 1):
        raise UnsupportedOperatorError(
            "ONNX TopK", imp.where, hint="only a full sort along the last axis (k = axis size) is supported"
        )
    return [sort_last(imp.b, x, descending=bool(at.get("largest", 1))), SortIndices(imp.where)]


def _wrap_indices_check() -> None:
    """Make every handler reject the TopK index output as an operand."""
    for name, fn in list(_OPS.items()):

        def checked(imp: _OnnxImporter, args, at, _fn=fn, _name=name):
            for a in args:
                if isinstance(a, SortIndices):
                    raise UnsupportedOperatorError("ONNX TopK indices output", a.where, hint=f"used by {_name}")
            return _fn(imp, args, at)

        _OPS[name] = checked


_wrap_indices_check()
