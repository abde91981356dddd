"""Import a TorchScript module (``torch.jit.trace`` or ``torch.jit.script`` output) into a lipbound Graph.

The module's TorchScript graph is interpreted node by node. Calls of submodules (``prim::CallMethod``) are
followed recursively, so every op knows the module path it came from (``builder.origin``), and ``prim::GetAttr``
chains resolve to the module's parameters and attributes. Control flow (``prim::If``/``prim::Loop``) must have
conditions known at import time (``self.training``, shape checks), which holds for eval-mode feed-forward nets.

Every aten op on a traced tensor is translated into the equivalent torch call and dispatched through the
converters of :data:`~lipbound.ops.registry.REGISTRY` (the same ones ``torch.fx`` tracing uses); slices,
transposes, concatenation, ``maximum``/``minimum`` and sorts use the exact rebuilds of
:mod:`lipbound.graph.composite`. Everything that does not depend on the input (shape arithmetic, constants, weight
transposes) is evaluated, with the batch size kept symbolic (:mod:`lipbound.graph.symbolic`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lipbound.errors import InvalidModelError, ShapeMismatchError, UnsupportedOperatorError
from lipbound.graph.builder import GraphBuilder
from lipbound.graph.check import check_against
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
from lipbound.graph.ir import BATCH, Graph, Node
from lipbound.graph.mode import for_inference
from lipbound.graph.symbolic import is_batch, is_full_range, per_sample_axis, resolve_reshape, scalar, sym_arith
from lipbound.ops.catalog import REGISTRY


class _Module:
    """A (sub)module value inside the interpreter: the ScriptModule and its dotted path."""

    def __init__(self, module: torch.jit.ScriptModule, path: str) -> None:
        self.module, self.path = module, path

    @property
    def kind(self) -> str:
        return getattr(self.module, "original_name", type(self.module).__name__)


def input_shape_of(module: torch.jit.ScriptModule) -> tuple[int, ...] | None:
    """Per-sample input shape recorded in a traced module's graph (``None`` if not recorded, e.g. scripted)."""
    try:
        inputs = list(module.graph.inputs())
        sizes = inputs[1].type().sizes() if len(inputs) == 2 else None
    except (RuntimeError, AttributeError, IndexError):
        return None
    return tuple(int(s) for s in sizes[1:]) if sizes else None


