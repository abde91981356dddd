"""Exact local Lipschitz constants of small ReLU networks by mixed-integer linear programming (HiGHS).

For ``f`` a chain of affine maps (Linear, Conv, Flatten, folded BatchNorm: anything lipbound traces to a
``LinearOp``) and ReLUs, ``z_i = W_i h_{i-1} + b_i``, ``h_i = relu(z_i)``, ``f = W_L h_{L-1} + b_L``, the gradient
of ``c^T f`` is ``y = W_1^T S_1 W_2^T ... S_{L-1} W_L^T c`` with the gate ``S_i = diag(s_i)``. The MILP maximises
``||y||_q`` (``q`` dual of the input norm: ``inf`` -> ``q = 1``, ``1`` -> ``q = inf``) over ``x`` in the box:

* forward, per unstable neuron (CROWN pre-activation bounds ``l < 0 < u`` from
  :func:`lipbound.engine.forward.forward_bounds`, never intervals): binary ``s``, ``h >= z``, ``h >= 0``,
  ``h <= z - l (1 - s)``, ``h <= u s``; stable neurons (``l >= 0`` or ``u <= 0``) get no binary;
* backward, ``v = s g`` with ``g = W_{i+1}^T v_{i+1}`` in bounds ``[L, U]`` (CROWN bounds of the Jacobian graph
  intersected with interval ones):
  ``v <= g - L (1 - s)``, ``v >= g - U (1 - s)``, ``L s <= v <= U s``;
* ``q = 1``: ``t_j <= y_j + 2M_j (1 - b_j)``, ``t_j <= -y_j + 2M_j b_j``, objective ``sum t_j``;
  ``q = inf``: one-hot choice of a coordinate and sign, ``t <= +-y_j + M (1 - e_{j,+-})``.

Kinks: at ``z = 0`` the MILP allows either gate, so it computes ``sup`` over the box of the norm of Clarke
generalised gradients (the gradient is multilinear in gates in ``[0, 1]`` and the norm convex, so the sup is at
gates in ``{0, 1}``), which equals the sup of gradient norms at differentiable points and is the Lipschitz
constant of ``c^T f`` on the box (in general position; degenerate ties such as duplicated neurons can only make
the value larger, never smaller). The l2 gradient norm is not MILP-representable exactly and is refused.

Certification: ``upper`` = solver dual bound + (MIP gap tolerance + feasibility tolerance) x (sum of the big-M
magnitudes of the objective), rounded up. ``lower`` is attained: the autograd gradient norm (float64) at a
kink-free point of the box. The preferred point lies deep inside the incumbent's own activation region (one LP
maximising the distance to the nearest kink hyperplane with the incumbent's gates fixed,
:func:`region_interior_point`), where the gradient is the incumbent's, so ``lower`` equals the MILP objective
whenever that region has interior in the box; otherwise the incumbent is moved off kinks
(:func:`lipbound.lower.differentiable_points`), and if no kink-free point is found ``lower`` is 0.
``rows[k]["lower_from"]`` says which (``"region_interior"``, ``"nudged"``, ``"incumbent"`` or ``None``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.engine.forward import outward
from lipbound.engine.jacobian import GatedProduct
from lipbound.engine.pipeline import norm_upper, propagate
from lipbound.errors import InvalidInputError, SolverError, UnsupportedOperatorError
from lipbound.graph.ir import Graph
from lipbound.highs import new_highs
from lipbound.ops.base import ConstOp, InputOp, LinearOp, kink_pieces
from lipbound.problem import make_problem, parse_norm

SUPPORTED_NORMS = ("inf", "1")
#: fraction of ``time_limit`` not given to the MILP solver (lower-bound work after an early stop)
RESERVE = 0.15


@dataclass
class ExactResult:
    """Result of :func:`exact_lipschitz` for one input box; per-row arrays have length K (output directions)."""

    value: float | None  # the exact constant (max over rows) when status == "optimal", else None
    upper: float  # certified upper bound (dual bound + tolerance margin), max over rows
    lower: float  # attained: autograd gradient norm at lower_point, max over rows
    lower_point: Tensor | None
    status: str  # "optimal" | "time_limit" | other solver status
    seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "upper": self.upper,
            "lower": self.lower,
            "status": self.status,
            "seconds": self.seconds,
            "rows": [{k: v for k, v in r.items() if k != "point"} for r in self.rows],
            "details": self.details,
        }


def dense_layers(graph: Graph) -> list[tuple[np.ndarray, np.ndarray]]:
    """The chain ``(W_i, b_i)`` (float64, flattened) of a ReLU network; raises for any other op."""
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    n_in = graph.input.numel
    w = np.eye(n_in)
    b = np.zeros(n_in)
    for n in graph.nodes:
        if isinstance(n.op, InputOp):
            continue
        if isinstance(n.op, ConstOp):
            raise UnsupportedOperatorError("constant", n.name, hint="exact_lipschitz needs a plain chain")
        if len(n.inputs) != 1:
            raise UnsupportedOperatorError(
                type(n.op).__name__, n.name, hint="exact_lipschitz supports chains of Linear/Conv/ReLU only"
            )
        if isinstance(n.op, LinearOp):
            op = n.op.to(torch.float64)
            shape = n.inputs[0].shape
            k = int(np.prod(shape))
            with torch.no_grad():
                zero = op.forward(torch.zeros(1, *shape, dtype=torch.float64)).reshape(-1)
                cols = op.forward(torch.eye(k, dtype=torch.float64).reshape(k, *shape)).reshape(k, -1) - zero
            m = cols.T.numpy()
            w, b = m @ w, m @ b + zero.numpy()
        elif kink_pieces(n.op) == (0.0, 1.0):  # a ReLU (the MILP encodes slopes 0 and 1)
            layers.append((w, b))
            w, b = np.eye(n.numel), np.zeros(n.numel)
        else:
            raise UnsupportedOperatorError(
                type(n.op).__name__,
                n.name,
                ["Linear", "Conv", "Flatten/Reshape", "BatchNorm (folded)", "ReLU"],
                hint="exact_lipschitz encodes ReLU networks only",
            )
    layers.append((w, b))
    return layers


class _Model:
    """Sparse MILP in row form ``lo <= A x <= hi``."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[bool] = []
        self.entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rlo: list[np.ndarray] = []
        self.rhi: list[np.ndarray] = []
        self.rows = 0

    def var(self, lb, ub, integer: bool = False) -> np.ndarray:
        lb, ub = np.atleast_1d(np.asarray(lb, float)), np.atleast_1d(np.asarray(ub, float))
        start = len(self.lb)
        self.lb += lb.tolist()
        self.ub += ub.tolist()
        self.integer += [integer] * len(lb)
        return np.arange(start, len(self.lb))

    def add(self, terms: list[tuple[np.ndarray, np.ndarray]], lo, hi) -> None:
        r = np.asarray(terms[0][1]).shape[0]
        for cols, mat in terms:
            mat = np.asarray(mat, float).reshape(r, len(cols))
            rr, cc = np.nonzero(mat)
            self.entries.append((rr + self.rows, cols[cc], mat[rr, cc]))
        self.rlo.append(np.broadcast_to(np.asarray(lo, float), (r,)).copy())
        self.rhi.append(np.broadcast_to(np.asarray(hi, float), (r,)).copy())
        self.rows += r


