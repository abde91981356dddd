"""Certified LOWER bounds on the local Lipschitz constant: gradient norms found at points of the box.

For any ``x`` in the box, ``||grad c^T f(x)||_*`` (``*`` the dual of the input norm) is attained by the network,
so the maximum over the points we try is a valid lower bound on
``L = sup_{x in box} sup_{J in Clarke(x)} ||J^T c||_*``. We try:

1. the box centre, uniform samples and random vertices;
2. projected sign-gradient ascent on the gradient norm of a *smoothed* network (ReLU -> softplus whose temperature
   follows a geometric schedule from smooth to sharp; the exact network's gradient norm is piecewise constant, so
   it has no useful ascent direction), from several restarts, evaluating the exact network's gradient norm at every
   iterate;
3. a local search over activation regions (piecewise-linear activations only): at the current point the gradient is
   multilinear in the gates, so flipping the gate of neuron ``j`` alone changes it by exactly
   ``(s'_j - s_j) u_j a_j`` (``u_j = d c^T f / d h_j`` from one backward pass, ``a_j = d z_j / d x`` from one batched
   forward-mode pass). Every neuron's flip is scored at once, the best few are targeted by moving (in the box) just
   across the neuron's linearised hyperplane ``z_j = 0`` (then Polyak steps on the linearised sign constraints of
   the target region, projected onto the box), and the exact gradient norm decides. Each walker moves to its best
   neighbour even when that is worse (flipped neurons are tabu, so it does not cycle); starts are the best points of
   sampling and ascent. Runs under ``effort="default"`` only when the net is small (cheap), always under
   ``"thorough"``.

Only exact gradient norms (autograd on the exact network) enter the returned value, and only at points where the
network is differentiable: autograd takes ``relu'(0) = 0`` on a kink, a gate pattern that no nearby point (and no
Clarke element) may realise (``relu(x) - relu(-x) - x == 0`` has autograd gradient -1 at 0). A candidate that would
become the best point is accepted only when every ReLU / LeakyReLU pre-activation is either clear of its kink
(``|z_j| > tol``, a rounding-aware tolerance) or constant near the point (bitwise the same value at two random
nearby points); otherwise it is moved to random nearby points of the box, re-evaluated there, and dropped
if none of them is clean (:func:`differentiable_points`). The returned point is that witness.
"""

from __future__ import annotations

import math
import time

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor

from lipbound.graph.ir import Graph
from lipbound.ops.base import ConstOp, InputOp, kink_pieces

# per effort: restart and ascent-step multipliers, local-search rounds, candidates per round and starting points.
# "default" gets the "small" settings when B * K * input dim * piecewise-linear neurons <= SMALL_NET (cheap search).
EFFORTS: dict[str, dict[str, float]] = {
    "fast": {"samples": 1, "restarts": 1, "steps": 1, "rounds": 0, "cands": 0, "starts": 0, "pool": 0},
    "default": {"samples": 1, "restarts": 1, "steps": 1, "rounds": 0, "cands": 0, "starts": 0, "pool": 0},
    "small": {"samples": 16, "restarts": 4, "steps": 1, "rounds": 12, "cands": 8, "starts": 4, "pool": 8},
    "thorough": {"samples": 4, "restarts": 4, "steps": 2, "rounds": 20, "cands": 12, "starts": 5, "pool": 12},
}
SMALL_NET = 50000
SEARCH_WORK = 5_000_000  # walkers * input dim * neurons * candidates per local-search round
MAX_SEARCH_DIM = 1024  # forward-mode Jacobian of the pre-activations costs input-dim forward passes


def dual_norm(g: Tensor, norm: str) -> Tensor:
    """``||g||_*`` over all per-sample dims: l1 for input norm inf, l2 for 2, l_inf for 1."""
    flat = g.reshape(g.shape[0], -1)
    if norm == "inf":
        return flat.abs().sum(1)
    if norm == "2":
        return flat.norm(dim=1)
    return flat.abs().amax(1)


