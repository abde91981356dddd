"""FROZEN COPY of lipbound.bab as of commit 23b3708, for benchmarks/bab_bench.py only (the old BaB to compare
against). Not part of the package; do not edit.

Branch and Bound on ReLU phases and on the input box: tighten the certified local Lipschitz upper bound.

A *domain* is a sub-box of the input box together with fixed phases of some unstable ReLUs (``z_j >= 0`` or
``z_j <= 0``). Splitting a domain -- on a ReLU phase, or by halving the box along one input coordinate -- gives two
domains whose union is the parent, so ``L(box) = max over domains of L(domain)``. In a domain the split neurons'
pre-activation bounds are clamped (:func:`lipbound.engine.forward.apply_phases`), every bound *downstream* of them
is recomputed (forward pre-activations and the Jacobian graph), and their Jacobian gates become exact (1 or 0).

Per domain, the CROWN linear bounds ``L_j(x) <= z_j <= U_j(x)`` of the split neurons (valid on the domain) give
linear constraints on ``x`` (``U_j(x) >= 0`` for an active split, ``L_j(x) <= 0`` for an inactive one):

* interval constraint propagation over them shrinks the domain's box to a box that still contains the domain (the
  children are bounded on the smaller box) and proves some domains empty;
* an LP over them (HiGHS) proves further domains empty (only clear infeasibility, with a margin, prunes).

A domain's bound is also capped by its parent's (it is a subset). Lower bounds: the exact gradient norm at the
centre of every evaluated box (a point of the original box) raises the attained value, which closes more domains.

Loop (best first): evaluate the open domains with the largest upper bounds in one batch and split each

* on the unstable ReLU whose Jacobian gate is most uncertain -- the width ``max(0, u_g) - min(0, l_g)`` of
  ``s * g`` for ``s in [0, 1]`` and the upstream gradient bounds ``[l_g, u_g]`` -- or
* (``input_split``) on the input coordinate of largest influence: box radius times the gate-weighted magnitude of
  its coefficients in the unstable neurons' linear bounds,

and close a domain when its bound is within the tolerance of the best attained lower bound. The answer at any time
is ``max`` over open and closed domains: a valid upper bound (anytime), reported with the lower bound and the gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lipbound.engine.jacobian import GatedProduct
from lipbound.engine.pipeline import norm_upper, propagate
from lipbound.graph.ir import Graph, Node
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.relu import ReLU

INPUT_SPLIT_MODES = ("off", "on", "mixed")


@dataclass
class BabStats:
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


def split_nodes(graph: Graph) -> list[Node]:
    """Pre-activations of piecewise-linear activations (the neurons Branch and Bound may split)."""
    seen: dict[int, Node] = {}
    for n in graph.nodes:
        if isinstance(n.op, (ReLU, LeakyReLU)):
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


def _evaluate(graph, nodes, xl, xu, c, norm, phases, optimize, steps, threshold=None, lp=True) -> _Eval:
    """Bound the domains ``(xl, xu, phases)`` (batch D) and choose their splits."""
    d = xl.shape[0]
    cc = c.expand(d, *c.shape[1:])
    linear: dict = {}
    pb = propagate(graph, xl, xu, cc, "crown", optimize, steps, phases, linear)
    upper = norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, norm, "crown", optimize, steps)
    empty = torch.zeros(d, dtype=torch.bool, device=xl.device)
    for l, u in pb.forward.values():
        empty |= (l > u).reshape(d, -1).any(1)
    rows = _split_constraints(nodes, phases, linear, d)
    nl, nu = xl, xu
    if rows is not None:
        nl, nu, emp = _tighten_box(*rows, xl, xu)
        empty |= emp
        if lp:  # domains already closed by their bound need no LP
            check = ~empty if threshold is None else ~empty & (upper > threshold)
            empty |= _infeasible(*rows, nl, nu, check)
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
        score = torch.where(unstable, width, torch.full_like(width, -1.0)).reshape(d, -1)
        scores.append(score)
        if id(z) in linear:
            idx, lin = linear[id(z)]
            w = score[:, idx].clamp(min=0).unsqueeze(2)  # (D, S, 1)
            a = lin["A_u"].reshape(d, idx.numel(), n_in).abs() + lin["A_l"].reshape(d, idx.numel(), n_in).abs()
            influence += (w * a).sum(1)
    flat = torch.cat(scores, 1)
    best, pos = flat.max(1)
    offsets = torch.tensor([0] + [z.numel for z in nodes], device=flat.device).cumsum(0)
    node_idx = torch.searchsorted(offsets[1:], pos, right=True)
    elem = pos - offsets[node_idx]
    radius = (nu - nl).reshape(d, -1) / 2
    influence = influence * radius
    cscore, coord = (influence + 1e-12 * radius).max(1)
    return _Eval(upper, torch.stack([node_idx, elem], 1), best, coord, cscore, empty, nl, nu)


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


def _margin(a: Tensor, b: Tensor) -> Tensor:
    """Absolute slack (D, R) added to ``b``: the linear bounds are not rounded outward, so only clear
    infeasibility counts."""
    finite_b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    return 1e-7 * (1.0 + finite_b.abs() + a.abs().sum(2))


def _tighten_box(a: Tensor, b: Tensor, xl: Tensor, xu: Tensor, rounds: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Interval constraint propagation of ``a x <= b`` over the boxes: a box (D, *in) containing
    ``{x in [xl, xu] : a x <= b}`` and the domains where that set is empty."""
    shape = xl.shape
    lo, hi = xl.reshape(shape[0], 1, -1), xu.reshape(shape[0], 1, -1)
    bb = b + _margin(a, b)
    pos, neg = a > 0, a < 0
    empty = torch.zeros(shape[0], dtype=torch.bool, device=xl.device)
    for _ in range(rounds):
        terms = torch.minimum(a * lo, a * hi)  # (D, R, n)
        slack = bb - terms.sum(2)  # (D, R): b - min over the box of a x
        empty |= (slack < 0).any(1)
        s = slack.clamp(min=0).unsqueeze(2)
        safe = torch.where(a == 0, torch.ones_like(a), a)
        # a_i > 0: a_i x_i <= b - sum_{k != i} min(a_k x_k) = slack + a_i lo_i
        cand_hi = torch.where(pos & torch.isfinite(s), lo + s / safe, torch.full_like(a, float("inf")))
        cand_lo = torch.where(neg & torch.isfinite(s), hi + s / safe, torch.full_like(a, -float("inf")))
        new_hi = torch.minimum(hi, cand_hi.amin(1, keepdim=True))
        new_lo = torch.maximum(lo, cand_lo.amax(1, keepdim=True))
        # widen the new bounds by a relative rounding margin (they must contain the domain)
        pad = 1e-12 * (new_lo.abs() + new_hi.abs() + 1e-3)
        new_hi, new_lo = torch.minimum(hi, new_hi + pad), torch.maximum(lo, new_lo - pad)
        empty |= (new_lo > new_hi).reshape(shape[0], -1).any(1)
        lo, hi = new_lo, torch.maximum(new_hi, new_lo)
    return lo.reshape(shape), hi.reshape(shape), empty


