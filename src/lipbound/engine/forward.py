"""Bounds on intermediate nodes over an input box: interval propagation (IBP) and CROWN back-substitution.

:func:`bound_nodes` returns, for every node that feeds a relaxed op (activations, Jacobian gates) plus any
requested extra nodes, bounds ``l <= v(x) <= u`` valid for all ``x`` in ``[x_l, x_u]``:

* IBP: each op's :meth:`interval` rule applied in topological order (cheap, loose);
* CROWN (default): for each such node ``v`` in topological order, back-substitute ``Lambda = I`` from ``v`` to the
  input using the relaxations built on the bounds already computed for earlier nodes; the result is intersected
  with IBP. Only the elements whose bounds can still matter are back-substituted: a ReLU input already
  phase-fixed by IBP, or the upstream gradient of a Jacobian gate whose derivative range is a single value,
  keeps its IBP bounds (the relaxation there is exact whatever the bounds).
* ``optimize=True`` (alpha-CROWN): every (target node, spec row, relaxed neuron) gets its own free parameter in
  [0, 1] (ReLU lower slopes; z-coupling weights of Jacobian gates); all bounds are recomputed jointly and the
  parameters follow projected Adam steps that minimise the total width of the bounds that cross zero. Every
  iterate is sound, so the elementwise best over iterations is kept.

Every bound is widened outward by a relative margin (see :func:`outward`) to absorb floating-point rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.engine import rounding
from lipbound.engine.crown import Alphas, backsubstitute, identity_rows
from lipbound.engine.memory import PROBE_ROWS, rows_per_chunk
from lipbound.engine.optim import ProjectedAdam
from lipbound.engine.patches import Patches
from lipbound.engine.rounding import gamma, linear_magnitude
from lipbound.graph.ir import Graph, Node
from lipbound.ops.base import Bounds, ConstOp, ElementwiseOp, InputOp, LinearOp, kink_pieces
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.relu import ReLU

PIECEWISE_LINEAR = (ReLU, LeakyReLU)  # kept for callers; the engine reads ``traits().kink_at_zero`` instead
#: alpha-optimisation of a target is skipped when batch x (rows to bound) x (size of its ancestors) exceeds this
OPTIMIZE_BUDGET = 1 << 22
#: back-substitute identity rows of conv-shaped nodes as windows (:mod:`lipbound.engine.patches`); False: dense
PATCHES = True


def rounding_margin(dtype: torch.dtype) -> float:
    """Relative outward margin applied to computed bounds: generous multiples of the unit round-off."""
    return 1e-10 if dtype == torch.float64 else 2e-5


def outward(l: Tensor, u: Tensor) -> Bounds:
    """Widen ``[l, u]`` by a relative rounding margin (plus a tiny absolute one)."""
    m = rounding_margin(l.dtype)
    pad = m * (l.abs() + u.abs()) / 2 + m * 1e-3
    return l - pad, u + pad


def _consumers(graph: Graph) -> dict[int, list[tuple[Node, int]]]:
    """For every node: the relaxed (elementwise-kind) nodes that read it, with the input position."""
    out: dict[int, list[tuple[Node, int]]] = {}
    for n in graph.nodes:
        if isinstance(n.op, ElementwiseOp):
            for i, inp in enumerate(n.inputs):
                out.setdefault(id(inp), []).append((n, i))
    return out


def relaxed_inputs(graph: Graph) -> list[Node]:
    """Nodes that feed a relaxed op (their bounds determine the relaxations), in topological order."""
    cons = _consumers(graph)
    return [n for n in graph.nodes if id(n) in cons]


def apply_phases(b: Bounds, phase: Tensor | None) -> Bounds:
    """Restrict bounds to a Branch-and-Bound domain: ``phase`` +1 forces ``z >= 0`` (ReLU active), -1 forces
    ``z <= 0`` (inactive), 0 leaves the element free.

    Active elements get ``l >= tiny > 0`` and inactive ones ``u <= -tiny < 0``, so their ReLU is linear and its
    Jacobian gate fixed (1 or 0). On the face ``z = 0`` this drops Clarke gates in (0, 1); the sup of a norm over
    the Clarke Jacobian is attained at limits of gradients from the open regions, which both domains cover.
    A domain is empty when some ``l > u``.
    """
    if phase is None:
        return b
    l, u = b
    tiny = torch.finfo(l.dtype).tiny
    return torch.where(phase > 0, l.clamp(min=tiny), l), torch.where(phase < 0, u.clamp(max=-tiny), u)


def interval_bounds(
    graph: Graph,
    x_lower: Tensor,
    x_upper: Tensor,
    known: dict[int, Bounds] | None = None,
    phases: dict[int, Tensor] | None = None,
) -> dict[int, Bounds]:
    """IBP bounds of every node (intersected with ``known`` bounds where given, restricted by ``phases``)."""
    out: dict[int, Bounds] = {}
    for n in graph.nodes:
        if isinstance(n.op, InputOp):
            b = (x_lower, x_upper)
        elif isinstance(n.op, ConstOp):
            b = (n.op.value, n.op.value)
        else:
            ins = [out[id(i)] for i in n.inputs]
            l, u = n.op.interval(*ins)
            b = outward(l, u)
            if isinstance(n.op, LinearOp) and rounding.RIGOROUS:  # rounding relative to the summed terms
                g = gamma(n.op.max_terms(sum(i.numel for i in n.inputs), n.numel) + 8, l.dtype)
                pad = g * linear_magnitude(n.op, [torch.maximum(il.abs(), iu.abs()) for il, iu in ins])
                b = (b[0] - pad, b[1] + pad)
        if known is not None and id(n) in known:
            kl, ku = known[id(n)]
            b = (torch.maximum(b[0], kl), torch.minimum(b[1], ku))
        out[id(n)] = apply_phases(b, (phases or {}).get(id(n)))
    return out


def _needed(node: Node, current: Bounds, bounds: dict[int, Bounds], cons, extra_ids: set[int]) -> Tensor:
    """Mask of elements of ``node`` whose bounds still matter to some relaxation (or that were requested)."""
    l, u = current
    if id(node) in extra_ids:
        return torch.ones_like(l, dtype=torch.bool)
    mask = torch.zeros_like(l, dtype=torch.bool)
    for consumer, pos in cons.get(id(node), []):
        op = consumer.op
        if kink_pieces(op) is not None:
            mask |= (l < 0) & (u > 0)
        elif getattr(op, "act", None) is not None and pos == 1:  # gate: g matters where sigma'(z) is not fixed
            zl, zu = bounds[id(consumer.inputs[0])]
            dl, du = op.act.derivative_bounds(zl, zu)
            mask |= (dl != du).expand_as(mask)
        else:
            return torch.ones_like(l, dtype=torch.bool)
    return mask


def bound_nodes(
    graph: Graph,
    x_lower: Tensor,
    x_upper: Tensor,
    method: str = "crown",
    extra: list[Node] | None = None,
    optimize: bool = False,
    steps: int = 30,
    lr: float = 0.25,
    known: dict[int, Bounds] | None = None,
    phases: dict[int, Tensor] | None = None,
    linear: dict | None = None,
    max_memory: int | None = None,
    progress=None,
    stats: dict | None = None,
    within: dict[int, Bounds] | None = None,
) -> dict[int, Bounds]:
    """Bounds of every node that feeds a relaxed op, and of ``extra`` nodes; ``{id(node): (l, u)}``.

    ``method``: ``"ibp"`` or ``"crown"``. ``optimize`` enables alpha-CROWN (``steps`` projected Adam steps).
    ``known``: bounds already computed for some nodes (kept, not recomputed). ``phases``: Branch-and-Bound
    splits per node (see :func:`apply_phases`), shape ``(B, *node.shape)``. ``linear``: if a dict, receives
    the CROWN bounds of each target as linear functions of the input (``{id(node): (rows, coefficients)}``).
    ``max_memory``: bytes allowed for one back-substitution's coefficients; rows are chunked under it (same
    bounds, :mod:`lipbound.engine.memory`). ``progress(done, total)`` is called after every target;
    ``stats`` (a dict) receives ``chunks`` (back-substitution calls) and ``rows`` (rows bounded).
    ``within``: bounds that hold on the region (e.g. a Branch-and-Bound parent domain's, valid on every child):
    unlike ``known`` they are still recomputed, and the result is the intersection ``[max(l, l'), min(u, u')]``
    (sound: both enclose the node's values on the region; used downstream, so later relaxations tighten too).
    """
    known = known or {}
    ibp = interval_bounds(graph, x_lower, x_upper, {**(within or {}), **known}, phases)
    extra = extra or []
    cand = relaxed_inputs(graph) + [e for e in extra if all(e is not t for t in relaxed_inputs(graph))]
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    targets = sorted((t for t in cand if id(t) not in known), key=lambda n: order[id(n)])
    fixed = {id(t): ibp[id(t)] for t in cand if id(t) in known}
    if method == "ibp":
        return {**fixed, **{id(t): ibp[id(t)] for t in targets}}
    if method != "crown":
        raise ValueError(f"unknown bound method {method!r}")
    ctx = _Context(
        graph, targets, ibp, (x_lower, x_upper), fixed, {id(e) for e in extra}, phases or {}, linear, max_memory,
        progress,
    )  # fmt: skip
    out = ctx.run(None)[0] if not optimize else _optimized(ctx, steps, lr)
    if stats is not None:
        stats["chunks"] = stats.get("chunks", 0) + ctx.chunks
    return out


def forward_bounds(graph: Graph, x_lower: Tensor, x_upper: Tensor, method: str = "crown", optimize: bool = False):
    """Bounds of every pre-activation (input of an activation) of ``graph`` over the box; alias of
    :func:`bound_nodes` without extra targets."""
    return bound_nodes(graph, x_lower, x_upper, method, optimize=optimize)


class _Context:
    """Everything one (sequential) CROWN pass over a graph needs."""

    def __init__(
        self, graph, targets, ibp, box, fixed, extra_ids, phases, linear=None, max_memory=None, progress=None
    ) -> None:
        self.graph, self.targets, self.ibp, self.box = graph, targets, ibp, box
        self.max_memory = max_memory  # bytes for one back-substitution's coefficients (None: no cap)
        self.chunk_rows: dict[int, int] = {}  # rows per chunk of every target, measured by a probe chunk
        self.chunks = 0  # back-substitution calls made (one per chunk)
        self.progress = progress  # progress(done_targets, total_targets) after every target
        self.phases = phases
        self.linear = linear  # if a dict: receives {id(t): (rows, {A_l, c_l, A_u, c_u})} per target
        self.fixed, self.extra_ids = fixed, extra_ids
        self.cons = _consumers(graph)
        self.rows: dict[int, Tensor] | None = None
        # optimise only the parameters of relaxed nodes whose input bounds are being computed here
        # (nodes with known input bounds -- e.g. the forward part of a Jacobian graph -- keep their defaults)
        self.alpha_nodes = {
            id(n) for n in graph.nodes if isinstance(n.op, ElementwiseOp) and id(n.inputs[-1]) not in fixed
        }

    def rows_of(self, t: Node, current: Bounds, bounds: dict[int, Bounds]) -> Tensor:
        mask = _needed(t, current, bounds, self.cons, self.extra_ids)
        if self.linear is not None and id(t) in self.phases:  # split neurons: their linear bounds are wanted
            mask = mask | (self.phases[id(t)] != 0)
        return mask.reshape(mask.shape[0], -1).any(0).nonzero().flatten()

    def bound_rows(self, t: Node, idx: Tensor, bounds, per, cache, lin) -> Bounds:
        """CROWN bounds of the elements ``idx`` of ``t``: identity rows (1x1 windows on conv-shaped nodes, see
        :mod:`lipbound.engine.patches`), in chunks of rows under ``max_memory`` (:mod:`lipbound.engine.memory`)."""
        batch = self.box[0].shape[0]
        like = self.ibp[id(t)][0]
        n = len(idx)
        step = self.chunk_rows.get(id(t), n if self.max_memory is None else min(n, PROBE_ROWS))
        los, ups, lins = [], [], []
        i = 0
        while i < n:
            rows = idx[i : i + step]
            if len(t.shape) == 3 and PATCHES:
                lam = Patches.identity(t.shape, rows, batch, like)
            else:
                lam = identity_rows(t, rows, batch, like)
            part = None if per is None else {k: (a[:, i : i + step], b[:, i : i + step]) for k, (a, b) in per.items()}
            sub = {} if lin is not None else None
            stats: dict[str, int] = {}
            lo, up = backsubstitute(self.graph, t, lam, bounds, self.box, part, cache, linear=sub, stats=stats)
            los.append(lo), ups.append(up), lins.append(sub)
            self.chunks += 1
            i += len(rows)
            if self.max_memory is not None and id(t) not in self.chunk_rows:
                step = rows_per_chunk(self.max_memory, stats["peak_elements"], len(rows), like.element_size())
                self.chunk_rows[id(t)] = step
        if lin is not None:
            for key in lins[0]:
                lin[key] = torch.cat([d[key] for d in lins], 1)
        return torch.cat(los, 1), torch.cat(ups, 1)

    def run(
        self, alphas: dict[int, Alphas] | None, best: dict[int, Bounds] | None = None
    ) -> tuple[dict[int, Bounds], dict[int, Bounds]]:
        """One pass. Returns (bounds used downstream, raw CROWN bounds of the back-substituted rows)."""
        bounds: dict[int, Bounds] = dict(self.fixed)
        raw: dict[int, Bounds] = {}
        cache: dict | None = {} if alphas is None else None
        batch = self.box[0].shape[0]
        for t in self.targets:
            il, iu = self.ibp[id(t)]
            idx = self.rows[id(t)] if self.rows is not None else self.rows_of(t, (il, iu), bounds)
            if idx.numel() == 0:
                bounds[id(t)] = (il, iu)
                continue
            per = alphas.get(id(t)) if alphas else None
            lin = {} if self.linear is not None else None
            lo, up = self.bound_rows(t, idx, bounds, per, cache, lin)
            if lin is not None:
                self.linear[id(t)] = (idx, lin)
            lo, up = outward(lo, up)
            raw[id(t)] = (lo, up)
            new_l, new_u = il.reshape(batch, -1).clone(), iu.reshape(batch, -1).clone()
            new_l[:, idx] = torch.maximum(lo, new_l[:, idx])
            new_u[:, idx] = torch.minimum(up, new_u[:, idx])
            lo, up = new_l.reshape(il.shape), new_u.reshape(iu.shape)
            if best is not None and id(t) in best:
                bl, bu = best[id(t)]
                lo, up = torch.maximum(lo, bl), torch.minimum(up, bu)
            bounds[id(t)] = apply_phases((lo, up), self.phases.get(id(t)))
            if self.progress is not None:
                self.progress(self.targets.index(t) + 1, len(self.targets))
        return bounds, raw


def init_alphas(
    graph: Graph, target: Node, rows: int, bounds: dict[int, Bounds], only: set[int] | None = None
) -> Alphas:
    """Free parameters (upper pass, lower pass) of shape (B, rows, *shape) for every alpha-op upstream of target
    (restricted to the node ids in ``only`` if given)."""
    per: Alphas = {}
    for n in graph.ancestors(target):
        if only is not None and id(n) not in only:
            continue
        if isinstance(n.op, ElementwiseOp) and n.op.has_alpha and n is not target:
            l, u = bounds[id(n.inputs[0])]
            a0 = n.op.default_alpha(l, u).unsqueeze(1).expand(l.shape[0], rows, *n.shape)
            per[id(n)] = (a0.clone().requires_grad_(True), a0.clone().requires_grad_(True))
    return per


def _optimisation_cost(ctx: _Context, t: Node) -> int:
    """Elements touched by one back-substitution from ``t``: batch x rows x sum of ancestor sizes."""
    rows = int(ctx.rows[id(t)].numel())
    return ctx.box[0].shape[0] * rows * sum(n.numel for n in ctx.graph.ancestors(t))


def _optimized(ctx: _Context, steps: int, lr: float, budget: int = OPTIMIZE_BUDGET) -> dict[int, Bounds]:
    with torch.no_grad():
        best, _ = ctx.run(None)
    ctx.rows = {id(t): ctx.rows_of(t, best[id(t)], best) for t in ctx.targets}
    # targets over the budget keep their CROWN bounds
    alphas = {
        id(t): init_alphas(ctx.graph, t, int(ctx.rows[id(t)].numel()), best, ctx.alpha_nodes)
        for t in ctx.targets
        if _optimisation_cost(ctx, t) <= budget
    }
    alphas = {k: per for k, per in alphas.items() if per}
    params = [a for per in alphas.values() for pair in per.values() for a in pair]
    if not params:
        return best
    # targets without parameters keep their CROWN bounds during the steps (not re-propagated every step) ...
    all_targets, all_fixed = ctx.targets, ctx.fixed
    ctx.fixed = {**ctx.fixed, **{id(t): best[id(t)] for t in ctx.targets if id(t) not in alphas}}
    ctx.targets = [t for t in ctx.targets if id(t) in alphas]
    opt = ProjectedAdam(params, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            frozen = {k: (l.detach(), u.detach()) for k, (l, u) in best.items()}
            bounds, raw = ctx.run(alphas, frozen)
            with torch.no_grad():
                for k, (l, u) in bounds.items():
                    bl, bu = best[k]
                    best[k] = (torch.maximum(bl, l.detach()), torch.minimum(bu, u.detach()))
            loss = sum(((u - l) * ((l < 0) & (u > 0))).sum() for l, u in raw.values())
            if not isinstance(loss, Tensor) or not loss.requires_grad:
                break
            loss.backward()
            opt.step()
    # ... and are recomputed once at the end on the tightened upstream bounds
    ctx.targets, ctx.fixed = all_targets, all_fixed
    with torch.no_grad():
        final, _ = ctx.run(None, best)
    return {k: (torch.maximum(best[k][0], l), torch.minimum(best[k][1], u)) for k, (l, u) in final.items()}


def optimized_backsubstitute(
    graph: Graph,
    target: Node,
    lam: Tensor,
    bounds: dict[int, Bounds],
    box: Bounds,
    steps: int = 30,
    lr: float = 0.25,
    only: set[int] | None = None,
) -> Bounds:
    """``backsubstitute`` with free parameters (of the nodes in ``only``; default all) optimised for the
    UPPER bound of ``<lam, target>``.

    Returns the best (elementwise smallest) upper bound and largest lower bound seen over the iterations.
    """
    with torch.no_grad():
        lo, up = backsubstitute(graph, target, lam, bounds, box)
    per = init_alphas(graph, target, lam.shape[1], bounds, only)
    params = [a for pair in per.values() for a in pair]
    if not params:
        return lo, up
    opt = ProjectedAdam(params, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            l2, u2 = backsubstitute(graph, target, lam, bounds, box, per)
            with torch.no_grad():
                lo, up = torch.maximum(lo, l2), torch.minimum(up, u2)
            (u2.sum() - l2.sum()).backward()
            opt.step()
    return lo, up