def _solve(model: _Model, obj: np.ndarray, time_limit: float, presolve: bool, tol: float):
    """Maximise ``obj @ x`` with HiGHS; returns (status, x or None, dual bound, objective)."""
    import highspy
    from scipy.sparse import coo_matrix

    h = new_highs(
        time_limit=float(max(time_limit, 0.01)),
        mip_rel_gap=tol,
        mip_abs_gap=tol,
        presolve="on" if presolve else "off",
    )
    n = len(model.lb)
    rr = np.concatenate([e[0] for e in model.entries]) if model.entries else np.zeros(0, int)
    cc = np.concatenate([e[1] for e in model.entries]) if model.entries else np.zeros(0, int)
    vv = np.concatenate([e[2] for e in model.entries]) if model.entries else np.zeros(0)
    a = coo_matrix((vv, (rr, cc)), shape=(model.rows, n)).tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, model.rows
    lp.col_cost_ = -np.asarray(obj, float)
    lp.col_lower_, lp.col_upper_ = np.asarray(model.lb), np.asarray(model.ub)
    inf = highspy.kHighsInf
    lp.row_lower_ = np.where(np.isfinite(np.concatenate(model.rlo)), np.concatenate(model.rlo), -inf)
    lp.row_upper_ = np.where(np.isfinite(np.concatenate(model.rhi)), np.concatenate(model.rhi), inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr.astype(np.int32)
    lp.a_matrix_.index_ = a.indices.astype(np.int32)
    lp.a_matrix_.value_ = a.data
    lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in model.integer]
    h.passModel(lp)
    h.run()
    st = h.getModelStatus()
    name = {
        highspy.HighsModelStatus.kOptimal: "optimal",
        highspy.HighsModelStatus.kTimeLimit: "time_limit",
        highspy.HighsModelStatus.kInfeasible: "infeasible",
    }.get(st, h.modelStatusToString(st).lower().replace(" ", "_"))
    info = h.getInfo()
    x = np.asarray(h.getSolution().col_value) if info.primal_solution_status >= 1 else None
    dual = -float(info.mip_dual_bound)
    return name, x, dual, -float(info.objective_function_value) if x is not None else -math.inf


