"""The single registry of supported operators.

Each op module (``lipbound/ops/<op>.py``) defines its :class:`~lipbound.ops.base.Op` subclass -- forward,
interval, linear-relaxation and Jacobian rules -- and registers *converters* that turn a traced PyTorch call into
graph nodes::

    @REGISTRY.module(nn.Linear, name="Linear")
    def _convert(builder, module, args, kwargs): ...

    @REGISTRY.function(torch.relu, F.relu, name="ReLU")
    @REGISTRY.method("relu", name="ReLU")
    def _convert(builder, module, args, kwargs): ...

A converter receives the :class:`~lipbound.graph.builder.GraphBuilder`, the ``nn.Module`` (or ``None``) and the
call's arguments, where traced tensors are graph :class:`~lipbound.graph.ir.Node` objects and everything else is
a Python/tensor constant. It returns the Node holding the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Converter = Callable[..., Any]


@dataclass
class OpRegistry:
    modules: dict[type, Converter] = field(default_factory=dict)
    functions: dict[Any, Converter] = field(default_factory=dict)
    methods: dict[str, Converter] = field(default_factory=dict)
    #: human-readable names of supported ops -> where they come from (for docs and error messages)
    names: dict[str, set[str]] = field(default_factory=dict)

    def _note(self, name: str, what: str) -> None:
        self.names.setdefault(name, set()).add(what)

    def module(self, *types: type, name: str) -> Callable[[Converter], Converter]:
        def deco(fn: Converter) -> Converter:
            for t in types:
                self.modules[t] = fn
                self._note(name, f"{t.__module__}.{t.__qualname__}")
            return fn

        return deco

    def function(self, *fns: Any, name: str) -> Callable[[Converter], Converter]:
        def deco(fn: Converter) -> Converter:
            for f in fns:
                self.functions[f] = fn
                self._note(name, getattr(f, "__name__", str(f)))
            return fn

        return deco

    def method(self, *method_names: str, name: str) -> Callable[[Converter], Converter]:
        def deco(fn: Converter) -> Converter:
            for m in method_names:
                self.methods[m] = fn
                self._note(name, f"Tensor.{m}")
            return fn

        return deco

    def supported(self) -> list[str]:
        """Names of all supported operators."""
        return sorted(self.names)


REGISTRY = OpRegistry()
