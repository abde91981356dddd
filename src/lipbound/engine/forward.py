"""Bounds on intermediate nodes over an input box: interval propagation (IBP) and CROWN back-substitution.

``bound_nodes`` returns, for every node that feeds an elementwise op (plus any requested extra nodes), bounds
``l <= v(x) <= u`` valid for all ``x`` in ``[x_l, x_u]``:

* IBP: each op's :meth:`interval` rule applied in topological order (cheap, loose);
* CROWN (default): for each such node ``v`` in topological order, back-substitute ``Lambda = I`` from ``v`` to the
  input using the relaxations built on the bounds already computed for earlier nodes; the result is intersected
  with IBP. Neurons whose IBP bounds already fix the phase of a piecewise-linear activation are not re-bounded.
* ``optimize=True`` (alpha-CROWN): every (target node, spec row, activation neuron) gets its own lower slope
  ``alpha in [0, 1]``; all bounds are recomputed jointly and the alphas follow projected Adam steps that minimise
  the total width of the unstable bounds. Every iterate is sound, so the elementwise best over iterations is kept.

Every bound is widened outward by a relative margin (see :func:`outward`) to absorb floating-point rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.engine.crown import Alphas, backsubstitute, identity_spec
from lipbound.graph.ir import Graph, Node
from lipbound.ops.base import Bounds, ConstOp, ElementwiseOp, InputOp
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.relu import ReLU

PIECEWISE_LINEAR = (ReLU, LeakyReLU)


def rounding_margin(dtype: torch.dtype) -> float:
    """Relative outward margin applied to computed bounds: generous multiples of the unit round-off."""
    return 1e-10 if dtype == torch.float64 else 2e-5


def outward(l: Tensor, u: Tensor) -> Bounds:
    """Widen ``[l, u]`` by a relative rounding margin (plus a tiny absolute one)."""
    m = rounding_margin(l.dtype)
    pad = m * (l.abs() + u.abs()) / 2 + m * 1e-3
    return l - pad, u + pad


def relaxed_inputs(graph: Graph) -> list[Node]:
    """Nodes that feed an elementwise op (their bounds determine the relaxations)."""
    seen: dict[int, Node] = {}
    for n in graph.nodes:
        if isinstance(n.op, ElementwiseOp):
            seen.setdefault(id(n.inputs[0]), n.inputs[0])
    return [n for n in graph.nodes if id(n) in seen]


def interval_bounds(graph: Graph, x_lower: Tensor, x_upper: Tensor) -> dict[int, Bounds]:
    """IBP bounds of every node."""
    out: dict[int, Bounds] = {}
    for n in graph.nodes:
        if isinstance(n.op, InputOp):
            out[id(n)] = (x_lower, x_upper)
        elif isinstance(n.op, ConstOp):
            v = n.op.value
            out[id(n)] = (v, v)
        else:
            l, u = n.op.interval(*(out[id(i)] for i in n.inputs))
            out[id(n)] = outward(l, u) if not isinstance(n.op, ElementwiseOp) else (l, u)
    return out


def _elementwise_consumers(graph: Graph) -> dict[int, list[ElementwiseOp]]:
    ops: dict[int, list[ElementwiseOp]] = {}
    for n in graph.nodes:
        if isinstance(n.op, ElementwiseOp):
            ops.setdefault(id(n.inputs[0]), []).append(n.op)
    return ops


def _needs_crown(node: Node, ibp: Bounds, consumers: dict[int, list[ElementwiseOp]]) -> Tensor:
    """Mask of elements whose bounds matter: not yet phase-fixed for piecewise-linear consumers."""
    l, u = ibp
    ops = consumers.get(id(node), [])
    if ops and all(isinstance(op, PIECEWISE_LINEAR) for op in ops):
        return (l < 0) & (u > 0)
    return torch.ones_like(l, dtype=torch.bool)


def bound_nodes(
    graph: Graph,
    x_lower: Tensor,
    x_upper: Tensor,
    method: str = "crown",
    extra: list[Node] | None = None,
    optimize: bool = False,
    steps: int = 30,
    lr: float = 0.25,
) -> dict[int, Bounds]:
    """Bounds of every node that feeds an elementwise op, and of ``extra`` nodes; ``{id(node): (l, u)}``.

    ``method``: ``"ibp"`` or ``"crown"``. ``optimize`` enables alpha-CROWN (``steps`` projected Adam steps).
    """
    ibp = interval_bounds(graph, x_lower, x_upper)
    targets = relaxed_inputs(graph)
    for e in extra or []:
        if all(e is not t for t in targets):
            targets.append(e)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    targets.sort(key=lambda n: order[id(n)])
    if method == "ibp":
        return {id(t): ibp[id(t)] for t in targets}
    if method != "crown":
        raise ValueError(f"unknown bound method {method!r}")
    if not optimize:
        return _crown_pass(graph, targets, ibp, (x_lower, x_upper), None)[0]
    return _optimized(graph, targets, ibp, (x_lower, x_upper), steps, lr)


def _rows_to_bound(node: Node, current: Bounds, consumers: dict[int, list[ElementwiseOp]]) -> Tensor:
    """Flat indices of the elements of ``node`` that some batch entry still needs bounded by CROWN."""
    mask = _needs_crown(node, current, consumers)
    return mask.reshape(mask.shape[0], -1).any(0).nonzero().flatten()


def _crown_pass(
    graph: Graph,
    targets: list[Node],
    ibp: dict[int, Bounds],
    box: Bounds,
    alphas: dict[int, Alphas] | None,
    best: dict[int, Bounds] | None = None,
    rows: dict[int, Tensor] | None = None,
) -> tuple[dict[int, Bounds], dict[int, Bounds]]:
    """One sequential CROWN pass over ``targets``.

    Only the rows (elements) in ``rows[id(t)]`` are back-substituted (default: those not phase-fixed by IBP);
    the others keep their IBP bounds. Returns (bounds used downstream, raw CROWN bounds of the selected rows).
    """
    consumers = _elementwise_consumers(graph)
    bounds: dict[int, Bounds] = {}
    raw: dict[int, Bounds] = {}
    cache: dict | None = {} if alphas is None else None
    batch = box[0].shape[0]
    for t in targets:
        il, iu = ibp[id(t)]
        idx = rows[id(t)] if rows is not None else _rows_to_bound(t, (il, iu), consumers)
        if idx.numel() == 0:
            bounds[id(t)] = (il, iu)
            continue
        lam = identity_spec(t, batch, il)[:, idx]
        lo, up = backsubstitute(graph, t, lam, bounds, box, alphas.get(id(t)) if alphas else None, cache)
        lo, up = outward(lo, up)
        raw[id(t)] = (lo, up)
        flat_l, flat_u = il.reshape(batch, -1), iu.reshape(batch, -1)
        new_l = flat_l.clone()
        new_u = flat_u.clone()
        new_l[:, idx] = torch.maximum(lo, flat_l[:, idx])
        new_u[:, idx] = torch.minimum(up, flat_u[:, idx])
        lo, up = new_l.reshape(il.shape), new_u.reshape(iu.shape)
        if best is not None and id(t) in best:
            bl, bu = best[id(t)]
            lo, up = torch.maximum(lo, bl), torch.minimum(up, bu)
        bounds[id(t)] = (lo, up)
    return bounds, raw


def _init_alphas(
    graph: Graph, targets: list[Node], bounds: dict[int, Bounds], rows: dict[int, Tensor]
) -> dict[int, Alphas]:
    """One alpha tensor (B, S_t, *shape) per (target, alpha-activation upstream of target), for each pass."""
    alphas: dict[int, Alphas] = {}
    for t in targets:
        per: Alphas = {}
        s = int(rows[id(t)].numel())
        if s == 0:
            continue
        for n in graph.ancestors(t):
            if isinstance(n.op, ElementwiseOp) and n.op.has_alpha and n is not t:
                l, u = bounds[id(n.inputs[0])]
                a0 = n.op.default_alpha(l, u).unsqueeze(1).expand(l.shape[0], s, *n.shape)
                per[id(n)] = (a0.clone().requires_grad_(True), a0.clone().requires_grad_(True))
        alphas[id(t)] = per
    return alphas


def _optimized(
    graph: Graph, targets: list[Node], ibp: dict[int, Bounds], box: Bounds, steps: int, lr: float
) -> dict[int, Bounds]:
    with torch.no_grad():
        best, _ = _crown_pass(graph, targets, ibp, box, None)
    consumers = _elementwise_consumers(graph)
    rows = {id(t): _rows_to_bound(t, best[id(t)], consumers) for t in targets}
    alphas = _init_alphas(graph, targets, best, rows)
    params = [a for per in alphas.values() for pair in per.values() for a in pair]
    if not params:
        return best
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        _adam_loop(graph, targets, ibp, box, alphas, params, opt, best, rows, steps)
    return best


def _adam_loop(graph, targets, ibp, box, alphas, params, opt, best, rows, steps) -> None:
    """Projected Adam on the alphas; ``best`` (elementwise tightest bounds so far) is updated in place."""
    for _ in range(steps):
        opt.zero_grad()
        frozen = {k: (l.detach(), u.detach()) for k, (l, u) in best.items()}
        bounds, raw = _crown_pass(graph, targets, ibp, box, alphas, frozen, rows)
        loss = sum(((u - l) * (l < 0) * (u > 0)).sum() for l, u in raw.values())
        with torch.no_grad():
            for k, (l, u) in bounds.items():
                bl, bu = best[k]
                best[k] = (torch.maximum(bl, l.detach()), torch.minimum(bu, u.detach()))
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            for a in params:
                a.clamp_(0.0, 1.0)