def _interval_backward(layers, pre, c):
    """Interval bounds of every ``g_i = W_{i+1}^T v_{i+1}`` and of the input gradient ``y``."""
    vl = vu = c
    gb = [None] * (len(layers) - 1)
    for i in range(len(layers) - 2, -1, -1):
        w = layers[i + 1][0]
        mid, rad = w.T @ ((vl + vu) / 2), np.abs(w).T @ ((vu - vl) / 2)
        pad = 1e-9 * (np.abs(mid) + rad) + 1e-12
        gl, gu = mid - rad - pad, mid + rad + pad
        gb[i] = (gl, gu)
        l, u = pre[i]
        slo, shi = (l >= 0).astype(float), (u > 0).astype(float)
        cand = np.stack([slo * gl, slo * gu, shi * gl, shi * gu])
        vl, vu = cand.min(0), cand.max(0)
    w = layers[0][0]
    mid, rad = w.T @ ((vl + vu) / 2), np.abs(w).T @ ((vu - vl) / 2)
    pad = 1e-9 * (np.abs(mid) + rad) + 1e-12
    return gb, (mid - rad - pad, mid + rad + pad)


def _intersect(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray] | None):
    """The intersection of two valid boxes (``b`` may be missing)."""
    return a if b is None else (np.maximum(a[0], b[0]), np.minimum(a[1], b[1]))