def graph_from_torchscript(
    module: torch.jit.ScriptModule, input_shape: tuple[int, ...] | None = None, *, check: bool = True
) -> Graph:
    """Build a Graph from a TorchScript module for per-sample ``input_shape`` (default: the traced shape)."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise InvalidModelError(f"expected a torch.jit.ScriptModule, got {type(module).__name__}")
    if input_shape is None:
        input_shape = input_shape_of(module)
        if input_shape is None:
            raise ShapeMismatchError("the TorchScript module records no input shape; pass input_shape=(...)")
    input_shape = tuple(int(s) for s in input_shape)
    module = for_inference(module)
    try:
        forward_graph = module.graph
    except RuntimeError as e:
        raise InvalidModelError(f"the TorchScript module has no forward graph: {e}") from e
    n_inputs = len(list(forward_graph.inputs())) - 1
    if n_inputs != 1:
        raise InvalidModelError(f"models with exactly one input are supported; this one takes {n_inputs}")
    params = list(module.parameters())
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.get_default_dtype()
    device = params[0].device if params else torch.device("cpu")
    b = GraphBuilder(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    interp = _Interpreter(b)
    out = interp.run_graph(forward_graph, _Module(module, ""), [b.input])
    result = out[0] if len(out) == 1 else out
    if not isinstance(result, Node):
        raise InvalidModelError("the TorchScript module must return a single tensor that depends on its input")
    graph = b.finish(result, {"source": f"torchscript:{_Module(module, '').kind}"})
    graph.check_finite()
    if check:
        check_against(graph, module, input_shape)
    return graph


# --------------------------------------------------------------------------------------------------------------
# interpreter
# --------------------------------------------------------------------------------------------------------------

AtenHandler = Callable[["_Interpreter", list[Any]], Any]
_ATEN: dict[str, AtenHandler] = {}


_aten = registrar(_ATEN)


def supported_aten_ops() -> list[str]:
    """aten ops on traced tensors the importer translates."""
    return sorted(_ATEN)


class _Interpreter:
    def __init__(self, b: GraphBuilder) -> None:
        self.b = b
        self.cache: dict = {}
        self.module: _Module | None = None

    @property
    def where(self) -> str:
        return self.b.origin

    # graphs and blocks ----------------------------------------------------------------------------------------
    def run_graph(self, graph, module: _Module, args: list[Any]) -> list[Any]:
        env: dict[Any, Any] = {}
        inputs = list(graph.inputs())
        env[inputs[0].unique()] = module
        for v, a in zip(inputs[1:], args, strict=True):
            env[v.unique()] = a
        outer = self.module
        self.module = module
        try:
            self.run_nodes(graph.nodes(), env)
        finally:
            self.module = outer
        return [env[v.unique()] for v in graph.outputs()]

    def run_block(self, block, env: dict, args: list[Any]) -> list[Any]:
        for v, a in zip(block.inputs(), args, strict=True):
            env[v.unique()] = a
        self.run_nodes(block.nodes(), env)
        return [env[v.unique()] for v in block.outputs()]

    def run_nodes(self, nodes, env: dict) -> None:
        for n in nodes:
            kind = n.kind()
            assert self.module is not None
            self.b.origin = self.module.path or "<root>"
            args = [env[v.unique()] for v in n.inputs()]
            outs = list(n.outputs())
            if kind == "prim::If":
                cond = self.concrete_bool(args[0], n)
                blocks = list(n.blocks())
                res = self.run_block(blocks[0] if cond else blocks[1], env, [])
            elif kind == "prim::Loop":
                res = self.run_loop(n, args, env)
            else:
                res = self.run_node(n, kind, args)
                if len(outs) == 1:
                    res = [res]
            for v, r in zip(outs, res, strict=True):
                env[v.unique()] = r

    def concrete_bool(self, v: Any, n) -> bool:
        if isinstance(v, (bool, int)):
            return bool(v)
        if isinstance(v, Tensor) and v.numel() == 1:
            return bool(v.item())
        raise UnsupportedOperatorError("data-dependent control flow (prim::If)", self.where)

    def run_loop(self, n, args: list[Any], env: dict) -> list[Any]:
        trips, cond, state = args[0], args[1], list(args[2:])
        if is_batch(trips) or isinstance(trips, Node):
            raise UnsupportedOperatorError("loop over the batch or a traced value (prim::Loop)", self.where)
        block = next(iter(n.blocks()))
        i = 0
        while i < int(trips) and self.concrete_bool(cond, n):
            res = self.run_block(block, env, [i, *state])
            cond, state = res[0], res[1:]
            i += 1
        return state

    # single nodes ---------------------------------------------------------------------------------------------
    def run_node(self, n, kind: str, args: list[Any]) -> Any:
        if kind == "prim::Constant":
            return n.output().toIValue() if n.output().type().kind() != "FunctionType" else n.s("name")
        if kind == "prim::GetAttr":
            return self.get_attr(args[0], n.s("name"))
        if kind == "prim::CallMethod":
            return self.call_method(args[0], n.s("name"), args[1:])
        if kind == "prim::CallFunction":
            return self.call_function(n, args)
        if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            return list(args)
        if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            return list(args[0])
        if kind == "prim::TupleIndex":
            return args[0][args[1]]
        if kind in ("prim::NumToTensor", "aten::Int", "aten::Float", "aten::ScalarImplicit", "prim::unchecked_cast"):
            return args[0].item() if isinstance(args[0], Tensor) and kind != "prim::unchecked_cast" else args[0]
        if kind == "prim::RaiseException":
            raise InvalidModelError(f"the TorchScript module raises at {self.where!r}: {args[0]}")
        if kind in ("prim::Uninitialized", "prim::device", "prim::dtype", "aten::warn"):
            return None
        if kind.startswith("prim::") or kind.startswith("aten::"):
            if not any(isinstance(a, Node) for a in _flat(args)):
                return self.evaluate(n, kind, args)
            handler = _ATEN.get(kind)
            if handler is not None:
                return handler(self, args)
        assert self.module is not None
        raise UnsupportedOperatorError(kind, self.where, supported_aten_ops(), hint=f"inside module {self.module.kind}")

    def get_attr(self, owner: Any, name: str) -> Any:
        if not isinstance(owner, _Module):
            raise UnsupportedOperatorError(f"attribute {name!r} of a non-module value", self.where)
        value = getattr(owner.module, name)
        if isinstance(value, torch.jit.ScriptModule):
            return _Module(value, f"{owner.path}.{name}" if owner.path else name)
        if isinstance(value, Tensor):
            return value.detach()
        return value

    def call_method(self, owner: Any, name: str, args: list[Any]) -> Any:
        if not isinstance(owner, _Module):
            raise UnsupportedOperatorError(f"method {name!r} of a non-module value", self.where)
        try:
            graph = owner.module._c._get_method(name).graph
        except RuntimeError as e:
            raise InvalidModelError(f"module {owner.path or '<root>'!r} has no TorchScript method {name!r}") from e
        out = self.run_graph(graph, owner, args)
        return out[0] if len(out) == 1 else out

    def call_function(self, n, args: list[Any]) -> Any:
        """``prim::CallFunction`` of a scripted function: dispatch a ``torch.nn.functional`` one by name."""
        fn_type = n.inputsAt(0).type()
        qual = str(fn_type)
        name = args[0] if isinstance(args[0], str) else qual.rsplit(".", 1)[-1]
        fn = getattr(F, name, None) if qual.startswith("__torch__.torch.nn.functional.") else None
        conv = REGISTRY.functions.get(fn) if fn is not None else None
        if conv is None:
            raise UnsupportedOperatorError(
                f"function {qual.removeprefix('__torch__.')}", self.where, REGISTRY.supported()
            )
        if not any(isinstance(a, Node) for a in _flat(args[1:])):
            return fn(*args[1:])
        return conv(self.b, None, tuple(args[1:]), {})

    def evaluate(self, n, kind: str, args: list[Any]) -> Any:
        """Evaluate an op whose inputs do not depend on the model input (python scalars, lists, constants)."""
        if any(is_batch(a) for a in _flat(args)):
            return self.batch_scalar_op(kind, args)
        py = _PY_OPS.get(kind)
        if py is not None:
            return py(*args)
        return _eval_aten(n, kind, args, self.where)

    def batch_scalar_op(self, kind: str, args: list[Any]) -> Any:
        if kind in ("aten::size", "aten::dim"):  # a list containing BATCH
            raise UnsupportedOperatorError(kind, self.where, hint="on a shape list")
        if kind == "aten::__getitem__":
            return args[0][args[1]]
        if kind == "aten::len":
            return len(args[0])
        if kind in ("aten::eq", "aten::ne"):
            same = args[0] is args[1]
            return same if kind == "aten::eq" else not same
        fn = _PY_OPS.get(kind)
        if fn is None:
            raise UnsupportedOperatorError(f"{kind} on the batch size", self.where)
        return sym_arith(fn, args[0], args[1], self.where)


def _flat(args: list[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flat(list(a)))
        else:
            out.append(a)
    return out


def _py_div(a: Any, b: Any) -> Any:
    return scalar(a) / scalar(b)


_PY_OPS: dict[str, Callable[..., Any]] = {
    "aten::__getitem__": lambda a, i: a[i],
    "aten::len": len,
    "aten::eq": lambda a, b: scalar(a) == scalar(b),
    "aten::ne": lambda a, b: scalar(a) != scalar(b),
    "aten::lt": lambda a, b: scalar(a) < scalar(b),
    "aten::gt": lambda a, b: scalar(a) > scalar(b),
    "aten::le": lambda a, b: scalar(a) <= scalar(b),
    "aten::ge": lambda a, b: scalar(a) >= scalar(b),
    "aten::__not__": operator.not_,
    "aten::__and__": lambda a, b: a and b,
    "aten::__or__": lambda a, b: a or b,
    "aten::__is__": operator.is_,
    "aten::__isnot__": operator.is_not,
    "aten::floordiv": lambda a, b: scalar(a) // scalar(b),
    "aten::floor_divide": lambda a, b: scalar(a) // scalar(b),
    "aten::format": lambda fmt, *a: fmt.format(*a),
    "aten::str": str,
    "prim::max": lambda *a: max(a) if len(a) > 1 else max(a[0]),
    "prim::min": lambda *a: min(a) if len(a) > 1 else min(a[0]),
}
_SCALAR_ARITH = {"aten::add": operator.add, "aten::sub": operator.sub, "aten::mul": operator.mul}


def _eval_aten(n, kind: str, args: list[Any], where: str) -> Any:
    """Evaluate a constant aten op through ``torch.ops`` with the node's schema."""
    if kind in _SCALAR_ARITH and all(isinstance(a, (int, float)) for a in args):
        return _SCALAR_ARITH[kind](args[0], args[1])
    if kind == "aten::div" and all(isinstance(a, (int, float)) for a in args[:2]):
        return _py_div(args[0], args[1])
    try:
        schema = n.schema()
        op_name, _, overload = schema.split("(", 1)[0].partition(".")
        packet = getattr(torch.ops.aten, op_name.split("::", 1)[1])
        fn = getattr(packet, overload) if overload else packet.default
        parsed = torch._C.parse_schema(schema)
        pos = [a for a, s in zip(args, parsed.arguments, strict=False) if not s.kwarg_only]
        kw = {s.name: a for a, s in zip(args, parsed.arguments, strict=False) if s.kwarg_only}
        return fn(*pos, **kw)
    except Exception as e:
        raise UnsupportedOperatorError(kind, where, hint=f"could not evaluate it on constants: {e}") from e