def _evaluate(graph: Graph, x: Tensor, beta: float | None, taps: list | None = None) -> Tensor:
    """Network output; with ``beta`` the piecewise-linear activations are replaced by softplus surrogates.

    With ``taps`` (a list), ``(op, pre-activation, activation output)`` of every ReLU / LeakyReLU is appended.
    """
    vals: dict[int, Tensor] = {}
    for n in graph.nodes:
        if isinstance(n.op, InputOp):
            v = x
        elif isinstance(n.op, ConstOp):
            v = n.op.value
        else:
            args = [vals[id(i)] for i in n.inputs]
            pieces = kink_pieces(n.op)
            if beta is not None and pieces is not None:  # left z + (right - left) relu(z), relu -> softplus
                v = pieces[0] * args[0] + (pieces[1] - pieces[0]) * F.softplus(args[0], beta=beta)
            else:
                v = n.op.forward(*args)
            if taps is not None and pieces is not None:
                taps.append((n.op, args[0], v))
        vals[id(n)] = v
    return vals[id(graph.output)]


def gradients(graph: Graph, x: Tensor, c: Tensor, beta: float | None = None, create_graph: bool = False) -> Tensor:
    """``grad_x <c_i, f(x_i)>`` for each row ``i`` (``x``: ``(N, *in)``, ``c``: ``(N, *out)``)."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        y = _evaluate(graph, x, beta)
        (g,) = torch.autograd.grad((y * c).sum(), x, create_graph=create_graph)
    return g


KINK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
NUDGES = (1e-6, 1e-4, 1e-2)  # relative sizes (of the box width) of the moves off a kink


def _pre_activations(graph: Graph, x: Tensor) -> list[Tensor]:
    """Every ReLU / LeakyReLU pre-activation at ``x``, flattened to ``(N, H_l)``."""
    taps: list = []
    with torch.no_grad():
        _evaluate(graph, x, None, taps)
    return [z.reshape(x.shape[0], -1) for _, z, _ in taps]


def kink_ties(graph: Graph, x: Tensor, generator: torch.Generator | None = None, step: float = 1e-3) -> Tensor:
    """Whether each point of ``x`` (``(N, *in)``) lies on (or within rounding of) a kink that matters.

    Pre-activation ``z_j`` of a ReLU / LeakyReLU is *tied* when ``|z_j| <= tol * (1 + max_i |z_i|)`` over its layer
    (``tol`` from :data:`KINK_RTOL`, far above the rounding error of a well-conditioned sum) and it moves with ``x``:
    its value at ``x +- h v`` (``v`` a random direction, ``h = step * (1 + max |x|)``) is not bitwise equal to its
    value at ``x``. A pre-activation that does not move (zero incoming weights, a dead upstream layer) is harmless,
    whatever gate autograd picks; rounding noise counts as moving, which only makes the test stricter. A point with
    no tied pre-activation has a neighbourhood on which every gate is fixed, so the network is differentiable there
    and autograd's gradient is its true gradient. Returns ``(N,)`` bools.
    """
    n = x.shape[0]
    flat = x.detach().reshape(n, -1)
    v = torch.rand(flat.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
    h = step * (1 + flat.abs().amax(1, keepdim=True))
    at = _pre_activations(graph, x.detach())
    plus = _pre_activations(graph, (flat + h * v).reshape(x.shape))
    minus = _pre_activations(graph, (flat - h * v).reshape(x.shape))
    tied = torch.zeros(n, dtype=torch.bool, device=x.device)
    tol = KINK_RTOL.get(x.dtype, 1e-4)
    for z, zp, zm in zip(at, plus, minus, strict=True):
        scale = 1 + z.abs().amax(1, keepdim=True)
        moving = (zp != z) | (zm != z)
        tied |= ((z.abs() <= tol * scale) & moving).any(1)
    return tied


def differentiable_points(
    graph: Graph, x: Tensor, lo: Tensor, hi: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Replace points on kinks by nearby clean points of the box ``[lo, hi]`` (all ``(N, *in)``).

    Tied points are moved by ``delta * u`` (``u`` uniform in ``[-1, 1]^d``, ``delta`` a growing fraction
    :data:`NUDGES` of the box width) and clipped to the box; the first clean move is kept. Returns the points and
    whether each is clean (points that stay tied are returned unchanged with ``False``).
    """
    tied = kink_ties(graph, x, generator)
    if not tied.any():
        return x, ~tied
    x = x.clone()
    width = hi - lo
    for frac in NUDGES:
        idx = tied.nonzero().flatten()
        if idx.numel() == 0:
            break
        u = torch.rand(x[idx].shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        moved = torch.minimum(torch.maximum(x[idx] + frac * width[idx] * u, lo[idx]), hi[idx])
        still = kink_ties(graph, moved, generator)
        ok = idx[~still]
        x[ok] = moved[~still]
        tied[ok] = False
    return x, ~tied


def _gates(op, z: Tensor) -> tuple[Tensor, Tensor]:
    """Autograd's gate at ``z`` and the gate of the other side of ``z = 0``."""
    left, right = kink_pieces(op)
    pos = z > 0
    r, a = torch.full_like(z, right), torch.full_like(z, left)
    return torch.where(pos, r, a), torch.where(pos, a, r)


def _flip_moves(
    graph: Graph,
    x: Tensor,
    c: Tensor,
    norm: str,
    lo: Tensor,
    hi: Tensor,
    m: int,
    pursuit: int = 10,
    tabu: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Points just across the hyperplanes of the ``m`` most promising single-neuron flips.

    ``x``, ``lo``, ``hi``: ``(N, d)`` (flattened), ``c``: ``(N, *out)``; ``tabu`` ``(N, H)`` excludes neurons.
    Returns candidate points ``(N, m, d)``, whether each is valid ``(N, m)`` and the targeted neuron ``(N, m)``;
    ``None`` if the graph has no piecewise-linear activation.
    """
    n, d = x.shape
    in_shape = graph.input.shape
    taps: list = []
    with torch.enable_grad():
        xg = x.detach().reshape(n, *in_shape).requires_grad_(True)
        y = _evaluate(graph, xg, None, taps)
        if not taps:
            return None
        grads = torch.autograd.grad((y * c).sum(), [xg] + [t[2] for t in taps], allow_unused=True)
    g = grads[0].reshape(n, d)
    zs = torch.cat([t[1].detach().reshape(n, -1) for t in taps], 1)  # (N, H)
    us = torch.cat(
        [
            (gr if gr is not None else torch.zeros_like(t[2])).reshape(n, -1)
            for gr, t in zip(grads[1:], taps, strict=True)
        ],
        1,
    )
    gate, other = zip(*[_gates(op, z.detach().reshape(n, -1)) for op, z, _ in taps], strict=True)
    delta = (torch.cat(other, 1) - torch.cat(gate, 1)) * us  # (N, H)
    # Jacobian of every pre-activation: forward mode with one tangent per input coordinate
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    jac = []
    with torch.no_grad(), fwad.dual_level():
        xd = fwad.make_dual(
            x.repeat_interleave(d, 0).reshape(n * d, *in_shape), eye.repeat(n, 1).reshape(-1, *in_shape)
        )
        taps2: list = []
        _evaluate(graph, xd, None, taps2)
        for _, z, _ in taps2:
            t = fwad.unpack_dual(z).tangent
            jac.append(
                torch.zeros(n, d, z[0].numel(), dtype=x.dtype, device=x.device) if t is None else t.reshape(n, d, -1)
            )
    a = torch.cat(jac, 2).transpose(1, 2)  # (N, H, d): d z_j / d x
    new = dual_norm((g.unsqueeze(1) + delta.unsqueeze(2) * a).reshape(-1, d), norm).reshape(n, -1)
    # move in the box, l_inf-steepest, to just across z_j = 0 (linearised): x' = clamp(x + t dir)
    width = (hi - lo).amax(1, keepdim=True).clamp(min=1e-30)  # (N, 1)
    anorm = a.abs().sum(2)  # (N, H)
    need = zs.abs() + 1e-3 * width * anorm  # overshoot by 0.1% of the box width
    direction = -torch.sign(zs).unsqueeze(2) * torch.sign(a)  # (N, H, d)
    room = torch.where(direction > 0, (hi - x).unsqueeze(1), (x - lo).unsqueeze(1)).clamp(min=0)
    step = need / anorm.clamp(min=1e-30)
    for _ in range(4):  # f(t) = sum_i |a_i| min(t, room_i) is concave with f(0) = 0: t * need / f(t) rises to the root
        got = (a.abs() * torch.minimum(step.unsqueeze(2), room)).sum(2)
        step = torch.minimum(step * need / got.clamp(min=1e-30), width)
    got = (a.abs() * torch.minimum(step.unsqueeze(2), room)).sum(2)
    ok = (got >= need * (1 - 1e-9)) & (anorm > 0) & (delta != 0)
    if tabu is not None:  # (N, H) neurons not to flip
        ok = ok & ~tabu
    score = torch.where(ok, new, torch.full_like(new, -math.inf))
    m = min(m, score.shape[1])
    top, idx = score.topk(m, dim=1)  # (N, m)
    gi = idx.unsqueeze(2).expand(n, m, d)
    pick_dir, pick_room = direction.gather(1, gi), room.gather(1, gi)
    pick_step = step.gather(1, idx).unsqueeze(2)
    move = pick_dir * torch.minimum(pick_step, pick_room)  # (N, m, d): start of the pursuit
    # pursue the target region on the linearised pre-activations: every neuron keeps its sign except the flipped
    # one; Polyak steps on the total (row-normalised) hinge violation, projected onto the box
    sig = torch.where(zs > 0, 1.0, -1.0).to(x.dtype).unsqueeze(1).expand(n, m, -1).clone()  # (N, m, H)
    sig.scatter_(2, idx.unsqueeze(2), -sig.gather(2, idx.unsqueeze(2)))
    inv = 1.0 / anorm.clamp(min=1e-30)
    an = a * inv.unsqueeze(2)  # rows scaled to unit l1 norm
    base = sig * (zs * inv).unsqueeze(1)  # (N, m, H)
    mu = 1e-3 * width.unsqueeze(2)  # (N, 1, 1)
    live = (anorm > 0).to(x.dtype).unsqueeze(1)
    dlo, dhi = (lo - x).unsqueeze(1), (hi - x).unsqueeze(1)
    for _ in range(pursuit):
        viol = (mu - base - sig * torch.einsum("nhd,nmd->nmh", an, move)).clamp(min=0) * live
        dirn = torch.einsum("nmh,nhd->nmd", sig * (viol > 0).to(x.dtype), an)
        total = viol.sum(2, keepdim=True)
        move = move + total / (dirn * dirn).sum(2, keepdim=True).clamp(min=1e-30) * dirn
        move = torch.minimum(torch.maximum(move, dlo), dhi)
    pts = x.unsqueeze(1) + move
    pts = torch.minimum(torch.maximum(pts, lo.unsqueeze(1)), hi.unsqueeze(1))
    return pts, torch.isfinite(top), idx


def lower_bound(
    graph: Graph,
    x_lower: Tensor,
    x_upper: Tensor,
    c: Tensor,
    norm: str,
    samples: int = 64,
    restarts: int = 4,
    steps: int = 20,
    seed: int = 0,
    *,
    effort: str = "default",
    deadline: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Best gradient norm found in the box, per input and direction.

    ``x_lower``, ``x_upper``: ``(B, *in)``; ``c``: ``(B, K, *out)``. Returns ``(values (B, K), points (B, K, *in))``.
    ``effort``: ``"fast"`` (sampling and smoothed ascent only), ``"default"`` or ``"thorough"`` (more restarts,
    longer ascent and local search over activation regions). ``deadline`` (a ``time.perf_counter()`` value): the
    ascent and the region search stop at the first step past it (the value is still attained).
    """
    if effort not in ("fast", "default", "thorough"):
        raise ValueError(f"effort must be 'fast', 'default' or 'thorough', got {effort!r}")
    b, k = c.shape[0], c.shape[1]
    in_shape = x_lower.shape[1:]
    d = int(torch.Size(in_shape).numel())
    pwl = sum(n.numel for n in graph.nodes if kink_pieces(n.op) is not None)
    cfg = EFFORTS["small" if effort == "default" and b * k * d * pwl <= SMALL_NET else effort]
    nd = len(in_shape)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lo = x_lower.unsqueeze(1).expand(b, k, *in_shape)
    hi = x_upper.unsqueeze(1).expand(b, k, *in_shape)

    def rand(shape) -> Tensor:
        return torch.rand(shape, generator=gen, dtype=x_lower.dtype).to(x_lower.device)

    best = torch.full((b, k), -1.0, dtype=x_lower.dtype, device=x_lower.device)
    best_x = ((lo + hi) / 2).clone()

    flat_c = c.reshape(b * k, *c.shape[2:])
    kink_gen = torch.Generator(device="cpu").manual_seed(seed + 1)  # own stream: the search's samples do not shift

    def consider(points: Tensor) -> Tensor:
        """points: (R, B, K, *in) -> exact gradient norms (R, B, K); the best is kept if it is a clean witness.

        The norms returned steer the search (they may sit on kinks); ``best`` only takes values re-evaluated at a
        point where the network is differentiable (:func:`differentiable_points`).
        """
        points = torch.minimum(torch.maximum(points, lo), hi)  # lo + width can round above hi
        r = points.shape[0]
        flat = points.reshape(r * b * k, *in_shape)
        cc = c.unsqueeze(0).expand(r, *c.shape).reshape(r * b * k, *c.shape[2:])
        vals = dual_norm(gradients(graph, flat, cc), norm).reshape(r, b, k)
        v, idx = vals.max(0)
        better = v > best
        if better.any():
            pick = points.gather(0, idx.reshape(1, b, k, *([1] * nd)).expand(1, b, k, *in_shape))[0]
            sel = better.reshape(-1).nonzero().flatten()
            cand, clean = differentiable_points(
                graph,
                pick.reshape(b * k, *in_shape)[sel],
                lo.reshape(b * k, *in_shape)[sel],
                hi.reshape(b * k, *in_shape)[sel],
                kink_gen,
            )
            value = dual_norm(gradients(graph, cand, flat_c[sel]), norm)
            value = torch.where(clean, value, torch.full_like(value, -1.0))
            flat_best, flat_x = best.view(-1), best_x.view(b * k, *in_shape)
            take = value > flat_best[sel]
            flat_best[sel[take]] = value[take]
            flat_x[sel[take]] = cand[take]
        return vals

    width = hi - lo
    consider(((lo + hi) / 2).unsqueeze(0))
    pool: list[Tensor] = []
    samples = samples * cfg["samples"]
    if samples > 0:
        u = lo + rand((samples, b, k, *in_shape)) * width
        vals_u = consider(u)
        v = lo + (rand((samples, b, k, *in_shape)) > 0.5).to(x_lower.dtype) * width
        vals_v = consider(v)
        n_pool = min(cfg["pool"], 2 * samples)
        if n_pool > 0:  # the best sampled points also seed the region search
            top = torch.cat([vals_u, vals_v]).topk(n_pool, dim=0).indices
            pts = torch.cat([u, v])
            pool = list(pts.gather(0, top.reshape(*top.shape, *([1] * nd)).expand(n_pool, *pts.shape[1:])).unbind(0))
    starts = [best_x.clone()]
    restarts = max(round(restarts * cfg["restarts"]), 1) if restarts > 0 else 0
    steps = round(steps * cfg["steps"])
    if steps > 0 and restarts > 0:
        x = lo + rand((restarts, b, k, *in_shape)) * width
        x[0] = best_x
        scale = float(width.abs().reshape(b, k, -1).amax(-1).clamp(min=1e-12).mean())
        cc = c.unsqueeze(0).expand(restarts, *c.shape).reshape(restarts * b * k, *c.shape[2:])
        run_best = torch.full((restarts, b, k), -1.0, dtype=x.dtype, device=x.device)
        run_x = x.clone()
        for t in range(steps):
            if deadline is not None and time.perf_counter() > deadline:
                break
            frac = t / max(steps - 1, 1)
            beta = 2.0 / scale * 50.0**frac  # geometric: smooth (explores) -> sharp (follows the exact regions)
            with torch.enable_grad():
                xf = x.reshape(restarts * b * k, *in_shape).detach().requires_grad_(True)
                gnorm = dual_norm(gradients(graph, xf, cc, beta=beta, create_graph=True), norm)
                if not gnorm.requires_grad:  # an affine network: the gradient norm is constant
                    break
                (step,) = torch.autograd.grad(gnorm.sum(), xf)
            step = step.reshape(x.shape)
            size = 0.25 * width * (1 - t / steps)
            x = torch.minimum(torch.maximum(x.detach() + size * torch.sign(step), lo), hi)
            vals = consider(x)
            imp = vals > run_best
            run_best = torch.where(imp, vals, run_best)
            run_x = torch.where(imp.reshape(*imp.shape, *([1] * nd)), x, run_x)
        order = run_best.argsort(0, descending=True)
        run_x = run_x.gather(0, order.reshape(*order.shape, *([1] * nd)).expand_as(run_x))
        starts += list(run_x.unbind(0))[: cfg["starts"]]
    starts += pool
    if cfg["rounds"] > 0 and d <= MAX_SEARCH_DIM:
        _region_search(graph, starts, lo, hi, c, norm, cfg["rounds"], cfg["cands"], consider, deadline)
    return _reevaluate_wide(graph, best, best_x, c, norm), best_x


LOW_PRECISION_MARGIN = 1e-6  # relative, below float64 re-evaluation: covers float32 folding of the traced graph


def _reevaluate_wide(graph: Graph, best: Tensor, best_x: Tensor, c: Tensor, norm: str) -> Tensor:
    """The attained values, recomputed in float64 when the search ran in a lower precision.

    A float32 gradient of a network with large cancelling weights can exceed the exact gradient norm at the same
    point by orders of magnitude; float32 points and weights are exact in float64, where the products are exact
    and the sums lose ~1e-16 relative per term. The float64 value is lowered by a small relative margin for the
    float32 folding of the graph and the remaining rounding. Entries with no clean witness (``best < 0``), or whose
    witness sits on a kink in float64 (a float32 pre-activation near 0 can have the wrong sign), give 0.
    """
    if best.dtype == torch.float64:
        return best.clamp(min=0)
    b, k = best.shape
    wide = graph.to(torch.float64)
    x64 = best_x.reshape(b * k, *best_x.shape[2:]).double()
    c64 = c.reshape(b * k, *c.shape[2:]).double()
    value = dual_norm(gradients(wide, x64, c64), norm).reshape(b, k) * (1 - LOW_PRECISION_MARGIN)
    tied = kink_ties(wide, x64, torch.Generator(device="cpu").manual_seed(0)).reshape(b, k)
    value = torch.where((best >= 0) & ~tied, value, torch.zeros_like(value)).clamp(min=0)
    narrow = value.to(best.dtype)
    down = torch.nextafter(narrow, torch.full_like(narrow, -float("inf")))
    return torch.where(narrow.double() > value, down, narrow).clamp(min=0)  # rounded down, never up


def _region_search(graph, starts, lo, hi, c, norm, rounds, cands, consider, deadline=None) -> None:
    """Greedy local search over activation regions from ``starts`` (each ``(B, K, *in)``)."""
    b, k = c.shape[0], c.shape[1]
    in_shape = lo.shape[2:]
    d = lo[0, 0].numel()
    hidden = sum(nd.numel for nd in graph.nodes if kink_pieces(nd.op) is not None)
    p = max(1, min(len(starts), int(SEARCH_WORK // max(b * k * d * hidden * cands, 1))))  # bound the work per round
    starts = starts[:p]
    x = torch.stack(starts).reshape(p * b * k, -1)  # (N, d)
    lof = lo.unsqueeze(0).expand(p, *lo.shape).reshape(p * b * k, -1)
    hif = hi.unsqueeze(0).expand(p, *hi.shape).reshape(p * b * k, -1)
    cc = c.unsqueeze(0).expand(p, *c.shape).reshape(p * b * k, *c.shape[2:])
    consider(x.reshape(p, b, k, *in_shape))
    tabu = None
    for _ in range(rounds):
        if deadline is not None and time.perf_counter() > deadline:
            return
        try:
            moves = _flip_moves(graph, x, cc, norm, lof, hif, cands, tabu=tabu)
        except (RuntimeError, NotImplementedError):  # an op without forward-mode AD: keep what we have
            return
        if moves is None:
            return
        pts, valid, idx = moves  # (N, m, d), (N, m), (N, m)
        m = pts.shape[1]
        vals = consider(pts.transpose(0, 1).reshape(m * p, b, k, *in_shape)).reshape(m, p * b * k).transpose(0, 1)
        vals = torch.where(valid, vals, torch.full_like(vals, -math.inf))
        v, j = vals.max(1)  # move to the best neighbour even if it is worse (the best point is kept by consider)
        ar = torch.arange(x.shape[0], device=x.device)
        go = torch.isfinite(v)
        x = torch.where(go.unsqueeze(1), pts[ar, j], x)
        if tabu is None:
            tabu = torch.zeros(x.shape[0], hidden, dtype=torch.bool, device=x.device)
        flipped = idx[ar, j]
        tabu[ar[go], flipped[go]] = True  # never flip the same neuron back (no cycling)