def _build(layers, pre, xl, xu, c, norm, tight=None):
    """The MILP of one row. ``tight``: optional CROWN bounds ``(per-layer g bounds, y bounds)`` of the backward
    quantities, intersected with the interval ones (both valid; tighter big-M, tighter LP relaxation)."""
    m = _Model()
    xs = m.var(xl, xu)
    prev, gates = xs, []
    for (w, b), (l, u) in zip(layers[:-1], pre, strict=True):
        n = w.shape[0]
        eye = np.eye(n)
        h = m.var(np.maximum(l, 0), np.maximum(u, 0))
        s = m.var((l >= 0).astype(float), (u > 0).astype(float), integer=True)  # stable: fixed, presolved away
        lc, uc = np.minimum(l, 0), np.maximum(u, 0)
        m.add([(h, eye), (prev, -w)], b, np.inf)
        m.add([(h, eye), (prev, -w), (s, -np.diag(lc))], -np.inf, b - lc)
        m.add([(h, eye), (s, -np.diag(uc))], -np.inf, 0.0)
        prev = h
        gates.append(s)
    gb, yb = _interval_backward(layers, pre, c)
    if tight is not None:
        gb = [_intersect(a, t) for a, t in zip(gb, tight[0], strict=True)]
        yb = _intersect(yb, tight[1])
    yl, yu = yb
    v_next = None
    for i in range(len(layers) - 2, -1, -1):
        w = layers[i + 1][0]
        n = w.shape[1]
        eye = np.eye(n)
        lg, ug = gb[i]
        terms, k = ([], w.T @ c) if v_next is None else ([(v_next, -w.T)], np.zeros(n))
        s = gates[i]
        v = m.var(np.minimum(lg, 0), np.maximum(ug, 0))
        m.add([(v, eye), *terms, (s, -np.diag(lg))], -np.inf, k - lg)
        m.add([(v, eye), *terms, (s, -np.diag(ug))], k - ug, np.inf)
        m.add([(v, eye), (s, -np.diag(ug))], -np.inf, 0.0)
        m.add([(v, eye), (s, -np.diag(lg))], 0.0, np.inf)
        v_next = v
    w1 = layers[0][0].T
    n0 = w1.shape[0]
    big = np.maximum(np.abs(yl), np.abs(yu)) + 1.0
    if norm == "inf":
        t = m.var(np.zeros(n0), big)
        sg = m.var((yl >= 0).astype(float), (yu > 0).astype(float), integer=True)
        eye = np.eye(n0)
        m.add([(t, eye), (v_next, -w1), (sg, np.diag(2 * big))], -np.inf, 2 * big)
        m.add([(t, eye), (v_next, w1), (sg, -np.diag(2 * big))], -np.inf, 0.0)
        scale = float(big.sum())
    else:
        bm = 2 * float(big.max())
        t = m.var([0.0], [bm])
        pp = m.var(np.zeros(n0), (yu > 0).astype(float), integer=True)
        pn = m.var(np.zeros(n0), (yl < 0).astype(float), integer=True)
        ones = np.ones((n0, 1))
        m.add([(t, ones), (v_next, -w1), (pp, bm * np.eye(n0))], -np.inf, bm)
        m.add([(t, ones), (v_next, w1), (pn, bm * np.eye(n0))], -np.inf, bm)
        if (yu > 0).any() or (yl < 0).any():  # exactly one (coordinate, sign) is chosen
            m.add([(pp, np.ones((1, n0))), (pn, np.ones((1, n0)))], 1.0, 1.0)
        else:  # y == 0 on the whole box
            m.ub[int(t[0])] = 0.0
        scale = bm
    obj = np.zeros(len(m.lb))
    obj[t] = 1.0
    return m, obj, xs, scale, gates


def region_pattern(sol: np.ndarray, gates: list[np.ndarray]) -> list[np.ndarray]:
    """The gate pattern (0/1 per hidden neuron and layer) of a MILP solution."""
    return [(sol[g] > 0.5).astype(float) for g in gates]