def _infeasible(a: Tensor, b: Tensor, xl: Tensor, xu: Tensor, check: Tensor) -> Tensor:
    """Domains proven empty by an LP: ``x`` in the box with ``a x <= b`` (the split constraints, see
    :func:`_split_constraints`; when all ReLUs upstream of the split neurons are fixed they are exact and so is
    the test). Constraints are loosened by a small margin, so only clear infeasibility prunes. Uses scipy's HiGHS
    bindings directly when available (a few times less overhead per LP), else ``scipy.optimize.linprog``."""
    d = check.shape[0]
    out = torch.zeros(d, dtype=torch.bool)
    if not bool(check.any()):
        return out.to(check.device)
    bb = (b + _margin(a, b)).double().cpu()
    aa = a.double().cpu()
    lo, hi = xl.reshape(d, -1).double().cpu().numpy(), xu.reshape(d, -1).double().cpu().numpy()
    solve = _lp_solver()
    for i in torch.nonzero(check).flatten().tolist():
        keep = torch.isfinite(bb[i])
        if bool(keep.any()):
            out[i] = solve(aa[i][keep].numpy(), bb[i][keep].numpy(), lo[i], hi[i])
    return out.to(check.device)


def _lp_solver():
    """``solve(a, b, lo, hi) -> bool``: is ``{lo <= x <= hi : a x <= b}`` proven empty."""
    try:  # scipy's bundled HiGHS bindings: a few times less per-LP overhead than linprog (private module)
        from scipy.optimize._highspy import _core as highs
    except ImportError:  # pragma: no cover - depends on the scipy version
        highs = None
    if highs is not None:
        h = highs._Highs()
        h.setOptionValue("output_flag", False)
        infeasible = highs.HighsModelStatus.kInfeasible

        def solve(a, b, lo, hi) -> bool:
            r, n = a.shape
            lp = highs.HighsLp()
            lp.num_col_, lp.num_row_ = n, r
            lp.col_cost_, lp.col_lower_, lp.col_upper_ = np.zeros(n), lo, hi
            lp.row_lower_, lp.row_upper_ = np.full(r, -highs.kHighsInf), b
            mat = lp.a_matrix_
            mat.format_ = highs.MatrixFormat.kRowwise
            mat.start_ = np.arange(0, r * n + 1, n, dtype=np.int32)
            mat.index_ = np.tile(np.arange(n, dtype=np.int32), r)
            mat.value_ = np.ascontiguousarray(a).reshape(-1)
            h.clearSolver()
            h.passModel(lp)
            h.run()
            return h.getModelStatus() == infeasible

        return solve
    from scipy.optimize import linprog

    def solve_scipy(a, b, lo, hi) -> bool:
        res = linprog(np.zeros(a.shape[1]), A_ub=a, b_ub=b, bounds=list(zip(lo, hi, strict=True)), method="highs")
        return res.status == 2

    return solve_scipy


