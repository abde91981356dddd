"""Graph IR: a DAG of :class:`Node` objects, each holding one :class:`~lipbound.ops.base.Op`.

Shapes are per sample (no batch dimension). A graph has exactly one input leaf and one output node. The same IR
holds forward networks and the backward (Jacobian) graphs built from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lipbound.errors import InvalidModelError, ShapeMismatchError
from lipbound.ops.base import ConstOp, InputOp, Op


class BatchDim:
    """Stands for ``x.size(0)`` (the batch size) during tracing, so reshapes stay batch-agnostic.

    It lives in the IR (not in the tracer) because the ops' converters (``view``/``reshape``) test for it."""

    def __repr__(self) -> str:
        return "<batch>"


BATCH = BatchDim()


@dataclass(eq=False)
class Node:
    """One value of the graph: ``op(*inputs)`` with per-sample ``shape``; ``origin`` says where it came from."""

    name: str
    op: Op
    inputs: tuple[Node, ...]
    shape: tuple[int, ...]
    origin: str = ""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __repr__(self) -> str:
        ins = ", ".join(i.name for i in self.inputs)
        return f"Node({self.name} = {self.op.describe()}({ins}) : {self.shape})"


@dataclass(eq=False)
class Graph:
    """A DAG with nodes in topological order; ``input`` is the single input leaf."""

    nodes: list[Node]
    input: Node
    output: Node
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for n in self.nodes:
            for i in n.inputs:
                if id(i) not in seen:
                    raise ValueError(f"graph is not topologically ordered at {n.name}")
            seen.add(id(n))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape

    def consumers(self) -> dict[int, list[Node]]:
        out: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[id(i)].append(n)
        return out

    def ancestors(self, target: Node) -> list[Node]:
        """Nodes ``target`` depends on (inclusive), in topological order."""
        need = {id(target)}
        for n in reversed(self.nodes):
            if id(n) in need:
                need.update(id(i) for i in n.inputs)
        return [n for n in self.nodes if id(n) in need]

    def forward(self, x: Tensor, upto: Iterable[Node] | None = None) -> dict[int, Tensor]:
        """Evaluate every node at ``x`` (shape ``(B, *input_shape)``); returns ``{id(node): value}``."""
        if tuple(x.shape[1:]) != self.input.shape:
            raise ShapeMismatchError(
                f"input has per-sample shape {tuple(x.shape[1:])}, the model expects {self.input.shape}"
            )
        vals: dict[int, Tensor] = {}
        nodes = self.nodes if upto is None else self.ancestors_of(upto)
        for n in nodes:
            if isinstance(n.op, InputOp):
                vals[id(n)] = x
            elif isinstance(n.op, ConstOp):
                vals[id(n)] = n.op.forward()
            else:
                vals[id(n)] = n.op.forward(*(vals[id(i)] for i in n.inputs))
        return vals

    def ancestors_of(self, targets: Iterable[Node]) -> list[Node]:
        need = {id(t) for t in targets}
        for n in reversed(self.nodes):
            if id(n) in need:
                need.update(id(i) for i in n.inputs)
        return [n for n in self.nodes if id(n) in need]

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)[id(self.output)]

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Graph:
        """A copy with every op's tensors cast to ``dtype``/``device``."""
        mapping: dict[int, Node] = {}
        nodes = []
        for n in self.nodes:
            m = Node(n.name, n.op.to(dtype, device), tuple(mapping[id(i)] for i in n.inputs), n.shape, n.origin)
            mapping[id(n)] = m
            nodes.append(m)
        return Graph(nodes, mapping[id(self.input)], mapping[id(self.output)], dict(self.meta))

    def check_finite(self) -> None:
        """Raise :class:`InvalidModelError` naming the first node with NaN/inf parameters."""
        for n in self.nodes:
            for t in n.op.parameters():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise InvalidModelError(
                        f"non-finite (NaN or inf) parameters in {n.op.describe()} at {n.origin or n.name!r}"
                    )

    def summary(self) -> str:
        return "\n".join(repr(n) for n in self.nodes)