# --------------------------------------------------------------------------------------------------------------
# aten ops on traced tensors
# --------------------------------------------------------------------------------------------------------------


def _arg(args: list[Any], i: int, default: Any = None) -> Any:
    return args[i] if len(args) > i else default


@_aten("aten::linear")
def _linear(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.linear, it.b, a[0], a[1], _arg(a, 2))


@_aten("aten::matmul", "aten::mm")
def _matmul(it: _Interpreter, a: list[Any]) -> Any:
    x, w = a
    if isinstance(x, Node) and isinstance(w, Tensor) and w.dim() == 2:
        return call(F.linear, it.b, x, w.T, None)
    raise UnsupportedOperatorError("aten::matmul", it.where, hint="only traced input @ constant matrix is linear")


@_aten("aten::addmm")
def _addmm(it: _Interpreter, a: list[Any]) -> Any:
    bias, x, w = a[0], a[1], a[2]
    beta, alpha = float(_arg(a, 3, 1)), float(_arg(a, 4, 1))
    if not (isinstance(x, Node) and isinstance(w, Tensor) and w.dim() == 2 and not isinstance(bias, Node)):
        raise UnsupportedOperatorError("aten::addmm", it.where, hint="only bias + input @ constant is supported")
    bias = beta * bias.reshape(-1).expand(w.shape[1]).clone() if isinstance(bias, Tensor) else None
    return call(F.linear, it.b, x, alpha * w.T, bias)