def _attained(graph: Graph, lo: Tensor, hi: Tensor, c: Tensor, norm: str) -> float:
    """Largest exact gradient norm at the centres of the boxes ``[lo, hi]`` (N, *in), each moved off any kink
    within its box (:func:`lipbound.lower.differentiable_points`; points left on a kink are skipped): a valid
    lower bound."""
    from lipbound.lower import differentiable_points, dual_norm, gradients

    if lo.shape[0] == 0:
        return 0.0
    x, clean = differentiable_points(graph, (lo + hi) / 2, lo, hi, torch.Generator().manual_seed(0))
    if not clean.any():
        return 0.0
    x = x[clean]
    g = gradients(graph, x, c.reshape(1, *c.shape[2:]).expand(x.shape[0], *c.shape[2:]))
    return float(dual_norm(g, norm).max())


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
    """Certified upper bound on one problem: ``xl``, ``xu`` ``(1, *in)``, ``c`` ``(1, 1, *out)``.

    ``lower`` is an attained value (domains whose bound is within ``rtol`` of it are closed). ``input_split``:
    ``"off"`` (ReLU splits only; the default: on the bundled MLPs with 10 inputs input splits helped one case in
    three), ``"on"`` (input splits only), ``"mixed"`` (the input coordinate when its influence beats the best ReLU
    score). ``max_domains`` stops (like the time budget) once that many domains were evaluated.
    """
    if input_split not in INPUT_SPLIT_MODES:
        raise ValueError(f"input_split must be one of {INPUT_SPLIT_MODES}, got {input_split!r}")
    t0 = time.perf_counter()
    stats = BabStats(lower=lower)
    nodes = split_nodes(graph)
    if not nodes:
        pb = propagate(graph, xl, xu, c, "crown", optimize, steps)
        up = norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, norm, "crown", optimize, steps)
        return float(up[0]), stats
    keys = [id(z) for z in nodes]

    def no_phases(n: int) -> dict[int, Tensor]:
        return {id(z): torch.zeros(n, *z.shape, dtype=torch.int8, device=xl.device) for z in nodes}

    ev = _evaluate(
        graph,
        nodes,
        xl,
        xu,
        c,
        norm,
        no_phases(1),
        optimize,
        steps,
    )
    stats.domains_evaluated = 1
    lower = max(lower, _attained(graph, ev.xl, ev.xu, c, norm))
    closed = 0.0
    # open domains, batched: bound, box, phases, chosen split (kind 0 ReLU / 1 input, node, element, coordinate)
    pool: dict = {
        "up": torch.zeros(0, dtype=xl.dtype, device=xl.device),
        "xl": xl[:0],
        "xu": xu[:0],
        "ph": no_phases(0),
        "kind": torch.zeros(0, dtype=torch.long),
        "relu": torch.zeros(0, 2, dtype=torch.long),
        "coord": torch.zeros(0, dtype=torch.long),
    }
    min_width = 1e-6 * float((xu - xl).max().clamp(min=1e-12))

    def admit(ev: _Eval, ph: dict[int, Tensor], cap: Tensor) -> None:
        nonlocal closed, pool
        up = torch.minimum(ev.upper, cap)  # a domain is a subset of its parent
        threshold = lower + rtol * max(abs(lower), 1e-12)
        can_relu = ev.relu_score >= 0
        can_input = (ev.xu - ev.xl).reshape(up.shape[0], -1).max(1).values > min_width
        if input_split == "off":
            kind = torch.zeros_like(can_relu, dtype=torch.long)
            can = can_relu
        elif input_split == "on":
            kind = torch.ones_like(can_relu, dtype=torch.long)
            can = can_input
        else:
            kind = ((ev.coord_score > ev.relu_score) | ~can_relu).long()
            can = can_relu | can_input
        done = (up <= threshold) | ~can | ev.empty
        if bool(done.any()):
            closed = max(closed, float(up[done].max()))
            stats.domains_pruned += int(done.sum())
        keep = ~done
        pool = {
            "up": torch.cat([pool["up"], up[keep]]),
            "xl": torch.cat([pool["xl"], ev.xl[keep]]),
            "xu": torch.cat([pool["xu"], ev.xu[keep]]),
            "ph": {k: torch.cat([pool["ph"][k], ph[k][keep]]) for k in keys},
            "kind": torch.cat([pool["kind"], kind[keep].cpu()]),
            "relu": torch.cat([pool["relu"], ev.relu[keep].cpu()]),
            "coord": torch.cat([pool["coord"], ev.coord[keep].cpu()]),
        }

    admit(ev, no_phases(1), ev.upper)
    while pool["up"].numel():
        over = max_domains is not None and stats.domains_evaluated >= max_domains
        if over or time.perf_counter() - t0 > time_budget:
            stats.timed_out = True
            break
        stats.iterations += 1
        n = pool["up"].numel()
        top = torch.topk(pool["up"], min(batch, n)).indices
        rest = torch.ones(n, dtype=torch.bool)
        rest[top.cpu()] = False
        take = {
            "up": pool["up"][top],
            "xl": pool["xl"][top],
            "xu": pool["xu"][top],
            "ph": {k: v[top] for k, v in pool["ph"].items()},
            "kind": pool["kind"][top.cpu()],
            "relu": pool["relu"][top.cpu()],
            "coord": pool["coord"][top.cpu()],
        }
        pool = {
            "up": pool["up"][rest],
            "xl": pool["xl"][rest],
            "xu": pool["xu"][rest],
            "ph": {k: v[rest] for k, v in pool["ph"].items()},
            "kind": pool["kind"][rest],
            "relu": pool["relu"][rest],
            "coord": pool["coord"][rest],
        }
        p = take["up"].numel()
        # children: [phase +1 / lower half] for all parents, then [phase -1 / upper half]
        ph = {}
        is_relu = take["kind"] == 0
        stats.relu_splits += int(is_relu.sum())
        stats.input_splits += int((~is_relu).sum())
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
        threshold = lower + rtol * max(abs(lower), 1e-12)
        ev = _evaluate(graph, nodes, cl, cu, c, norm, ph, optimize, steps, threshold)
        stats.domains_evaluated += 2 * p
        stats.infeasible += int(ev.empty.sum())
        lower = max(lower, _attained(graph, ev.xl[~ev.empty], ev.xu[~ev.empty], c, norm))
        admit(ev, ph, take["up"].repeat(2))
    stats.domains_open = int(pool["up"].numel())
    stats.seconds = time.perf_counter() - t0
    stats.lower = lower
    best_open = float(pool["up"].max()) if pool["up"].numel() else 0.0
    return max(closed, best_open), stats


