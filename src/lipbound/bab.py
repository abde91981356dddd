"""Branch and Bound on ReLU phases and on the input box: tighten certified local Lipschitz upper bounds.

A *problem* is one (input box, output direction) pair; a call solves all of them at once (:func:`solve`). A
*domain* is a sub-box of a problem's box together with fixed phases of some unstable ReLUs (``z_j >= 0`` or
``z_j <= 0``). Splitting a domain -- on a ReLU phase, or by halving the box along one input coordinate -- gives two
domains whose union is the parent, so ``L(box) = max over domains of L(domain)``. In a domain the split neurons'
pre-activation bounds are clamped (:func:`lipbound.engine.forward.apply_phases`), every bound *downstream* of them
is recomputed (forward pre-activations and the Jacobian graph), and their Jacobian gates become exact (1 or 0).

Per domain, the CROWN linear bounds ``L_j(x) <= z_j <= U_j(x)`` of the split neurons (valid on the domain, rounding
included) give linear constraints on ``x`` (``U_j(x) >= 0`` for an active split, ``L_j(x) <= 0`` for an inactive
one):

* interval constraint propagation over them (with a rounding bound relative to the magnitudes of the terms)
  shrinks the domain's box to a box that still contains the domain and proves some domains empty;
* an LP over them (HiGHS) proposes further empty domains; one is pruned only when a Farkas certificate checked with
  rigorous float64 error bounds proves it empty (:mod:`lipbound.farkas`), otherwise it is kept.

A domain's bound is also capped by its parent's (it is a subset), and its forward pre-activation bounds are
intersected with its parent's (valid on the parent, hence on the child; the intersection is used downstream, so
the child's later relaxations, gates and bound tighten too). Lower bounds: the exact gradient norm at the
centre of every evaluated box (a point of the problem's box, moved off kinks) raises the attained value and its
witness point, which closes more domains.

Scheduling. All open domains of all problems share one priority queue and one time budget (wall-clock seconds of
the whole call, measured against a deadline). The reported quantity per input is the max over its rows, so a
domain *decides* it while its bound exceeds the best attained lower bound over the input's rows; deciding domains
come first, largest ``bound / input lower`` first (best first within an input, relative gaps across inputs), then
the remaining open domains of rows that do not decide their input's max (largest ``bound / row lower``). Each
iteration takes the first ``batch`` domains (fewer if the measured cost per domain says more would overrun the
deadline), splits each

* on the unstable ReLU with the largest ``(max(0, u_g) - min(0, l_g)) * (u_z - l_z)``: the width of its
  Jacobian gate's uncertainty (``s * g`` for ``s in [0, 1]`` and the upstream gradient bounds ``[l_g, u_g]``)
  times the range of its pre-activation ``[l_z, u_z]`` (how loose its forward relaxation is, which loosens every
  bound and gate downstream of it; on the bundled single-row MLPs this closed the gap 5-30% faster than the gate
  width alone at equal domain counts), or
* (``input_split``) on the input coordinate of largest influence: box radius times the gate-weighted magnitude of
  its coefficients in the unstable neurons' linear bounds,

and bounds all children in ONE engine call (the batch mixes problems: boxes and directions are per domain). A
domain is closed when its bound is within ``rtol`` of its row's attained lower bound. The answer per problem at any
time is ``max`` over its open and closed domains: a valid upper bound (anytime).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lipbound.engine.jacobian import GatedProduct
from lipbound.engine.pipeline import norm_upper, propagate
from lipbound.graph.ir import Graph, Node
from lipbound.ops.base import kink_pieces

INPUT_SPLIT_MODES = ("off", "on", "mixed")
#: fraction of the budget after which the lower-bound search (run first) stops its ascent and region search
LOWER_SHARE = 0.25
#: lower-bound seconds below which the first region search of a process (its one-off import) is skipped
FIRST_AD_SECONDS = 4.0
U64 = 2.0**-53
#: intersect every child's forward bounds with its parent's (sound; switch off only to measure its effect)
REUSE_PARENT = True


@dataclass
class BabStats:
    """Per problem (one input and output row). ``seconds``: wall time attributed to it (its share of the shared
    lower-bound search and root bound, plus, per iteration, the fraction of the batch that were its domains)."""

    domains_evaluated: int = 0
    domains_open: int = 0
    domains_pruned: int = 0
    infeasible: int = 0
    iterations: int = 0
    timed_out: bool = False
    seconds: float = 0.0
    input_splits: int = 0
    relu_splits: int = 0
    lower: float = 0.0  # best attained lower bound (the given one, raised by the gradient norms at box centres)
    upper: float = float("inf")  # certified upper bound
    input: int = 0  # index of the input in the batch
    row: int = 0  # index of the output row
    lp_refused: int = 0  # LPs HiGHS called infeasible without a certificate that passed the check (kept)


@dataclass
class BabOutcome:
    """Result of :func:`solve` for ``P`` problems."""

    upper: Tensor  # (P,) certified upper bounds
    lower: Tensor  # (P,) attained lower bounds
    lower_point: Tensor | None  # (P, *in) witnesses of ``lower`` (None where no point was given or found)
    stats: list[BabStats] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the search (root bound included)


def split_nodes(graph: Graph) -> list[Node]:
    """Pre-activations of piecewise-linear activations (the neurons Branch and Bound may split)."""
    seen: dict[int, Node] = {}
    for n in graph.nodes:
        if kink_pieces(n.op) is not None:
            seen.setdefault(id(n.inputs[0]), n.inputs[0])
    return list(seen.values())


@dataclass
class _Eval:
    upper: Tensor  # (D,) upper bounds (0 for empty domains)
    relu: Tensor  # (D, 2) best ReLU split (node index, flat element)
    relu_score: Tensor  # (D,) its score (< 0: no unstable ReLU left)
    coord: Tensor  # (D,) input coordinate of largest influence
    coord_score: Tensor  # (D,) its influence (0: nothing to gain)
    empty: Tensor  # (D,) proven empty
    xl: Tensor  # (D, *in) tightened box
    xu: Tensor
    refused: Tensor | None = None  # (D,) the LP solver said infeasible but no certificate passed
    forward: dict | None = None  # {id(split node): (l, u)} forward bounds valid on the domains (D, *shape)


def _evaluate(
    graph, nodes, xl, xu, c, norm, phases, optimize, steps, threshold=None, lp=True, prover=None, within=None
) -> _Eval:
    """Bound the domains ``(xl, xu, phases)`` (batch D, directions ``c`` (D or 1, 1, *out)) and choose their
    splits. ``threshold`` (scalar or (D,)): domains whose bound is at most it need no LP. ``within``: forward
    bounds of the split nodes valid on each domain (its parent's), intersected with the recomputed ones."""
    d = xl.shape[0]
    cc = c if c.shape[0] == d else c.expand(d, *c.shape[1:])
    linear: dict = {}
    pb = propagate(graph, xl, xu, cc, "crown", optimize, steps, phases, linear, within=within)
    upper = norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, norm, "crown", optimize, steps)
    empty = torch.zeros(d, dtype=torch.bool, device=xl.device)
    for l, u in pb.forward.values():
        empty |= (l > u).reshape(d, -1).any(1)
    rows = _split_constraints(nodes, phases, linear, d)
    nl, nu = xl, xu
    refused = None
    if rows is not None:
        nl, nu, emp = _tighten_box(*rows, xl, xu)
        empty |= emp
        if lp:  # domains already closed by their bound need no LP
            check = ~empty if threshold is None else ~empty & (upper > threshold)
            lp_empty, refused = _infeasible(*rows, nl, nu, check, prover)
            empty |= lp_empty
    upper = torch.where(empty, torch.zeros_like(upper), upper)
    gate_of = {id(n.inputs[0]): n for n in pb.graph.nodes if isinstance(n.op, GatedProduct)}
    scores = []
    n_in = xl[0].numel()
    influence = torch.zeros(d, n_in, dtype=xl.dtype, device=xl.device)
    for z in nodes:
        zl, zu = pb.forward[id(z)]
        unstable = (zl < 0) & (zu > 0)
        gate = gate_of.get(id(z))
        if gate is None:  # the output does not depend on this neuron through the Jacobian
            scores.append(torch.full((d, z.numel), -1.0, dtype=zl.dtype, device=zl.device))
            continue
        gl, gu = pb.backward[id(gate.inputs[1])]
        width = gu.clamp(min=0) - gl.clamp(max=0)
        # the split removes the gate's uncertainty (width of s * g) AND the relaxation of z_j (range u - l),
        # which tightens every downstream forward bound and gate: weight one by the other
        score = torch.where(unstable, width * (zu - zl), torch.full_like(width, -1.0)).reshape(d, -1)
        if id(z) in linear:
            idx, lin = linear[id(z)]
            w = width.reshape(d, -1)[:, idx].clamp(min=0).unsqueeze(2)  # (D, S, 1)
            w = torch.where(unstable.reshape(d, -1)[:, idx].unsqueeze(2), w, torch.zeros_like(w))
            a = lin["A_u"].reshape(d, idx.numel(), n_in).abs() + lin["A_l"].reshape(d, idx.numel(), n_in).abs()
            influence += (w * a).sum(1)
        scores.append(score)
    flat = torch.cat(scores, 1)
    best, pos = flat.max(1)
    offsets = torch.tensor([0] + [z.numel for z in nodes], device=flat.device).cumsum(0)
    node_idx = torch.searchsorted(offsets[1:], pos, right=True)
    elem = pos - offsets[node_idx]
    radius = (nu - nl).reshape(d, -1) / 2
    influence = influence * radius
    cscore, coord = (influence + 1e-12 * radius).max(1)
    fwd = {id(z): pb.forward[id(z)] for z in nodes}
    return _Eval(upper, torch.stack([node_idx, elem], 1), best, coord, cscore, empty, nl, nu, refused, fwd)