@_aten("aten::conv2d")
def _conv2d(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.conv2d, it.b, a[0], a[1], a[2], a[3], a[4], a[5], a[6])


@_aten("aten::_convolution", "aten::convolution")
def _convolution(it: _Interpreter, a: list[Any]) -> Any:
    x, w, bias, stride, padding, dilation, transposed, _out_pad, groups = a[:9]
    if transposed or not isinstance(w, Tensor) or w.dim() != 4:
        raise UnsupportedOperatorError("aten::_convolution", it.where, hint="only 2-D, non-transposed convolutions")
    return call(F.conv2d, it.b, x, w, bias, stride, padding, dilation, groups)


def _unary(fn: Any) -> AtenHandler:
    def handler(it: _Interpreter, a: list[Any]) -> Any:
        return call(fn, it.b, a[0])

    return handler


for _n, _f in (("relu", torch.relu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
    _aten(f"aten::{_n}", f"aten::{_n}_")(_unary(_f))


@_aten("aten::leaky_relu", "aten::leaky_relu_")
def _leaky(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.leaky_relu, it.b, a[0], float(scalar(_arg(a, 1, 0.01))))


@_aten("aten::gelu", "aten::gelu_")
def _gelu(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.gelu, it.b, a[0], approximate=str(_arg(a, 1, "none")))


@_aten("aten::silu", "aten::silu_")
def _silu(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.silu, it.b, a[0])


@_aten("aten::add", "aten::add_")
def _add(it: _Interpreter, a: list[Any]) -> Any:
    return (
        call(operator.add, it.b, a[0], a[1])
        if scalar(_arg(a, 2, 1)) == 1
        else call(torch.add, it.b, a[0], a[1], alpha=scalar(a[2]))
    )


@_aten("aten::sub", "aten::sub_")
def _sub(it: _Interpreter, a: list[Any]) -> Any:
    return call(torch.sub, it.b, a[0], a[1], alpha=scalar(_arg(a, 2, 1)))


@_aten("aten::rsub")
def _rsub(it: _Interpreter, a: list[Any]) -> Any:  # other - alpha * self
    return call(torch.sub, it.b, a[1], a[0], alpha=scalar(_arg(a, 2, 1)))


@_aten("aten::mul", "aten::mul_")
def _mul(it: _Interpreter, a: list[Any]) -> Any:
    return call(operator.mul, it.b, a[0], a[1])


@_aten("aten::div", "aten::div_")
def _div(it: _Interpreter, a: list[Any]) -> Any:
    if _arg(a, 2) is not None:
        raise UnsupportedOperatorError(f"aten::div(rounding_mode={a[2]!r})", it.where)
    return call(operator.truediv, it.b, a[0], a[1])


@_aten("aten::neg")
def _neg(it: _Interpreter, a: list[Any]) -> Any:
    return call(operator.neg, it.b, a[0])


@_aten("aten::flatten")
def _flatten(it: _Interpreter, a: list[Any]) -> Any:
    return call(torch.flatten, it.b, a[0], _arg(a, 1, 0), _arg(a, 2, -1))


@_aten("aten::view", "aten::reshape")
def _reshape(it: _Interpreter, a: list[Any]) -> Any:
    x, target = a[0], list(a[1])
    return reshape(it.b, x, resolve_reshape(x, target, it.where))


@_aten("aten::unsqueeze")
def _unsqueeze(it: _Interpreter, a: list[Any]) -> Any:
    x, dim = a
    shape = torch.empty(1, *x.shape, device="meta").unsqueeze(dim).shape
    if shape[0] != 1 or dim % (len(x.shape) + 2) == 0:
        raise UnsupportedOperatorError("aten::unsqueeze before the batch dimension", it.where)
    return reshape(it.b, x, tuple(shape[1:]))


@_aten("aten::squeeze")
def _squeeze(it: _Interpreter, a: list[Any]) -> Any:
    x = a[0]
    nd = len(x.shape) + 1
    dims = _arg(a, 1)
    dims = [i + 1 for i, s in enumerate(x.shape) if s == 1] if dims is None else dims
    dims = {d % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    if 0 in dims:
        raise UnsupportedOperatorError("aten::squeeze of the batch dimension", it.where)
    return reshape(it.b, x, tuple(s for i, s in enumerate(x.shape) if not (i + 1 in dims and s == 1)))


@_aten("aten::batch_norm")
def _batch_norm(it: _Interpreter, a: list[Any]) -> Any:
    x, weight, bias, mean, var, training, momentum, eps = a[:8]
    return call(F.batch_norm, it.b, x, mean, var, weight, bias, bool(training), momentum, eps)


@_aten("aten::avg_pool2d")
def _avg_pool2d(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.avg_pool2d, it.b, *a[:7])


@_aten("aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::alpha_dropout")
def _dropout(it: _Interpreter, a: list[Any]) -> Any:
    return call(F.dropout, it.b, a[0], scalar(a[1]), bool(a[2]))


@_aten("aten::contiguous", "aten::detach", "aten::clone")
def _identity(it: _Interpreter, a: list[Any]) -> Any:
    return a[0]


@_aten("aten::size")
def _size(it: _Interpreter, a: list[Any]) -> Any:
    full = (BATCH, *a[0].shape)
    return list(full) if len(a) == 1 else full[a[1]]


@_aten("aten::dim")
def _dim(it: _Interpreter, a: list[Any]) -> Any:
    return len(a[0].shape) + 1


@_aten("aten::slice")
def _slice(it: _Interpreter, a: list[Any]) -> Any:
    x, dim, start, end, step = a[0], _arg(a, 1, 0), _arg(a, 2), _arg(a, 3), _arg(a, 4, 1)
    nd = len(x.shape) + 1
    if dim % nd == 0:
        if is_full_range(start, end, step):
            return x
        raise UnsupportedOperatorError("aten::slice of the batch dimension", it.where)
    ax = per_sample_axis(dim, nd, it.where)
    index = [slice(None)] * len(x.shape)
    index[ax] = slice(start, end, step)
    return select(it.b, x, feature_index(x)[tuple(index)])


@_aten("aten::select")
def _select(it: _Interpreter, a: list[Any]) -> Any:
    x, dim, i = a
    ax = per_sample_axis(dim, len(x.shape) + 1, it.where)
    return select(it.b, x, feature_index(x).select(ax, i))


@_aten("aten::cat", "aten::concat")
def _cat(it: _Interpreter, a: list[Any]) -> Any:
    xs, dim = list(a[0]), _arg(a, 1, 0)
    if not all(isinstance(x, Node) for x in xs):
        raise UnsupportedOperatorError("aten::cat of a traced tensor with a constant", it.where)
    return concat(it.b, xs, per_sample_axis(dim, len(xs[0].shape) + 1, it.where))


def _maxmin(is_max: bool) -> AtenHandler:
    name, rebuild = ("max", maximum) if is_max else ("min", minimum)

    def handler(it: _Interpreter, a: list[Any]) -> Any:
        if len(a) != 2 or not all(isinstance(x, Node) for x in a):
            hint = f"only the elementwise {name} of two traced tensors"
            raise UnsupportedOperatorError(f"aten::{name}", it.where, hint=hint)
        return rebuild(it.b, a[0], a[1], it.cache)

    return handler


_aten("aten::maximum", "aten::max")(_maxmin(True))
_aten("aten::minimum", "aten::min")(_maxmin(False))


@_aten("aten::sort")
def _sort(it: _Interpreter, a: list[Any]) -> Any:
    x = a[0]
    # aten::sort(self, dim=-1, descending=False) or sort.stable(self, *, stable, dim, descending)
    dim, desc = (a[1], a[2]) if not isinstance(a[1], (bool, type(None))) else (a[2], a[3])
    if per_sample_axis(dim, len(x.shape) + 1, it.where) != len(x.shape) - 1:
        raise UnsupportedOperatorError("aten::sort", it.where, hint="only along the last axis")
    return [sort_last(it.b, x, descending=bool(desc)), SortIndices(it.where)]


@_aten("aten::t", "aten::transpose", "aten::permute")
def _permute(it: _Interpreter, a: list[Any]) -> Any:
    x = a[0]
    nd = len(x.shape) + 1
    if a and len(a) == 3:
        perm = list(range(nd))
        d0, d1 = a[1] % nd, a[2] % nd
        perm[d0], perm[d1] = perm[d1], perm[d0]
    elif len(a) == 2:
        perm = [p % nd for p in a[1]]
    else:
        raise UnsupportedOperatorError("aten::t of a traced tensor", it.where)
    if perm[0] != 0:
        raise UnsupportedOperatorError("a transpose that moves the batch dimension", it.where)
    return permute(it.b, x, [p - 1 for p in perm[1:]])
