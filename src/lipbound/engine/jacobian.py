"""The backward (Jacobian) graph, built automatically from a forward graph.

For output directions ``c`` (``K`` rows) the backward graph computes ``g_x = J(x)^T c = grad_x c^T f(x)`` with
reverse-mode rules taken from each op (:meth:`jacobian`):

* linear op ``v = M(w_1..w_k) + b``: ``g_{w_i} += M_i^T g_v`` (:class:`TransposedLinear`, exact);
* elementwise ``v = sigma(z)``: ``g_z = sigma'(z) * g_v`` (:class:`GatedProduct`), where the gate
  ``d = sigma'(z)`` ranges over the Clarke derivative range ``[d_l, d_u]`` of ``sigma`` on the forward bounds
  ``[l_z, u_z]`` -- for ReLU ``{1}`` (stable active), ``{0}`` (stable inactive) or ``[0, 1]`` (unstable);
* a node with several consumers receives the sum of their contributions (:class:`~lipbound.ops.arith.WeightedSum`).

The backward nodes are appended to the forward graph (one combined graph with input ``x`` and constant ``c``;
``K`` directions are folded into the batch, so the box is repeated ``K`` times). Bounding the combined graph with
:func:`lipbound.engine.forward.bound_nodes` gives elementwise Jacobian bounds; every relaxation lives in
:class:`GatedProduct`:

* ``"crown"`` (Shi et al. 2022): with ``d`` free in ``[d_l, d_u]``, ``h = d g`` lies between
  ``min(d_l g, d_u g)`` (concave in ``g``) and ``max(d_l g, d_u g)`` (convex); on ``g in [l_g, u_g]`` the tightest
  linear bounds are the two chords. For ReLU this is ``-relu(-g) <= h <= relu(g)`` relaxed by chords, keeping
  ``h`` linear in ``g`` so correlations survive through ``W^T``.
* ``"interval"`` (the RecurJac / Fast-Lip baseline): where the gate is fixed (``d_l = d_u``) or the upstream
  gradient has a fixed sign (``l_g >= 0``: ``d_l g <= h <= d_u g``; ``u_g <= 0``: ``d_u g <= h <= d_l g``) the
  exact planes are kept; only a product whose ``g`` changes sign is replaced by its interval ``[min, max]`` of
  ``{d_l, d_u} x {l_g, u_g}``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.graph.ir import Graph, Node
from lipbound.ops.arith import WeightedSum
from lipbound.ops.base import Bounds, ConstOp, ElementwiseOp, LinearOp, Op, chord_relaxation, kink_pieces

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

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return self.op.max_terms(out_numel, in_numel)

    def describe(self) -> str:
        return f"T({self.op.describe()})"


class GatedProduct(ElementwiseOp):
    """``h = sigma'(z) * g``: the Jacobian rule of an activation, with inputs ``(z, g)``.

    ``z`` is the activation's forward pre-activation (bounds ``[l_z, u_z]`` from the forward pass), ``g`` the
    upstream gradient. The gate ``d = sigma'(z)`` ranges over ``[d_l, d_u]`` = ``act.derivative_bounds(l_z, u_z)``.

    z-free relaxation (``crown``): ``min(d_l g, d_u g) <= h <= max(d_l g, d_u g)`` relaxed by chords on
    ``[l_g, u_g]`` (exact where the gate or the sign of ``g`` is fixed).

    z-coupled planes (``coupled=True``, piecewise-linear gates; ReLU gate ``s``, unstable ``l_z < 0 < u_z``):
    for ``P = s g``::

        P <= g + l_g z / (-l_z)          if l_g >= 0,      P <= g - l_g + (l_g / u_z) z     otherwise,
        P >= g - (u_g / l_z) z           if u_g <= 0,      P >= g - u_g + (u_g / u_z) z     otherwise,

    (LeakyReLU: ``h = a g + (1 - a) P``). Each is valid on the whole box, and through ``z`` they let the backward
    bound see the forward linear bounds in ``x``. The free parameter ``beta in [0, 1]`` (one per neuron and
    specification row) mixes them with the z-free planes (``beta = 0``: z-free); it is optimised with
    ``optimize=True``.
    """

    name = "gated_product"
    n_inputs = 2

    def __init__(self, act: ElementwiseOp, relaxation: str = "crown", coupled: bool = False) -> None:
        self.act = act
        self.relaxation = relaxation
        gate = _gate_slope(act)
        self.gate_slope = gate  # a for piecewise-linear gates (ReLU: 0), None otherwise
        self.coupled = bool(coupled) and gate is not None and relaxation == "crown"
        self.has_alpha = self.coupled

    def forward(self, z: Tensor, g: Tensor) -> Tensor:
        return self.act.derivative(z) * g

    def interval(self, zb: Bounds, gb: Bounds) -> Bounds:
        dl, du = self.act.derivative_bounds(*zb)
        l, u = gb
        p = torch.stack((dl * l, du * l, dl * u, du * u))
        return p.min(0).values, p.max(0).values

    def default_alpha(self, l: Tensor, u: Tensor) -> Tensor:
        return torch.zeros_like(l)

    def relax_inputs(self, bounds, alpha=None):
        (lz, uz), (l, u) = bounds
        dl, du = self.act.derivative_bounds(lz, uz)
        dl_l, du_l, dl_u, du_u = dl * l, du * l, dl * u, du * u
        fixed = (dl == du).expand_as(dl_l)
        dl_e, du_e = dl.expand_as(dl_l), du.expand_as(dl_l)
        zero = torch.zeros_like(dl_l)
        if self.relaxation == "interval":
            # RecurJac / Fast-Lip: the exact planes where the gate or the sign of g is fixed (g >= 0:
            # d_l g <= h <= d_u g; g <= 0: d_u g <= h <= d_l g), the interval hull of the products elsewhere
            lo = torch.minimum(torch.minimum(dl_l, du_l), torch.minimum(dl_u, du_u))
            hi = torch.maximum(torch.maximum(dl_l, du_l), torch.maximum(dl_u, du_u))
            pos, neg = (l >= 0).expand_as(dl_l), (u <= 0).expand_as(dl_l)
            plane = fixed | pos | neg
            lw = torch.where(fixed | pos, dl_e, torch.where(neg, du_e, zero))
            uw = torch.where(fixed | neg, dl_e, torch.where(pos, du_e, zero))
            return [None, lw], torch.where(plane, zero, lo), [None, uw], torch.where(plane, zero, hi)
        # z-free: upper phi(g) = max(d_l g, d_u g) (convex) -> chord; lower min(.) (concave) -> chord
        uw, ub = chord_relaxation(torch.maximum(dl_l, du_l), torch.maximum(dl_u, du_u), l, u)
        lw, lb = chord_relaxation(torch.minimum(dl_l, du_l), torch.minimum(dl_u, du_u), l, u)
        pos, neg = (l >= 0).expand_as(uw), (u <= 0).expand_as(uw)
        exact = fixed | pos | neg
        uw = torch.where(fixed, dl_e, torch.where(pos, du_e, torch.where(neg, dl_e, uw)))
        lw = torch.where(fixed, dl_e, torch.where(pos, dl_e, torch.where(neg, du_e, lw)))
        ub, lb = torch.where(exact, zero, ub), torch.where(exact, zero, lb)
        if not self.coupled or alpha is None:
            return [None, lw], lb, [None, uw], ub
        return self._mix_coupled(lz, uz, l, u, lw, lb, uw, ub, alpha)

    def _mix_coupled(self, lz, uz, l, u, lw, lb, uw, ub, beta):
        a = float(self.gate_slope)
        unstable = (lz < 0) & (uz > 0)
        sl = torch.where(unstable, lz, -torch.ones_like(lz))
        su = torch.where(unstable, uz, torch.ones_like(uz))
        # planes for P = s g  (slopes in g are 1)
        pu_z = torch.where(l >= 0, l / (-sl), l / su)
        pu_b = torch.where(l >= 0, torch.zeros_like(l), -l)
        pl_z = torch.where(u <= 0, -u / sl, u / su)
        pl_b = torch.where(u <= 0, torch.zeros_like(u), -u)
        k = 1.0 - a  # h = a g + k P
        if k < 0:
            pu_z, pu_b, pl_z, pl_b = pl_z, pl_b, pu_z, pu_b
        cu_g, cu_z, cu_b = a + k, k * pu_z, k * pu_b
        cl_g, cl_z, cl_b = a + k, k * pl_z, k * pl_b
        bt = beta * unstable.to(beta.dtype)
        uw_g = (1 - bt) * uw + bt * cu_g
        ub_m = (1 - bt) * ub + bt * cu_b
        lw_g = (1 - bt) * lw + bt * cl_g
        lb_m = (1 - bt) * lb + bt * cl_b
        return [bt * cl_z, lw_g], lb_m, [bt * cu_z, uw_g], ub_m

    def relax(self, l, u, alpha=None):  # pragma: no cover - two-input op: the engine calls relax_inputs
        raise TypeError("GatedProduct has two inputs (z, g); use relax_inputs")

    def describe(self) -> str:
        return f"gate[{self.act.name}]"


def _gate_slope(act: ElementwiseOp) -> float | None:
    """Left-piece slope ``a`` of an activation linear on each side of 0 with right slope 1 (ReLU: 0, LeakyReLU: a),
    read from its traits; None otherwise (other gates keep the z-free planes, which are valid for every gate)."""
    pieces = kink_pieces(act)
    return pieces[0] if pieces is not None and pieces[1] == 1.0 else None


class JacobianBuilder:
    """Collects backward nodes; handed to every op's :meth:`jacobian` rule."""

    def __init__(self, relaxation: str, coupled: bool, dtype: torch.dtype) -> None:
        self.nodes: list[Node] = []
        self.relaxation = relaxation
        self.coupled = coupled
        self.dtype = dtype
        self._target_shape: tuple[int, ...] = ()

    def add(self, op: Op, inputs: list[Node], shape: tuple[int, ...] | None = None, name: str = "") -> Node:
        shape = inputs[-1].shape if shape is None else shape
        node = Node(f"g{len(self.nodes)}_{name or op.name}", op, tuple(inputs), tuple(shape))
        self.nodes.append(node)
        return node

    def transpose(self, op: LinearOp, g: Node) -> Node:
        """``M^T g`` for a single-input linear op (shape: the op's input)."""
        return self.add(TransposedLinear(op), [g], shape=self._target_shape)

    def gate(self, act: ElementwiseOp, z: Node, g: Node) -> Node:
        """``sigma'(z) * g``."""
        return self.add(GatedProduct(act, self.relaxation, self.coupled), [z, g], shape=z.shape)


def build_jacobian_graph(
    graph: Graph,
    c: Tensor,
    relaxation: str = "crown",
    coupled: bool = False,
) -> tuple[Graph, Node]:
    """The combined forward + backward graph computing ``g_x = J(x)^T c``.

    ``c`` has shape ``(N, *output_shape)`` (``N`` = batch of the box the graph will be bounded on; the caller
    repeats each input's box once per direction). The returned graph has the forward graph's input leaf ``x`` and
    output ``g_x`` (per-sample shape ``input.shape``); its nodes are the forward nodes, the constant ``c`` and the
    backward nodes. Evaluating it at a point gives the autograd gradient (ReLU'(0) = 0).
    """
    if relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    jb = JacobianBuilder(relaxation, coupled, c.dtype)
    c_node = Node("c", ConstOp(c), (), graph.output.shape, "output direction c")
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
    nodes = [*graph.nodes, c_node, *jb.nodes]
    meta = {"kind": "jacobian", "relaxation": relaxation, "coupled": coupled}
    return Graph(nodes, graph.input, g_x, meta), g_x


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

    def max_terms(self, in_numel: int, out_numel: int) -> int:
        return 1
