"""Branch and Bound on ReLU phases: tighten the certified local Lipschitz upper bound towards the exact value.

A *domain* fixes the phase of some unstable ReLUs (``z_j >= 0`` or ``z_j <= 0``). The box is the union of its
domains, so ``L(box) = max over domains of L(domain)``. In a domain the split neurons' pre-activation bounds are
clamped (:func:`lipbound.engine.forward.apply_phases`), every bound *downstream* of them is recomputed (forward
pre-activations and the Jacobian graph), and their Jacobian gates become exact (1 or 0). A domain whose forward
bounds become empty (``l > u``) holds no point and is dropped.

Loop (best first): evaluate the open domains with the largest upper bounds in one batch, split each on the
unstable ReLU whose Jacobian gate is most uncertain -- the width ``max(0, u_g) - min(0, l_g)`` of ``s * g`` for
``s in [0, 1]`` and the upstream gradient bounds ``[l_g, u_g]`` -- and close a domain when its bound is within the
tolerance of the best attained lower bound. The answer at any time is ``max`` over open and closed domains: a
valid upper bound (anytime), reported with the lower bound and the gap.

This is the "recompute downstream bounds with the split neuron clamped" form of per-domain refinement; exact
handling of split constraints on the input (beta-CROWN-style multipliers) would be tighter still.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from lipbound.engine.jacobian import GatedProduct
from lipbound.graph.ir import Graph, Node
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.relu import ReLU


@dataclass
class BabStats:
    domains_evaluated: int = 0
    domains_open: int = 0
    domains_pruned: int = 0
    infeasible: int = 0
    iterations: int = 0
    timed_out: bool = False
    seconds: float = 0.0


def split_nodes(graph: Graph) -> list[Node]:
    """Pre-activations of piecewise-linear activations (the neurons Branch and Bound may split)."""
    seen: dict[int, Node] = {}
    for n in graph.nodes:
        if isinstance(n.op, (ReLU, LeakyReLU)):
            seen.setdefault(id(n.inputs[0]), n.inputs[0])
    return list(seen.values())


def _evaluate(graph, nodes, xl, xu, c, norm, phases, optimize, steps):
    """Upper bounds (D,) of the domains, and the split (node index, flat element) (D, 2) with score (D,)."""
    from lipbound.local import _norm_upper, _propagate

    d = next(iter(phases.values())).shape[0]
    box_l, box_u = xl.expand(d, *xl.shape[1:]), xu.expand(d, *xu.shape[1:])
    cc = c.expand(d, *c.shape[1:])
    linear: dict = {}
    pb = _propagate(graph, box_l, box_u, cc, "crown", optimize, steps, phases, linear)
    upper = _norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, norm, "crown", optimize, steps)
    empty = torch.zeros(d, dtype=torch.bool, device=xl.device)
    for l, u in pb.forward.values():
        empty |= (l > u).reshape(d, -1).any(1)
    empty |= _infeasible_splits(nodes, phases, linear, xl, xu, ~empty)
    upper = torch.where(empty, torch.zeros_like(upper), upper)
    gate_of = {id(n.inputs[0]): n for n in pb.graph.nodes if isinstance(n.op, GatedProduct)}
    scores = []
    for z in nodes:
        zl, zu = pb.forward[id(z)]
        unstable = (zl < 0) & (zu > 0)
        gate = gate_of.get(id(z))
        if gate is None:  # the output does not depend on this neuron through the Jacobian
            scores.append(torch.full((d, z.numel), -1.0, dtype=zl.dtype, device=zl.device))
            continue
        gl, gu = pb.backward[id(gate.inputs[1])]
        width = gu.clamp(min=0) - gl.clamp(max=0)
        scores.append(torch.where(unstable, width, torch.full_like(width, -1.0)).reshape(d, -1))
    flat = torch.cat(scores, 1)
    best, pos = flat.max(1)
    offsets = torch.tensor([0] + [z.numel for z in nodes], device=flat.device).cumsum(0)
    node_idx = torch.searchsorted(offsets[1:], pos, right=True)
    elem = pos - offsets[node_idx]
    return upper, torch.stack([node_idx, elem], 1), best, empty


def _infeasible_splits(nodes, phases, linear, xl: Tensor, xu: Tensor, check: Tensor) -> Tensor:
    """Domains proven empty by an LP: ``x`` in the box with ``U_j(x) >= 0`` for every active split ``j`` and
    ``L_j(x) <= 0`` for every inactive one, ``L_j <= z_j <= U_j`` the CROWN linear bounds valid on the domain.
    (When all ReLUs upstream of the split neurons are fixed these bounds are exact and so is the test.)
    Constraints are loosened by a small margin, so only clear infeasibility prunes."""
    from scipy.optimize import linprog

    d = check.shape[0]
    out = torch.zeros(d, dtype=torch.bool)
    n_in = xl[0].numel()
    bounds = list(zip(xl[0].reshape(-1).tolist(), xu[0].reshape(-1).tolist(), strict=True))
    rows_a: list[list[Tensor]] = [[] for _ in range(d)]
    rows_b: list[list[Tensor]] = [[] for _ in range(d)]
    for z in nodes:
        if id(z) not in linear:
            continue
        idx, lin = linear[id(z)]
        ph = phases[id(z)].reshape(d, -1)[:, idx]  # (D, S)
        au, cu = lin["A_u"].reshape(d, idx.numel(), n_in), lin["c_u"]
        al, cl = lin["A_l"].reshape(d, idx.numel(), n_in), lin["c_l"]
        for i in torch.nonzero(check & (ph != 0).any(1)).flatten().tolist():
            act, ina = ph[i] > 0, ph[i] < 0
            rows_a[i] += [-au[i][act], al[i][ina]]
            rows_b[i] += [cu[i][act], -cl[i][ina]]
    for i in range(d):
        if not rows_a[i]:
            continue
        a = torch.cat(rows_a[i]).double().cpu().numpy()
        b = torch.cat(rows_b[i]).double().cpu().numpy()
        if a.shape[0] == 0:
            continue
        scale = 1.0 + abs(b).max() + abs(a).sum(1).max()
        res = linprog([0.0] * n_in, A_ub=a, b_ub=b + 1e-7 * scale, bounds=bounds, method="highs")
        out[i] = res.status == 2  # proven infeasible
    return out.to(check.device)


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
) -> tuple[float, BabStats]:
    """Certified upper bound on one problem: ``xl``, ``xu`` ``(1, *in)``, ``c`` ``(1, 1, *out)``.

    ``lower`` is an attained value (domains whose bound is within ``rtol`` of it are closed).
    """
    t0 = time.perf_counter()
    stats = BabStats()
    nodes = split_nodes(graph)
    root = {id(z): torch.zeros(1, *z.shape, dtype=torch.int8, device=xl.device) for z in nodes}
    if not nodes:
        from lipbound.local import _norm_upper, _propagate

        pb = _propagate(graph, xl, xu, c, "crown", optimize, steps)
        up = _norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, norm, "crown", optimize, steps)
        return float(up[0]), stats
    up, split, score, _ = _evaluate(graph, nodes, xl, xu, c, norm, root, optimize, steps)
    stats.domains_evaluated = 1
    closed = 0.0
    # open domains: (upper, phases {id: (1, *shape)}, (node index, element))
    open_: list[tuple[float, dict[int, Tensor], tuple[int, int]]] = []
    threshold = lower + rtol * max(abs(lower), 1e-12)

    def admit(u: float, ph: dict[int, Tensor], sp: Tensor, sc: float) -> None:
        nonlocal closed
        if u <= threshold or sc < 0:  # within tolerance, or nothing left to split: final for this domain
            closed = max(closed, u)
            stats.domains_pruned += 1
        else:
            open_.append((u, ph, (int(sp[0]), int(sp[1]))))

    admit(float(up[0]), root, split[0], float(score[0]))
    while open_:
        if time.perf_counter() - t0 > time_budget:
            stats.timed_out = True
            break
        stats.iterations += 1
        open_.sort(key=lambda item: -item[0])
        parents, open_ = open_[:batch], open_[batch:]
        children: list[dict[int, Tensor]] = []
        for _, ph, (ni, el) in parents:
            key = id(nodes[ni])
            for phase in (1, -1):
                child = dict(ph)
                flat = ph[key].reshape(-1).clone()
                flat[el] = phase
                child[key] = flat.reshape(ph[key].shape)
                children.append(child)
        stacked = {k: torch.cat([ch[k] for ch in children]) for k in root}
        up, split, score, empty = _evaluate(graph, nodes, xl, xu, c, norm, stacked, optimize, steps)
        stats.domains_evaluated += len(children)
        stats.infeasible += int(empty.sum())
        for i, ch in enumerate(children):
            admit(float(up[i]), ch, split[i], float(score[i]))
    stats.domains_open = len(open_)
    stats.seconds = time.perf_counter() - t0
    best_open = max((u for u, _, _ in open_), default=0.0)
    return max(closed, best_open), stats
