"""The backward (Jacobian) graph, built automatically from a forward graph.

For output directions ``c`` (``K`` rows) the backward graph computes ``g_x = J(x)^T c = grad_x c^T f(x)`` with
reverse-mode rules taken from each op (:meth:`jacobian`):

* linear op ``v = M(w_1..w_k) + b``: ``g_{w_i} += M_i^T g_v`` (:class:`TransposedLinear`, exact);
* elementwise ``v = sigma(z)``: ``g_z = sigma'(z) * g_v`` (:class:`GatedProduct`), where the gate
  ``d = sigma'(z)`` ranges over the Clarke derivative range ``[d_l, d_u]`` of ``sigma`` on the forward bounds
  ``[l_z, u_z]`` -- for ReLU ``{1}`` (stable active), ``{0}`` (stable inactive) or ``[0, 1]`` (unstable);
* a node with several consumers receives the sum of their contributions (:class:`~lipbound.ops.arith.WeightedSum`).

Its input leaf is ``c`` itself (a degenerate box ``[c, c]``) and ``K`` is folded into the batch: backward tensors
have batch ``B*K``. Bounding the backward graph with :func:`lipbound.engine.forward.bound_nodes` then gives
elementwise Jacobian bounds; every relaxation lives in :class:`GatedProduct`:

* ``"crown"`` (Shi et al. 2022): with ``d`` free in ``[d_l, d_u]``, ``h = d g`` lies between
  ``min(d_l g, d_u g)`` (concave in ``g``) and ``max(d_l g, d_u g)`` (convex); on ``g in [l_g, u_g]`` the tightest
  linear bounds are the two chords. For ReLU this is ``-relu(-g) <= h <= relu(g)`` relaxed by chords, keeping
  ``h`` linear in ``g`` so correlations survive through ``W^T``.
* ``"interval"`` (RecurJac / Fast-Lip style baseline): an unstable product is replaced by its interval
  ``[min, max]`` of ``{d_l, d_u} x {l_g, u_g}``; stable products (``d_l = d_u``) stay exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.graph.ir import Graph, Node
from lipbound.ops.arith import WeightedSum
from lipbound.ops.base import Bounds, ElementwiseOp, InputOp, LinearOp, Op, chord_relaxation

RELAXATIONS = ("crown", "interval")


class TransposedLinear(LinearOp):
    """The adjoint ``g -> M^T g`` of a single-input linear op ``M`` (its own adjoint is ``M``)."""

    name = "transpose"

    def __init__(self, op: LinearOp) -> None:
        self.op = op

    def apply(self, y: Tensor) -> Tensor:
        return self.op.apply_transpose(y)[0]

    def apply_transpose(self, x: Tensor) -> tuple[Tensor]:
        return (self.op.apply(x),)

    def abs(self) -> TransposedLinear:
        return TransposedLinear(self.op.abs())

    def describe(self) -> str:
        return f"T({self.op.describe()})"


class GatedProduct(ElementwiseOp):
    """``h = d * g`` with the gate ``d`` known only to lie in ``[d_l, d_u]`` (elementwise, batch ``B*K``)."""

    name = "gated_product"

    def __init__(self, d_lower: Tensor, d_upper: Tensor, relaxation: str = "crown", source: str = "") -> None:
        self.d_lower, self.d_upper = d_lower, d_upper
        self.relaxation = relaxation
        self.source = source

    def forward(self, g: Tensor) -> Tensor:
        if not torch.equal(self.d_lower, self.d_upper):
            raise ValueError("a gated product can only be evaluated when its gate is fixed (d_l == d_u)")
        return self.d_lower * g

    def _products(self, l: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dl, du = self._gates(l)
        return dl * l, du * l, dl * u, du * u

    def _gates(self, like: Tensor) -> tuple[Tensor, Tensor]:
        dl, du = self.d_lower, self.d_upper
        if like.dim() == dl.dim() + 1:  # a specification dim was inserted at 1
            dl, du = dl.unsqueeze(1), du.unsqueeze(1)
        return dl, du

    def interval(self, b: Bounds) -> Bounds:
        p = torch.stack(self._products(*b))
        return p.min(0).values, p.max(0).values

    def relax(self, l, u, alpha=None):
        dl, du = self._gates(l)
        dl_l, du_l, dl_u, du_u = dl * l, du * l, dl * u, du * u
        fixed = dl == du
        if self.relaxation == "interval":
            lo = torch.minimum(torch.minimum(dl_l, du_l), torch.minimum(dl_u, du_u))
            hi = torch.maximum(torch.maximum(dl_l, du_l), torch.maximum(dl_u, du_u))
            zero = torch.zeros_like(lo)
            return (
                torch.where(fixed, dl.expand_as(lo), zero),
                torch.where(fixed, zero, lo),
                torch.where(fixed, dl.expand_as(lo), zero),
                torch.where(fixed, zero, hi),
            )
        # upper: phi(g) = max(d_l g, d_u g), convex -> chord; lower: min(.), concave -> chord
        uw, ub = chord_relaxation(torch.maximum(dl_l, du_l), torch.maximum(dl_u, du_u), l, u)
        lw, lb = chord_relaxation(torch.minimum(dl_l, du_l), torch.minimum(dl_u, du_u), l, u)
        # where g has a fixed sign (or the gate is fixed) phi is linear: use the exact slope
        pos, neg = l >= 0, u <= 0
        zero = torch.zeros_like(uw)
        uw = torch.where(
            fixed, dl.expand_as(uw), torch.where(pos, du.expand_as(uw), torch.where(neg, dl.expand_as(uw), uw))
        )
        ub = torch.where(fixed | pos | neg, zero, ub)
        lw = torch.where(
            fixed, dl.expand_as(lw), torch.where(pos, dl.expand_as(lw), torch.where(neg, du.expand_as(lw), lw))
        )
        lb = torch.where(fixed | pos | neg, zero, lb)
        return lw, lb, uw, ub

    def to(self, dtype=None, device=None) -> GatedProduct:
        return GatedProduct(
            self.d_lower.to(device=device, dtype=dtype),
            self.d_upper.to(device=device, dtype=dtype),
            self.relaxation,
            self.source,
        )

    def describe(self) -> str:
        return f"gate[{self.source}]"


class JacobianBuilder:
    """Collects backward nodes; handed to every op's :meth:`jacobian` rule."""

    def __init__(self, gate_bounds, relaxation: str, dtype: torch.dtype) -> None:
        self.nodes: list[Node] = []
        self.gate_bounds = gate_bounds  # callable(act_op, z_node) -> (d_l, d_u) with batch B*K
        self.relaxation = relaxation
        self.dtype = dtype

    def add(self, op: Op, inputs: list[Node], shape: tuple[int, ...] | None = None, name: str = "") -> Node:
        shape = inputs[0].shape if shape is None else shape
        node = Node(f"g{len(self.nodes)}_{name or op.name}", op, tuple(inputs), tuple(shape))
        self.nodes.append(node)
        return node

    def transpose(self, op: LinearOp, g: Node, in_shape: tuple[int, ...] | None = None) -> Node:
        return self.add(TransposedLinear(op), [g], shape=self._target_shape)

    def gate(self, act: ElementwiseOp, z: Node, g: Node) -> Node:
        dl, du = self.gate_bounds(act, z)
        return self.add(GatedProduct(dl, du, self.relaxation, z.origin or z.name), [g], shape=z.shape)

    # the shape of the forward input whose gradient is being produced (set by build_jacobian_graph)
    _target_shape: tuple[int, ...] = ()


