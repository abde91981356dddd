"""Incremental construction of a :class:`~lipbound.graph.ir.Graph`.

Shapes are inferred by evaluating each new op on an example input (batch of 1), so converters never compute
shapes by hand; the example values also let the tracer check that the graph reproduces the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.errors import InvalidModelError
from lipbound.graph.ir import Graph, Node
from lipbound.ops.base import ConstOp, InputOp, Op


class GraphBuilder:
    def __init__(self, example: Tensor, input_name: str = "x") -> None:
        """``example`` is one input with batch dimension, e.g. ``torch.zeros(1, *input_shape)``."""
        self.nodes: list[Node] = []
        self.values: dict[int, Tensor] = {}
        self._names: set[str] = set()
        self.input = self._push(input_name, InputOp(), (), example, "input")
        self.origin = ""  # set by the tracer: module path of the call being converted
        #: composite operators lowered into several nodes (see :meth:`composite`)
        self.composites: list[dict] = []

    def _unique(self, name: str) -> str:
        base, k = name.replace(".", "_") or "v", 1
        name = base
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def _push(self, name: str, op: Op, inputs: tuple[Node, ...], value: Tensor, origin: str) -> Node:
        node = Node(self._unique(name), op, inputs, tuple(value.shape[1:]), origin)
        self.nodes.append(node)
        self.values[id(node)] = value
        return node

    def add(self, op: Op, inputs: list[Node] | tuple[Node, ...], name: str | None = None) -> Node:
        """Append ``op(*inputs)``; the output shape comes from evaluating it on the example values."""
        inputs = tuple(inputs)
        try:
            with torch.no_grad():
                value = op.forward(*(self.values[id(i)] for i in inputs))
        except Exception as e:  # a shape error in the model itself
            raise InvalidModelError(f"{op.describe()} at {self.origin!r} failed on the example input: {e}") from e
        return self._push(name or op.name, op, inputs, value, self.origin)

    def composite(self, module, x: Node, out: Node, start: int, kind: str, group_size: int = 2) -> None:
        """Record that the nodes from index ``start`` up to ``out`` are the lowering of one ``module`` applied to
        ``x`` (MaxMin, GroupSort, Householder): analyses that know the operator whole (global bounds) read it from
        ``graph.meta["composites"]``, the local engine uses the lowered body. ``kind``: "maxmin", "groupsort" or
        "householder"; ``group_size``: features per group (on the first per-sample dimension)."""
        if out is not x:
            inner = [n.name for n in self.nodes[start:]]
            self.composites.append(
                {
                    "input": x.name,
                    "output": out.name,
                    "inner": inner,
                    "module": module,
                    "kind": kind,
                    "group_size": int(group_size),
                    "grouping": getattr(module, "grouping", "consecutive"),
                }
            )

    def const(self, value: Tensor, name: str = "const") -> Node:
        """A constant leaf (``value`` has a batch dimension of 1 and is broadcast over the batch)."""
        return self._push(name, ConstOp(value), (), value, self.origin)

    def value(self, node: Node) -> Tensor:
        return self.values[id(node)]

    def finish(self, output: Node, meta: dict | None = None) -> Graph:
        keep = {id(output)}
        for n in reversed(self.nodes):
            if id(n) in keep:
                keep.update(id(i) for i in n.inputs)
        nodes = [n for n in self.nodes if id(n) in keep or n is self.input]
        meta = dict(meta or {})
        names = {n.name for n in nodes}
        comps = [c for c in self.composites if c["output"] in names]
        if comps:
            meta["composites"] = comps
        return Graph(nodes, self.input, output, meta)