def _split_constraints(nodes, phases, linear, d: int) -> tuple[Tensor, Tensor] | None:
    """The split constraints of every domain as ``a x <= b``: ``a`` (D, R, n), ``b`` (D, R) (``+inf`` pads)."""
    a_parts, b_parts = [], []
    for z in nodes:
        if id(z) not in linear:
            continue
        idx, lin = linear[id(z)]
        ph = phases[id(z)].reshape(d, -1)[:, idx]  # (D, S)
        if not bool((ph != 0).any()):
            continue
        n_in = lin["A_u"][0, 0].numel()
        au, cu = lin["A_u"].reshape(d, idx.numel(), n_in), lin["c_u"]
        al, cl = lin["A_l"].reshape(d, idx.numel(), n_in), lin["c_l"]
        act, ina = (ph > 0).unsqueeze(2), (ph < 0).unsqueeze(2)
        a_parts.append(torch.where(act, -au, torch.where(ina, al, torch.zeros_like(al))))
        inf = torch.full_like(cu, float("inf"))
        b_parts.append(torch.where(ph > 0, cu, torch.where(ph < 0, -cl, inf)))
    if not a_parts:
        return None
    return torch.cat(a_parts, 1), torch.cat(b_parts, 1)


def _margin(a: Tensor, b: Tensor, xl: Tensor, xu: Tensor) -> Tensor:
    """Absolute slack (D, R) added to ``b`` before interval propagation: at least the rounding error of
    evaluating ``b - sum_i min(a_i lo_i, a_i hi_i)`` over any sub-box of ``[xl, xu]`` (D, n) -- ``gamma_{n+4}``
    times ``|b| + sum_i |a_i| max(|xl_i|, |xu_i|)`` in the working dtype (float64 arithmetic for float32 data is
    covered a fortiori) -- plus a small relative safety term ``1e-9 (1 + |b| + sum |a|)``."""
    u = torch.finfo(a.dtype).eps / 2
    n = a.shape[2]
    g = 2 * (n + 4) * u / (1 - (n + 4) * u)
    finite_b = torch.where(torch.isfinite(b), b, torch.zeros_like(b)).abs()
    mag = torch.maximum(xl.abs(), xu.abs()).reshape(xl.shape[0], 1, -1)
    return g * (finite_b + (a.abs() * mag).sum(2)) * (1 + g) + 1e-9 * (1.0 + finite_b + a.abs().sum(2))


