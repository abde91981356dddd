"""Turn an ``nn.Module`` into a lipbound :class:`~lipbound.graph.ir.Graph` with ``torch.fx``.

Modules registered in :data:`~lipbound.ops.registry.REGISTRY` are kept as leaves (so ``lipbound.nn.MaxMin`` is
one op, not its implementation); every other call must be a registered function or tensor method. The traced
graph is checked against the module's own output on a random example.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from lipbound.errors import InvalidModelError, UnsupportedOperatorError
from lipbound.graph.builder import GraphBuilder
from lipbound.graph.check import check_against
from lipbound.graph.ir import BATCH, BatchDim, Graph, Node  # noqa: F401  (BatchDim: re-exported, its former home)
from lipbound.graph.mode import for_inference
from lipbound.ops.catalog import REGISTRY


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in REGISTRY.modules:
            return True
        return super().is_leaf_module(m, qualname)


def _callable_name(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)
    return f"{mod}.{name}" if mod else name


def trace(model: nn.Module, input_shape: tuple[int, ...], *, check: bool = True) -> Graph:
    """Trace ``model`` for per-sample ``input_shape`` into a Graph (in eval mode: :mod:`lipbound.graph.mode`)."""
    if not isinstance(model, nn.Module):
        raise InvalidModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        from lipbound.graph.torchscript import graph_from_torchscript

        return graph_from_torchscript(model, input_shape)
    model = for_inference(model)
    try:
        fx_graph = _LeafTracer().trace(model)
    except Exception as e:
        raise InvalidModelError(
            f"torch.fx could not trace {type(model).__name__} (data-dependent control flow?): {e}"
        ) from e

    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float64
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    b = GraphBuilder(example)
    env: dict[fx.Node, Any] = {}
    modules = dict(model.named_modules())
    placeholders = 0

    def lookup(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n])

    for n in fx_graph.nodes:
        b.origin = str(n.target) if n.op == "call_module" else n.name
        if n.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                raise InvalidModelError("models with more than one input are not supported")
            env[n] = b.input
        elif n.op == "get_attr":
            obj: Any = model
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            env[n] = obj.detach() if isinstance(obj, Tensor) else obj
        elif n.op == "call_module":
            mod = modules[str(n.target)]
            conv = REGISTRY.modules.get(type(mod))
            if conv is None:
                raise UnsupportedOperatorError(type(mod).__name__, str(n.target), REGISTRY.supported())
            env[n] = conv(b, mod, lookup(n.args), lookup(n.kwargs))
        elif n.op == "call_function":
            env[n] = _call(b, n.target, REGISTRY.functions.get(n.target), lookup(n.args), lookup(n.kwargs), n)
        elif n.op == "call_method":
            env[n] = _call(b, n.target, REGISTRY.methods.get(str(n.target)), lookup(n.args), lookup(n.kwargs), n)
        elif n.op == "output":
            out = lookup(n.args[0])
            if not isinstance(out, Node):
                raise InvalidModelError("the model must return a single tensor")
            graph = b.finish(out, {"source": type(model).__name__})
            break
    else:  # pragma: no cover - fx graphs always end with output
        raise InvalidModelError("traced graph has no output")

    graph.check_finite()
    if check:
        check_against(graph, model, input_shape)
    return graph


def _call(b: GraphBuilder, target: Any, conv: Any, args: tuple, kwargs: dict, n: fx.Node) -> Any:
    tensor_args = [a for a in fx.node.map_aggregate(args, lambda x: x) if isinstance(a, Node)]
    # shape queries and python arithmetic on them are evaluated concretely
    if target in ("size", "dim") or target is getattr:
        return _shape_query(b, target, args)
    if not tensor_args and target in (operator.mul, operator.add, operator.sub, operator.floordiv):
        return target(*args)
    if conv is None:
        name = target if isinstance(target, str) else _callable_name(target)
        raise UnsupportedOperatorError(str(name), n.name, REGISTRY.supported())
    return conv(b, None, args, kwargs)


def _shape_query(b: GraphBuilder, target: Any, args: tuple) -> Any:
    x = args[0]
    if not isinstance(x, Node):
        return target(*args) if callable(target) else getattr(x, target)(*args[1:])
    full = (BATCH, *x.shape)
    if target == "dim":
        return len(full)
    if target == "size":
        return full[args[1]] if len(args) > 1 else full
    if target is getattr and args[1] == "shape":
        return full
    raise UnsupportedOperatorError(f"getattr {args[1]!r}", "tensor attribute", REGISTRY.supported())