def build_jacobian_graph(
    graph: Graph,
    forward_bounds: dict[int, Bounds],
    num_directions: int,
    relaxation: str = "crown",
) -> tuple[Graph, Node]:
    """Backward graph of ``graph`` for ``K = num_directions`` output directions.

    Returns the backward :class:`Graph` (input leaf: ``c`` of per-sample shape ``output.shape``, batch ``B*K``)
    and its output node ``g_x`` (per-sample shape ``input.shape``).
    """
    if relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    k = num_directions
    sample = next(iter(forward_bounds.values()))[0] if forward_bounds else None
    dtype = sample.dtype if sample is not None else torch.get_default_dtype()

    def gate_bounds(act: ElementwiseOp, z: Node) -> Bounds:
        l, u = forward_bounds[id(z)]
        dl, du = act.derivative_bounds(l, u)
        return dl.repeat_interleave(k, dim=0), du.repeat_interleave(k, dim=0)

    jb = JacobianBuilder(gate_bounds, relaxation, dtype)
    c_node = Node("c", InputOp(), (), graph.output.shape, "output direction c")
    pending: dict[int, list[Node]] = {id(graph.output): [c_node]}
    grads: dict[int, Node] = {}
    for node in reversed(graph.nodes):
        contribs = pending.pop(id(node), None)
        if contribs is None:
            continue
        if len(contribs) == 1:
            g = contribs[0]
        else:
            g = jb.add(WeightedSum([1.0] * len(contribs)), contribs, shape=node.shape, name="accumulate")
        grads[id(node)] = g
        if not node.inputs:
            continue
        jb._target_shape = node.inputs[0].shape
        outs = node.op.jacobian(jb, node, g)
        for inp, gi in zip(node.inputs, outs, strict=True):
            if gi is not None:
                pending.setdefault(id(inp), []).append(gi)
    g_x = grads.get(id(graph.input))
    if g_x is None:  # the output does not depend on the input: zero gradient
        g_x = jb.add(ZeroMap(graph.output.shape, graph.input.shape), [c_node], shape=graph.input.shape, name="zero")
    nodes = [c_node, *jb.nodes]
    back = Graph(nodes, c_node, g_x, {"kind": "jacobian", "directions": k, "relaxation": relaxation})
    return back, g_x


class ZeroMap(LinearOp):
    """The zero linear map from ``in_shape`` to ``out_shape`` (the gradient of a constant function)."""

    name = "zero"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def apply(self, x: Tensor) -> Tensor:
        return x.new_zeros(*x.shape[: x.dim() - len(self.in_shape)], *self.out_shape)

    def apply_transpose(self, y: Tensor) -> tuple[Tensor]:
        return (y.new_zeros(*y.shape[: y.dim() - len(self.out_shape)], *self.in_shape),)

    def abs(self) -> ZeroMap:
        return self