def _tighten_box(a: Tensor, b: Tensor, xl: Tensor, xu: Tensor, rounds: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Interval constraint propagation of ``a x <= b`` over the boxes: a box (D, *in) containing
    ``{x in [xl, xu] : a x <= b}`` and the domains where that set is empty (rounding bounded: :func:`_margin` for
    the sums, a few ulps of ``|lo| + |s / a_i|`` for the new bounds)."""
    shape = xl.shape
    lo, hi = xl.reshape(shape[0], 1, -1), xu.reshape(shape[0], 1, -1)
    bb = b + _margin(a, b, xl, xu)
    pos, neg = a > 0, a < 0
    empty = torch.zeros(shape[0], dtype=torch.bool, device=xl.device)
    u = torch.finfo(a.dtype).eps / 2
    tiny = torch.finfo(a.dtype).tiny
    for _ in range(rounds):
        terms = torch.minimum(a * lo, a * hi)  # (D, R, n)
        slack = bb - terms.sum(2)  # (D, R): b - min over the box of a x
        empty |= (slack < 0).any(1)
        s = slack.clamp(min=0).unsqueeze(2)
        safe = torch.where(a == 0, torch.ones_like(a), a)
        step = s / safe
        # a_i > 0: a_i x_i <= b - sum_{k != i} min(a_k x_k) = slack + a_i lo_i; rounding of lo + s / a_i is at
        # most 2u (|lo| + |s / a_i|) (+ an underflow term), widened by 4u here
        cand_hi = torch.where(pos & torch.isfinite(s), lo + step, torch.full_like(a, float("inf")))
        cand_lo = torch.where(neg & torch.isfinite(s), hi + step, torch.full_like(a, -float("inf")))
        pad_hi = torch.where(pos, 4 * u * (lo.abs() + step.abs()) + tiny, torch.zeros_like(a))
        pad_lo = torch.where(neg, 4 * u * (hi.abs() + step.abs()) + tiny, torch.zeros_like(a))
        new_hi = torch.minimum(hi, (cand_hi + pad_hi).amin(1, keepdim=True))
        new_lo = torch.maximum(lo, (cand_lo - pad_lo).amax(1, keepdim=True))
        empty |= (new_lo > new_hi).reshape(shape[0], -1).any(1)
        lo, hi = new_lo, torch.maximum(new_hi, new_lo)
    return lo.reshape(shape), hi.reshape(shape), empty


def _infeasible(a: Tensor, b: Tensor, xl: Tensor, xu: Tensor, check: Tensor, prover=None) -> tuple[Tensor, Tensor]:
    """Domains proven empty: ``x`` in the box with ``a x <= b`` (the split constraints, see
    :func:`_split_constraints`). HiGHS proposes, :func:`lipbound.farkas.farkas_certifies` decides: a domain is
    pruned only with a checked Farkas certificate. Returns (pruned, refused) masks (D,): ``refused`` where the
    solver said infeasible without a certificate that passed (those domains are kept)."""
    from lipbound.farkas import EmptinessProver

    d = check.shape[0]
    out = torch.zeros(d, dtype=torch.bool)
    refused = torch.zeros(d, dtype=torch.bool)
    if not bool(check.any()):
        return out.to(check.device), refused.to(check.device)
    prover = prover or EmptinessProver()
    bb = b.double().cpu().numpy()
    aa = a.double().cpu().numpy()
    lo, hi = xl.reshape(d, -1).double().cpu().numpy(), xu.reshape(d, -1).double().cpu().numpy()
    for i in torch.nonzero(check).flatten().tolist():
        keep = np.isfinite(bb[i])
        if keep.any():
            before = prover.stats.refused
            out[i] = prover.empty(aa[i][keep], bb[i][keep], lo[i], hi[i])
            refused[i] = prover.stats.refused > before
    return out.to(check.device), refused.to(check.device)


def _attained(graph: Graph, lo: Tensor, hi: Tensor, c: Tensor, norm: str) -> tuple[Tensor, Tensor]:
    """Exact gradient norms ``||grad c_i^T f||_*`` at the centres of the boxes ``[lo_i, hi_i]`` (N, *in), each
    moved off any kink within its box (:func:`lipbound.lower.differentiable_points`), for the directions ``c``
    (N, *out). Returns ``(values (N,), points (N, *in))``; points left on a kink get value ``-inf``."""
    from lipbound.lower import _reevaluate_wide, differentiable_points, dual_norm, gradients

    vals = torch.full((lo.shape[0],), -float("inf"), dtype=lo.dtype, device=lo.device)
    if lo.shape[0] == 0:
        return vals, lo
    x, clean = differentiable_points(graph, (lo + hi) / 2, lo, hi, torch.Generator().manual_seed(0))
    if clean.any():
        g = gradients(graph, x[clean], c[clean])
        vals[clean] = dual_norm(g, norm)
        if vals.dtype != torch.float64:  # a float32 gradient can be far off under cancellation: the float64 value,
            # rounded down (0 where the float64 witness is on a kink); points stay where they are
            wide = _reevaluate_wide(graph, vals[clean][:, None], x[clean][:, None], c[clean][:, None], norm)
            vals[clean] = torch.where(wide[:, 0] > 0, wide[:, 0], torch.full_like(wide[:, 0], -float("inf")))
    return vals, x


def _group_max(values: Tensor, index: Tensor, size: int, fill: float = -float("inf")) -> Tensor:
    """``out[p] = max(values[index == p])`` (``fill`` where there is none)."""
    out = torch.full((size,), fill, dtype=values.dtype, device=values.device)
    if values.numel():
        out = out.scatter_reduce(0, index, values, "amax")
    return out


def _group_argmax(values: Tensor, index: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Per group: the max of ``values`` and the position of one element attaining it (-1 where the group is
    empty)."""
    best = _group_max(values, index, size)
    hit = values == best[index]
    pos = torch.full((size,), -1, dtype=torch.long, device=values.device)
    if values.numel():
        cand = torch.where(hit, torch.arange(values.numel(), device=values.device), torch.full_like(index, -1))
        pos = pos.scatter_reduce(0, index, cand, "amax")
    return best, pos


_POOL_KEYS = ("up", "xl", "xu", "pid", "kind", "relu", "coord")


def _pool_take(pool: dict, idx: Tensor, keys: list[int]) -> dict:
    out = {k: pool[k][idx] for k in _POOL_KEYS}
    out["ph"] = {k: v[idx] for k, v in pool["ph"].items()}
    for b in ("fl", "fu"):
        out[b] = {k: v[idx] for k, v in pool[b].items()}
    return out


def _pool_cat(a: dict, b: dict, keys: list[int]) -> dict:
    out = {k: torch.cat([a[k], b[k]]) for k in _POOL_KEYS}
    for name in ("ph", "fl", "fu"):
        out[name] = {k: torch.cat([a[name][k], b[name][k]]) for k in keys}
    return out


def solve(
    graph: Graph,
    xl: Tensor,
    xu: Tensor,
    c: Tensor,
    norm: str,
    lower: Tensor,
    lower_point: Tensor | None = None,
    *,
    group: Tensor | None = None,
    deadline: float | None = None,
    time_budget: float | None = None,
    batch: int = 64,
    rtol: float = 1e-4,
    optimize: bool = False,
    steps: int = 10,
    input_split: str = "off",
    max_domains: int | None = None,
    shared_seconds: float = 0.0,
) -> BabOutcome:
    """Branch and Bound on ``P`` problems at once, one queue and one clock (see the module docstring).

    ``xl``, ``xu``: boxes ``(P, *in)``; ``c``: directions ``(P, 1, *out)``; ``lower`` ``(P,)``: attained values
    (with their points ``lower_point`` ``(P, *in)`` if known). ``group`` ``(P,)``: the input each problem belongs
    to (the reported max is over the problems of a group; default: one group per problem). The search stops at
    ``deadline`` (a ``time.perf_counter()`` value) or ``time_budget`` seconds from now, whichever is earlier,
    without starting an iteration that the measured cost per domain says would overrun it. ``batch``: at most
    that many domains split per iteration (2x as many children bounded in one engine call). ``max_domains``: each
    problem stops after that many evaluated domains (deterministic runs). ``shared_seconds`` (time already spent
    for all problems, e.g. the lower-bound search) is split evenly into the per-problem ``seconds``.
    """
    from lipbound.farkas import EmptinessProver

    if input_split not in INPUT_SPLIT_MODES:
        raise ValueError(f"input_split must be one of {INPUT_SPLIT_MODES}, got {input_split!r}")
    if batch < 1:
        raise ValueError(f"batch must be a positive number of domains, got {batch}")
    t0 = time.perf_counter()
    if time_budget is not None:
        deadline = t0 + time_budget if deadline is None else min(deadline, t0 + time_budget)
    deadline = float("inf") if deadline is None else deadline
    p_count, dev = xl.shape[0], xl.device
    group = torch.arange(p_count, device=dev) if group is None else group.to(dev)
    n_groups = int(group.max()) + 1 if p_count else 0
    lower = lower.to(dev, xl.dtype).clone()
    point = (xl + xu) / 2 if lower_point is None else lower_point.to(dev, xl.dtype).clone()
    has_point = torch.full((p_count,), lower_point is not None, dtype=torch.bool, device=dev)
    stats = [BabStats(input=int(group[p]), row=p) for p in range(p_count)]
    seconds = np.full(p_count, shared_seconds / max(p_count, 1))
    evaluated = np.zeros(p_count, dtype=np.int64)
    nodes = split_nodes(graph)
    keys = [id(z) for z in nodes]
    prover = EmptinessProver() if nodes else None
    if not nodes:  # nothing to split: the root bound is the answer
        pb = propagate(graph, xl, xu, c, "crown", optimize, steps)
        up = norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, norm, "crown", optimize, steps)
        elapsed = time.perf_counter() - t0
        for q, s in enumerate(stats):
            s.domains_evaluated, s.seconds = 1, float(seconds[q]) + elapsed / max(p_count, 1)
            s.lower, s.upper = float(lower[q]), float(up[q])
        return BabOutcome(up, lower, lower_point, stats, elapsed)

    def no_phases(n: int) -> dict[int, Tensor]:
        return {id(z): torch.zeros(n, *z.shape, dtype=torch.int8, device=dev) for z in nodes}

    def raise_lower(ev_xl, ev_xu, pid, cdir) -> None:
        nonlocal lower, point, has_point
        vals, pts = _attained(graph, ev_xl, ev_xu, cdir.reshape(cdir.shape[0], *cdir.shape[2:]), norm)
        best, pos = _group_argmax(vals, pid, p_count)
        better = (pos >= 0) & (best > lower)
        if bool(better.any()):
            lower = torch.where(better, best, lower)
            idx = pos.clamp(min=0)
            point = torch.where(better.reshape(-1, *[1] * (point.dim() - 1)), pts[idx], point)
            has_point |= better

    def thresholds(values: Tensor) -> Tensor:
        return values + rtol * values.abs().clamp(min=1e-12)

    # root: every problem is one domain, bounded in one call
    t_eval = time.perf_counter()
    ev = _evaluate(graph, nodes, xl, xu, c, norm, no_phases(p_count), optimize, steps, prover=prover)
    t_eval = time.perf_counter() - t_eval
    evaluated += 1
    if nodes:
        raise_lower(ev.xl, ev.xu, torch.arange(p_count, device=dev), c)
    t_root = time.perf_counter() - t0
    seconds += t_root / max(p_count, 1)
    closed = torch.zeros(p_count, dtype=xl.dtype, device=dev)  # max bound of the closed domains per problem
    pool: dict = {
        "up": xl.new_zeros(0),
        "xl": xl[:0],
        "xu": xu[:0],
        "pid": torch.zeros(0, dtype=torch.long, device=dev),
        "kind": torch.zeros(0, dtype=torch.long, device=dev),
        "relu": torch.zeros(0, 2, dtype=torch.long, device=dev),
        "coord": torch.zeros(0, dtype=torch.long, device=dev),
        "ph": no_phases(0),
        "fl": {id(z): xl.new_zeros(0, *z.shape) for z in nodes},
        "fu": {id(z): xl.new_zeros(0, *z.shape) for z in nodes},
    }
    box_width = (xu - xl).reshape(p_count, -1).amax(1).clamp(min=1e-12)

    def admit(ev: _Eval, ph: dict[int, Tensor], cap: Tensor, pid: Tensor) -> None:
        nonlocal closed, pool
        up = torch.minimum(ev.upper, cap)  # a domain is a subset of its parent
        can_relu = ev.relu_score >= 0
        can_input = (ev.xu - ev.xl).reshape(up.shape[0], -1).amax(1) > 1e-6 * box_width[pid]
        if input_split == "off":
            kind, can = torch.zeros_like(pid), can_relu
        elif input_split == "on":
            kind, can = torch.ones_like(pid), can_input
        else:
            kind, can = ((ev.coord_score > ev.relu_score) | ~can_relu).long(), can_relu | can_input
        if not nodes:
            can = torch.zeros_like(can)
        done = (up <= thresholds(lower)[pid]) | ~can | ev.empty
        closed = torch.maximum(closed, _group_max(torch.where(done, up, torch.zeros_like(up)), pid, p_count, 0.0))
        for p, n in zip(*np.unique(pid[done].cpu().numpy(), return_counts=True), strict=True):
            stats[p].domains_pruned += int(n)
        for p in pid[ev.empty].cpu().numpy().tolist():
            stats[p].infeasible += 1
        if ev.refused is not None:
            for p in pid[ev.refused].cpu().numpy().tolist():
                stats[p].lp_refused += 1
        keep = ~done
        new = {"up": up, "xl": ev.xl, "xu": ev.xu, "pid": pid, "kind": kind, "relu": ev.relu, "coord": ev.coord}
        new = {k: v[keep] for k, v in new.items()}
        new["ph"] = {k: ph[k][keep] for k in keys}
        new["fl"] = {k: ev.forward[k][0][keep] for k in keys}
        new["fu"] = {k: ev.forward[k][1][keep] for k in keys}
        pool = _pool_cat(pool, new, keys)

    admit(ev, no_phases(p_count), ev.upper, torch.arange(p_count, device=dev))
    # seconds per split domain (2 children, with the LPs the root did not need), refined by every iteration
    per_parent = 3 * t_eval / max(p_count, 1)
    min_iter = 0.0
    timed_out = False
    while pool["up"].numel():
        now = time.perf_counter()
        remaining = deadline - now
        # priority: domains deciding their input's max first (largest bound / input lower), then the rest
        lmax = _group_max(lower, group, n_groups)[group]  # (P,) best lower over the problem's input
        pid = pool["pid"]
        up = pool["up"]
        decisive = up > thresholds(lmax)[pid]
        log_up = torch.log(up.clamp(min=1e-300))
        key = torch.where(
            decisive,
            2 + log_up - torch.log(lmax[pid].clamp(min=1e-300)),
            1 - lower[pid].clamp(min=0) / up.clamp(min=1e-300),
        )
        if max_domains is not None:
            exhausted = torch.as_tensor(evaluated >= max_domains, device=dev)[pid]
            key = torch.where(exhausted, torch.full_like(key, -float("inf")), key)
            if bool(exhausted.all()):
                timed_out = True
                break
        fit = int(max(remaining - 0.5 * min_iter, 0.0) / max(per_parent, 1e-9))
        n_decisive = int((decisive & torch.isfinite(key)).sum())  # while some domain decides a max, only those
        if min_iter == 0.0 and remaining > 0:  # no measured iteration yet (the root's cost may be a warm-up): one
            fit = max(fit, 1)
        take_n = min(batch, n_decisive if n_decisive else int(torch.isfinite(key).sum()), fit)
        if take_n < 1 or remaining < min_iter:
            timed_out = True
            break
        top = torch.topk(key, take_n).indices
        rest = torch.ones(up.numel(), dtype=torch.bool, device=dev)
        rest[top] = False
        take = _pool_take(pool, top, keys)
        pool = _pool_take(pool, torch.nonzero(rest).flatten(), keys)
        p = take_n
        ph = {}
        is_relu = take["kind"] == 0
        for ni, k in enumerate(keys):
            base = take["ph"][k].reshape(p, -1)
            lo_c, hi_c = base.clone(), base.clone()
            sel = torch.nonzero(is_relu & (take["relu"][:, 0] == ni)).flatten()
            if sel.numel():
                el = take["relu"][sel, 1]
                lo_c[sel, el] = 1
                hi_c[sel, el] = -1
            ph[k] = torch.cat([lo_c, hi_c]).reshape(2 * p, *take["ph"][k].shape[1:])
        bl, bu = take["xl"].reshape(p, -1), take["xu"].reshape(p, -1)
        l1, u1, l2, u2 = bl.clone(), bu.clone(), bl.clone(), bu.clone()
        sel = torch.nonzero(~is_relu).flatten()
        if sel.numel():
            j = take["coord"][sel]
            mid = (bl[sel, j] + bu[sel, j]) / 2
            u1[sel, j] = mid
            l2[sel, j] = mid
        cl = torch.cat([l1, l2]).reshape(2 * p, *xl.shape[1:])
        cu = torch.cat([u1, u2]).reshape(2 * p, *xl.shape[1:])
        cpid = take["pid"].repeat(2)
        cdir = c[cpid]
        # the parent's forward bounds hold on both children (subsets of it): intersected with theirs
        within = (
            {
                k: (take["fl"][k].repeat(2, *[1] * len(z.shape)), take["fu"][k].repeat(2, *[1] * len(z.shape)))
                for k, z in zip(keys, nodes, strict=True)
            }
            if REUSE_PARENT
            else None
        )
        thr = thresholds(lower)[cpid]
        ev = _evaluate(graph, nodes, cl, cu, cdir, norm, ph, optimize, steps, thr, prover=prover, within=within)
        raise_lower(ev.xl[~ev.empty], ev.xu[~ev.empty], cpid[~ev.empty], cdir[~ev.empty])
        admit(ev, ph, take["up"].repeat(2), cpid)
        # bookkeeping: counts and the iteration's time, split by each problem's share of the batch
        elapsed = time.perf_counter() - now
        per_parent = elapsed / p if per_parent <= 0 else 0.5 * per_parent + 0.5 * elapsed / p
        min_iter = elapsed if min_iter == 0 else min(min_iter, elapsed)
        parents = take["pid"].cpu().numpy()
        counts = np.bincount(parents, minlength=p_count)
        evaluated += 2 * counts
        seconds += elapsed * counts / p
        relu_counts = np.bincount(parents[is_relu.cpu().numpy()], minlength=p_count)
        for q in np.nonzero(counts)[0].tolist():
            s = stats[q]
            s.iterations += 1
            s.relu_splits += int(relu_counts[q])
            s.input_splits += int(counts[q] - relu_counts[q])
    open_max = _group_max(pool["up"], pool["pid"], p_count, 0.0)
    upper = torch.maximum(closed, open_max)
    open_counts = np.bincount(pool["pid"].cpu().numpy(), minlength=p_count)
    for q, s in enumerate(stats):
        s.domains_evaluated = int(evaluated[q])
        s.domains_open = int(open_counts[q])
        s.timed_out = bool(timed_out and open_counts[q] > 0)
        s.seconds = float(seconds[q])
        s.lower = float(lower[q])
        s.upper = float(upper[q])
    return BabOutcome(upper, lower, point if bool(has_point.all()) else None, stats, time.perf_counter() - t0)