def region_interior_point(
    layers: list[tuple[np.ndarray, np.ndarray]], pattern: list[np.ndarray], xl: np.ndarray, xu: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """A point of the box deep inside the activation region of ``pattern``, by one LP.

    With the gates fixed, every hidden pre-activation is affine in ``x``: ``z_i = A_i x + a_i`` with
    ``A_1 = W_1``, ``a_1 = b_1`` and ``A_{i+1} = W_{i+1} S_i A_i``, ``a_{i+1} = W_{i+1} S_i a_i + b_{i+1}``
    (``S_i = diag(pattern_i)``). The region is ``{x in box : sigma_j z_j(x) >= 0}`` with ``sigma_j = +1`` for an
    active gate and ``-1`` for an inactive one. The LP maximises the smallest normalised margin ``t``::

        max t   s.t.   sigma_j (A_j x + a_j) >= t ||A_j||_2   (every neuron with A_j != 0),   xl <= x <= xu,

    (``t`` is the distance of ``x`` to the nearest kink hyperplane, capped at the box width). Neurons with
    ``A_j = 0`` are constant on the region and never change gate. Returns ``(x, t)``, or ``None`` when the
    region has no interior point in the box (``t <= 0``) or the LP fails.
    """
    from scipy.optimize import linprog

    d = xl.shape[0]
    a_mat, a_vec = np.eye(d), np.zeros(d)
    rows, rhs = [], []
    for (w, b), s in zip(layers[:-1], pattern, strict=True):
        a_mat, a_vec = w @ a_mat, w @ a_vec + b
        sigma = 2 * s - 1
        norms = np.linalg.norm(a_mat, axis=1)
        keep = norms > 1e-12 * max(1.0, float(norms.max(initial=0.0)))
        # -sigma (A x + a) + t ||A|| <= 0
        rows.append(np.hstack([-sigma[keep, None] * a_mat[keep], norms[keep, None]]))
        rhs.append(sigma[keep] * a_vec[keep])
        a_mat, a_vec = s[:, None] * a_mat, s * a_vec
    cap = float((xu - xl).max(initial=0.0)) or 1.0
    obj = np.zeros(d + 1)
    obj[-1] = -1.0
    res = linprog(
        obj,
        A_ub=np.vstack(rows),
        b_ub=np.concatenate(rhs),
        bounds=[*zip(xl.tolist(), xu.tolist(), strict=True), (None, cap)],
        method="highs",
    )
    if res.status != 0 or res.x is None or not res.x[-1] > 0:
        return None
    return np.clip(res.x[:d], xl, xu), float(res.x[-1])


def _attained(pr, layers, pattern, x, xl, xu, k: int, nrm: str) -> tuple[float, Tensor | None, str | None]:
    """The lower bound of row ``k`` from the incumbent ``x`` and its gate ``pattern``: the autograd gradient norm
    at a kink-free point, preferring the interior of the incumbent's own region (:func:`region_interior_point`;
    its gradient is the incumbent's), else the incumbent moved off kinks
    (:func:`lipbound.lower.differentiable_points`); the larger clean value wins. Returns ``(lower, point, how)``
    with ``how`` in ``"region_interior"``, ``"nudged"``, ``"incumbent"`` (already kink-free) or ``None``."""
    from lipbound.lower import differentiable_points, kink_ties

    shape = pr.xl.shape[1:]
    ck = pr.c[0, k]
    best: tuple[float, Tensor | None, str | None] = (0.0, None, None)
    found = region_interior_point(layers, pattern, xl, xu) if pattern else None
    if found is not None:
        xr = torch.as_tensor(found[0], dtype=torch.float64).reshape(1, *shape)
        if not bool(kink_ties(pr.graph, xr, torch.Generator().manual_seed(k)).any()):
            best = (float(_autograd_norm(pr.graph, xr, ck, nrm)[0]), xr[0], "region_interior")
    xt = torch.as_tensor(x, dtype=torch.float64).reshape(1, *shape)
    xd, clean = differentiable_points(pr.graph, xt, pr.xl, pr.xu, torch.Generator().manual_seed(k))
    if bool(clean.all()):
        val = float(_autograd_norm(pr.graph, xd, ck, nrm)[0])
        if val > best[0] or best[1] is None:
            best = (val, xd[0], "incumbent" if torch.equal(xd, xt) else "nudged")
    if best[1] is None:  # no kink-free candidate: nothing but the trivial 0 is claimed
        return 0.0, xt[0], None
    return best


def _crown_backward(pb, pre_nodes, gate_in, k: int):
    """Row ``k``'s CROWN bounds of every upstream gradient ``g_i`` (the ``g`` input of layer ``i``'s Jacobian
    gate) and of the input gradient, flattened to numpy; ``None`` for a layer whose gate is not in the graph."""

    def flat(key):
        if key not in pb.backward:
            return None
        lo, hi = pb.backward[key]
        return lo[k].reshape(-1).double().numpy(), hi[k].reshape(-1).double().numpy()

    gs = [flat(id(gate_in[id(z)])) if id(z) in gate_in else None for z in pre_nodes]
    return gs, flat(id(pb.g_x))


def _autograd_norm(graph: Graph, x: Tensor, c: Tensor, norm: str) -> Tensor:
    from lipbound.lower import dual_norm, gradients

    return dual_norm(gradients(graph, x, c.expand(x.shape[0], *c.shape)), norm)


def exact_lipschitz(
    model: nn.Module | Graph,
    x0: Tensor | None = None,
    eps: float | None = None,
    norm: str | int = "inf",
    c: Tensor | None = None,
    time_limit: float = 60.0,
    *,
    x_lower: Tensor | None = None,
    x_upper: Tensor | None = None,
    mip_gap: float = 1e-7,
) -> ExactResult:
    """Exact local Lipschitz constant ``max_{x in box} ||grad c^T f(x)||_q`` of a ReLU network, by MILP.

    One input box (``x0`` of shape ``(1, *in)`` or ``(*in)`` with ``eps``, or ``x_lower``/``x_upper``). ``norm``:
    ``"inf"`` (gradient in l1) or ``1`` (gradient in l_inf); l2 is refused. ``c``: ``None`` = every output row
    (per-row results in ``rows``, the maximum in ``value``/``upper``/``lower``), a vector, or rows ``(K, m)``.
    ``time_limit``: total seconds for all rows (85% go to the solver, the rest to the lower-bound work); on
    expiry ``status == "time_limit"``, ``upper`` stays certified and ``lower`` attained (the incumbent's, or a
    quick sampled gradient norm when that is larger: ``rows[k]["lower_from"] == "sampled"``). Per row ``upper`` is
    the smaller of the MILP dual bound (+ margin) and the plain CROWN local bound (both certified;
    ``rows[k]["upper_from"]`` says which, ``milp_upper`` / ``crown_upper`` give both). The MILP's big-M constants
    are the CROWN bounds of the forward pre-activations and of the Jacobian-graph intermediates (intersected
    with interval bounds), never intervals alone.
    If HiGHS presolve reports a (feasible by construction) model infeasible, it is re-solved with presolve off and
    ``details["fallbacks"]`` says so. See the module docstring for the formulation, kinks and the safety margin.
    """
    t0 = time.perf_counter()
    nrm = parse_norm(norm)
    if nrm not in SUPPORTED_NORMS:
        raise InvalidInputError(
            "exact_lipschitz supports norm='inf' and norm=1 (the l2 gradient norm is not exactly "
            "MILP-representable); use local_lipschitz for certified l2 bounds"
        )
    if not time_limit > 0:
        raise InvalidInputError(f"time_limit must be > 0 seconds, got {time_limit}")
    if x0 is not None:
        x0 = torch.as_tensor(x0)
        probe = model.input_shape if isinstance(model, Graph) else None
        if probe is not None and tuple(x0.shape) == tuple(probe):
            x0 = x0.unsqueeze(0)
    pr = make_problem(model, x0, eps, x_lower, x_upper, c, torch.float64)
    if pr.xl.shape[0] != 1:
        raise InvalidInputError(f"exact_lipschitz takes one input box, got a batch of {pr.xl.shape[0]}")
    layers = dense_layers(pr.graph)
    with torch.no_grad():  # CROWN forward + Jacobian bounds: big-M constants and a certified fallback upper
        pb = propagate(pr.graph, pr.xl, pr.xu, pr.c, "crown", False, 0)
        crown_up = norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, nrm, "crown", False, 0).reshape(-1)
        crown_up = outward(crown_up, crown_up)[1]  # the same outward margin as local_lipschitz
    pre_nodes = [n.inputs[0] for n in pr.graph.nodes if kink_pieces(n.op) == (0.0, 1.0)]
    pre = [tuple(t.reshape(-1).double().numpy() for t in pb.forward[id(z)]) for z in pre_nodes]
    gate_in = {id(n.inputs[0]): n.inputs[1] for n in pb.graph.nodes if isinstance(n.op, GatedProduct)}
    xl, xu = pr.xl.reshape(-1).numpy(), pr.xu.reshape(-1).numpy()
    rows, fallbacks = [], []
    tol = 1e-6
    for k in range(pr.c.shape[1]):
        ck = pr.c[0, k].reshape(-1).numpy()
        # RESERVE of the budget is kept for the lower-bound work after an early stop
        left = time_limit * (1 - RESERVE) - (time.perf_counter() - t0)
        tk = time.perf_counter()
        if len(layers) == 1:
            y = layers[0][0].T @ ck
            val = float(np.abs(y).sum() if nrm == "inf" else np.abs(y).max())
            status, x, dual, obj, scale = "optimal", (xl + xu) / 2, val, val, val
        else:
            tight = _crown_backward(pb, pre_nodes, gate_in, k)
            mdl, objv, xs, scale, gate_vars = _build(layers, pre, xl, xu, ck, nrm, tight)
            status, sol, dual, obj = _solve(mdl, objv, left, True, mip_gap)
            if status == "infeasible":
                fallbacks.append(f"row {k}: presolve reported infeasible; re-solved with presolve off")
                left = time_limit * (1 - RESERVE) - (time.perf_counter() - t0)
                status, sol, dual, obj = _solve(mdl, objv, left, False, mip_gap)
            if status == "infeasible":
                raise SolverError(f"the MILP of row {k} is reported infeasible with and without presolve")
            x = None if sol is None else np.clip(sol[xs], xl, xu)
        margin = (mip_gap + tol) * (abs(dual) + scale) + 1e-9
        up = math.nextafter(dual + margin, math.inf) if math.isfinite(dual) else math.inf
        milp_up, up = up, min(up, float(crown_up[k]))  # both certified; the CROWN bound wins on early stops
        low, point, where = 0.0, None, None
        if x is not None:
            pattern = region_pattern(sol, gate_vars) if len(layers) > 1 else []
            low, point, where = _attained(pr, layers, pattern, x, xl, xu, k, nrm)
        rows.append(
            {
                "row": k,
                "status": status,
                "value": dual if status == "optimal" else None,
                "upper": up,
                "upper_from": "milp" if up == milp_up else "crown",
                "milp_upper": milp_up,
                "crown_upper": float(crown_up[k]),
                "lower": low,
                "incumbent": obj,
                "point": point,
                "lower_from": where,
                "seconds": time.perf_counter() - tk,
            }
        )
    open_rows = [r["row"] for r in rows if r["status"] != "optimal"]
    if open_rows:  # stopped early: the incumbent may be missing or weak; add a quick sampled lower bound
        from lipbound.lower import lower_bound

        cs = pr.c[:, open_rows]
        vals, pts = lower_bound(pr.graph, pr.xl, pr.xu, cs, nrm, samples=8, restarts=2, steps=3, effort="fast")
        for j, k in enumerate(open_rows):
            if float(vals[0, j]) > rows[k]["lower"]:
                rows[k].update(lower=float(vals[0, j]), point=pts[0, j], lower_from="sampled")
    best = max(range(len(rows)), key=lambda i: rows[i]["lower"])
    statuses = {r["status"] for r in rows}
    status = "optimal" if statuses == {"optimal"} else next(s for s in statuses if s != "optimal")
    unstable = int(sum(((l < 0) & (u > 0)).sum() for l, u in pre))
    return ExactResult(
        value=max(r["value"] for r in rows) if status == "optimal" else None,
        upper=max(r["upper"] for r in rows),
        lower=rows[best]["lower"],
        lower_point=rows[best]["point"],
        status=status,
        seconds=time.perf_counter() - t0,
        rows=rows,
        details={"fallbacks": fallbacks, "unstable_neurons": unstable, "norm": nrm, "mip_gap": mip_gap},
    )
