"""The local-bound pipeline on a traced graph: forward bounds -> Jacobian graph -> its bounds -> norm node.

:func:`propagate` bounds the forward pre-activations (IBP + CROWN, optional alpha-CROWN), builds the combined
forward + Jacobian graph for the output directions and bounds it with the same engine; :func:`norm_upper` turns
the bounds of the input-gradient node into an upper bound of its dual norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lipbound.engine.crown import backsubstitute
from lipbound.engine.forward import bound_nodes, optimized_backsubstitute
from lipbound.engine.jacobian import GatedProduct, build_jacobian_graph
from lipbound.engine.rounding import ACC, gamma, round_up
from lipbound.graph.ir import Graph


def norm_upper(back: Graph, g_x, bounds, box, norm: str, method: str, optimize: bool, steps: int) -> Tensor:
    """Upper bound of ``||g_x||_q`` (q dual of ``norm``) for every row of the (B*K) batch.

    Interval form: ``sum_j max(|l_j|, |u_j|)`` (q = 1), ``sqrt(sum_j max(l_j^2, u_j^2))`` (q = 2),
    ``max_j max(|l_j|, |u_j|)`` (q = inf). With ``method="crown"`` the norm node is also relaxed linearly and
    back-substituted: ``|g| <= chord on [l, u]`` (q = 1) or ``g^2 <= (l + u) g - l u`` (q = 2); the smaller
    of the two (both sound) is returned.
    """
    l, u = bounds[id(g_x)]
    flat_l, flat_u = l.reshape(l.shape[0], -1), u.reshape(u.shape[0], -1)
    mag = torch.maximum(flat_l.abs(), flat_u.abs())
    if norm == "1":
        return mag.amax(1)
    d, dtype = mag.shape[1], mag.dtype
    # sums of d non-negative terms in float64: relative error gamma_{d+4}; squares and sqrt: a few roundings
    grow = 1 + gamma(d + 8, ACC)
    m64 = mag.to(ACC)
    interval_value = m64.sum(1) * grow if norm == "inf" else ((m64 * m64).sum(1) * grow).sqrt() * grow
    if method == "interval":
        return round_up(interval_value, dtype)
    if norm == "inf":
        cross = (l < 0) & (u > 0)
        width = torch.where(cross, u - l, torch.ones_like(l))
        slope = torch.where(cross, (u + l) / width, torch.where(l >= 0, torch.ones_like(l), -torch.ones_like(l)))
        icpt = torch.where(cross, -2 * u * l / width, torch.zeros_like(l))
    else:
        slope, icpt = l + u, -l * u
    lam = slope.unsqueeze(1)
    if optimize:
        gates = {id(n) for n in back.nodes if isinstance(n.op, GatedProduct)}
        _, up = optimized_backsubstitute(back, g_x, lam, bounds, box, steps=steps, only=gates)
    else:
        _, up = backsubstitute(back, g_x, lam, bounds, box)
    flat_icpt = icpt.reshape(icpt.shape[0], -1).to(ACC)
    # rounding of the relaxation lines (slope, intercept) in dtype and of the float64 sums, relative to magnitudes
    scale = (slope.abs().reshape(slope.shape[0], -1).to(ACC) * m64 + flat_icpt.abs()).sum(1)
    value = up[:, 0].to(ACC) + flat_icpt.sum(1) + (gamma(8, dtype) + gamma(d + 8, ACC)) * scale
    if norm == "2":
        value = value.clamp(min=0).sqrt() * (1 + gamma(2, ACC))
    return round_up(torch.minimum(value, interval_value), dtype)


@dataclass
class Propagation:
    forward: dict  # forward pre-activation bounds, batch B
    graph: Graph  # combined forward + backward graph, batch B*K
    g_x: Any  # its output node: the input gradient
    backward: dict  # bounds of the combined graph's relaxed inputs and of g_x, batch B*K
    box: tuple[Tensor, Tensor]  # the input box repeated K times


def propagate(
    graph: Graph,
    xl: Tensor,
    xu: Tensor,
    c: Tensor,
    method: str,
    optimize: bool,
    steps: int,
    phases: dict[int, Tensor] | None = None,
    linear: dict | None = None,
    max_memory: int | None = None,
    progress=None,
    stats: dict | None = None,
    within: dict | None = None,
) -> Propagation:
    """Forward bounds, then the Jacobian graph for the directions ``c`` (B, K, *out) and its bounds.

    ``phases`` restricts the box to Branch-and-Bound domains (see :func:`lipbound.engine.forward.apply_phases`).
    ``max_memory`` (bytes), ``progress(stage, done, total)`` (stage ``"forward"`` or ``"jacobian"``, counting
    bounded nodes) and ``stats`` are passed to :func:`lipbound.engine.forward.bound_nodes`.
    ``within``: forward bounds already known to hold on the domains (a Branch-and-Bound parent's), intersected
    with the computed ones (see :func:`lipbound.engine.forward.bound_nodes`).
    """

    def report(stage: str):
        return None if progress is None else (lambda done, total: progress(stage, done, total))

    mem = dict(max_memory=max_memory, stats=stats)
    fwd = bound_nodes(
        graph, xl, xu, "crown", optimize=optimize, steps=steps, phases=phases, linear=linear,
        progress=report("forward"), within=within, **mem,
    )  # fmt: skip
    b, k = c.shape[0], c.shape[1]
    box = (xl.repeat_interleave(k, 0), xu.repeat_interleave(k, 0))
    known = {key: (l.repeat_interleave(k, 0), u.repeat_interleave(k, 0)) for key, (l, u) in fwd.items()}
    back, g_x = build_jacobian_graph(graph, c.reshape(b * k, *c.shape[2:]), relaxation=method, coupled=optimize)
    bb = bound_nodes(
        back, *box, "crown", extra=[g_x], known=known, optimize=optimize, steps=steps, progress=report("jacobian"),
        **mem,
    )  # fmt: skip
    return Propagation(fwd, back, g_x, bb, box)