def branch_and_bound(
    graph: Graph,
    xl: Tensor,
    xu: Tensor,
    c: Tensor,
    norm: str,
    lower: float,
    time_budget: float = 10.0,
    batch: int = 64,
    rtol: float = 1e-4,
    optimize: bool = False,
    steps: int = 10,
    input_split: str = "off",
    max_domains: int | None = None,
) -> tuple[float, BabStats]:
    """Certified upper bound on one problem: ``xl``, ``xu`` ``(1, *in)``, ``c`` ``(1, 1, *out)`` (:func:`solve`
    with ``P = 1``; ``time_budget`` is wall-clock seconds of this call).

    ``lower`` is an attained value (domains whose bound is within ``rtol`` of it are closed). ``input_split``:
    ``"off"`` (ReLU splits only; the default: on the bundled MLPs with 10 inputs input splits helped one case in
    three), ``"on"`` (input splits only), ``"mixed"`` (the input coordinate when its influence beats the best ReLU
    score). ``max_domains`` stops (like the time budget) once that many domains were evaluated.
    """
    low = torch.tensor([lower], dtype=xl.dtype, device=xl.device)
    out = solve(
        graph,
        xl,
        xu,
        c,
        norm,
        low,
        time_budget=time_budget,
        batch=batch,
        rtol=rtol,
        optimize=optimize,
        steps=steps,
        input_split=input_split,
        max_domains=max_domains,
    )
    return float(out.upper[0]), out.stats[0]