def local_lipschitz_bab_v1(model, x0, eps, norm="inf", c=None, *, time_budget=10.0, batch_domains=64, seed=0):
    """The pre-rewrite ``lipbound.local_lipschitz_bab`` (frozen for the benchmark): the lower-bound search, then
    ``time_budget`` seconds per (input, row) problem, one problem after the other. Returns the result as a dict:
    ``upper``, ``lower`` (B, K) and the per-problem stats."""
    from lipbound.lower import lower_bound
    from lipbound.problem import make_problem, parse_norm

    nrm = parse_norm(norm)
    pr = make_problem(model, x0, eps, None, None, c, torch.float64)
    b, k = pr.c.shape[0], pr.c.shape[1]
    low, _ = lower_bound(pr.graph, pr.xl, pr.xu, pr.c, nrm, seed=seed)
    upper = torch.empty(b, k, dtype=pr.dtype)
    lows = low.clone()
    stats = []
    with torch.no_grad():
        for i in range(b):
            for j in range(k):
                up, st = branch_and_bound(
                    pr.graph,
                    pr.xl[i : i + 1],
                    pr.xu[i : i + 1],
                    pr.c[i : i + 1, j : j + 1],
                    nrm,
                    float(low[i, j]),
                    time_budget=time_budget,
                    batch=batch_domains,
                )
                upper[i, j] = up
                lows[i, j] = max(float(low[i, j]), st.lower)
                stats.append(st.__dict__)
    return {"upper": upper, "lower": lows, "stats": stats}