def local_bab(
    graph: Graph,
    xl: Tensor,
    xu: Tensor,
    c: Tensor,
    norm: str,
    *,
    time_budget: float,
    t0: float | None = None,
    seed: int = 0,
    **options,
) -> tuple[Tensor, Tensor, Tensor, list[dict]]:
    """Branch and Bound for :func:`lipbound.local_lipschitz_bab`: boxes ``(B, *in)``, directions ``(B, K, *out)``.

    ``time_budget`` is wall-clock seconds from ``t0`` (default: now) to the return, the lower-bound search
    (:func:`lipbound.lower.lower_bound`, run first, its cost counted, stopped after :data:`LOWER_SHARE` of the
    budget) included. Returns ``upper``, ``lower``
    ``(B, K)``, the witness points ``(B, K, *in)`` of ``lower`` and per-problem stats (dicts of
    :class:`BabStats`, row-major over ``(B, K)``).
    """
    from lipbound.lower import lower_bound

    t0 = time.perf_counter() if t0 is None else t0
    b, k = c.shape[0], c.shape[1]
    t1 = time.perf_counter()
    share = LOWER_SHARE * time_budget
    # the region search's first forward-mode AD pass imports torch._dynamo (1-4 s, once per process): with less
    # lower-bound time than that it would overrun the budget, so only sampling and ascent run ("fast")
    effort = "fast" if share < FIRST_AD_SECONDS and "torch._dynamo" not in sys.modules else "default"
    low, argmax = lower_bound(graph, xl, xu, c, norm, seed=seed, deadline=t0 + share, effort=effort)
    shared = time.perf_counter() - t1
    in_shape = xl.shape[1:]
    with torch.no_grad():
        out = solve(
            graph,
            xl.repeat_interleave(k, 0),
            xu.repeat_interleave(k, 0),
            c.reshape(b * k, 1, *c.shape[2:]),
            norm,
            low.reshape(-1),
            argmax.reshape(b * k, *in_shape),
            group=torch.arange(b, device=xl.device).repeat_interleave(k),
            deadline=t0 + time_budget,
            shared_seconds=shared,
            **options,
        )
    stats = []
    for q, s in enumerate(out.stats):
        s.input, s.row = q // k, q % k
        stats.append(s.__dict__)
    point = out.lower_point.reshape(b, k, *in_shape) if out.lower_point is not None else argmax
    return out.upper.reshape(b, k), out.lower.reshape(b, k), point, stats
