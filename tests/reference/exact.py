"""Independent reference values for local Lipschitz constants (torch, numpy and scipy/HiGHS only).

Notation (f a ReLU MLP with ``L`` affine layers, ``h_0 = x``):
``z_i = W_i h_{i-1} + b_i``, ``h_i = relu(z_i)`` for the hidden layers ``i = 1..L-1`` and ``f(x) = W_L h_{L-1} + b_L``.
For an output direction ``c`` the gradient is computed backwards: ``v_L = c``, ``u_i = W_{i+1}^T v_{i+1}``,
``v_i = s_i * u_i`` with the ReLU gate ``s_i`` (1 if ``z_i > 0``, 0 if ``z_i < 0``), and ``grad c^T f = W_1^T v_1``.

The quantity is ``L = max_{x in box} ||grad c^T f(x)||_q`` where ``q`` is the dual of the input norm:
``norm="inf"`` -> ``q = 1``, ``norm=2`` -> ``q = 2``, ``norm=1`` -> ``q = inf``.

Clarke note. At ``z = 0`` the Clarke gate of a ReLU is any value in ``[0, 1]``. Because the gradient is multilinear
in the gates and a norm is convex, the maximum over gates in ``[0, 1]`` is attained at gates in ``{0, 1}``. The MILP
below allows, at every ``x`` of the box, any gate pattern consistent with the signs ``s = 1 => z >= 0`` and
``s = 0 => z <= 0``: this is at least the Clarke value (it may exceed it in degenerate configurations, e.g. two
neurons with identical pre-activations, where the pattern (1, 0) lives only on a hyperplane). The enumeration keeps
only patterns whose region has a nonempty interior inside the box; for a piecewise-linear f the Clarke Jacobian at
``x`` is the convex hull of the gradients of the full-dimensional regions whose closure contains ``x`` (f is
differentiable almost everywhere and the region boundaries have measure zero), so the enumeration value is the
Clarke value (up to regions touching the box only on its boundary). In general position (random weights) both
coincide, and both are upper bounds on every autograd gradient norm found at points of the box.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix
from torch import Tensor, nn

Array = np.ndarray

NORMS = ("inf", "2", "1")


def norm_key(norm: str | float | int) -> str:
    """Normalise an input-norm spelling (``"inf"``, ``float("inf")``, ``2``, ``"2"``, ``1``) to ``"inf"|"2"|"1"``."""
    key = str(norm).lower()
    key = {"infinity": "inf", "2.0": "2", "1.0": "1"}.get(key, key)
    if key not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return key


def dual_norm(g: Array | Tensor, norm: str | float | int, axis: int = -1):
    """``||g||_q`` along ``axis`` with ``q`` the dual of the input norm (numpy or torch)."""
    key = norm_key(norm)
    if isinstance(g, Tensor):
        if key == "inf":
            return g.abs().sum(dim=axis)
        if key == "2":
            return g.pow(2).sum(dim=axis).sqrt()
        return g.abs().amax(dim=axis)
    if key == "inf":
        return np.abs(g).sum(axis=axis)
    if key == "2":
        return np.sqrt((g**2).sum(axis=axis))
    return np.abs(g).max(axis=axis)


def _as_c(weights: Sequence[Array], c: Array | None) -> Array:
    m = weights[-1].shape[0]
    if c is None:
        if m != 1:
            raise ValueError(f"c is required for a vector output of size {m}")
        return np.ones(1)
    c = np.asarray(c, dtype=float).reshape(-1)
    if c.shape[0] != m:
        raise ValueError(f"c has {c.shape[0]} entries, the output has {m}")
    return c


def _widen(l: Array, u: Array) -> tuple[Array, Array]:
    pad = 1e-9 * (np.abs(l) + np.abs(u)) + 1e-12
    return l - pad, u + pad


# ----------------------------------------------------------------------------------------------------------------
# interval bounds (big-M constants)
# ----------------------------------------------------------------------------------------------------------------


def pre_activation_bounds(
    weights: Sequence[Array], biases: Sequence[Array], x_lo: Array, x_hi: Array
) -> list[tuple[Array, Array]]:
    """Interval bounds ``[l_i, u_i]`` of every hidden pre-activation ``z_i`` over the box (centre/radius form)."""
    lo, hi = np.asarray(x_lo, float), np.asarray(x_hi, float)
    out = []
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        zc, zr = w @ ((lo + hi) / 2) + b, np.abs(w) @ ((hi - lo) / 2)
        l, u = _widen(zc - zr, zc + zr)
        out.append((l, u))
        lo, hi = np.maximum(l, 0), np.maximum(u, 0)
    return out


def gate_ranges(pre: Sequence[tuple[Array, Array]]) -> list[tuple[Array, Array]]:
    """Gate range ``[s_lo, s_hi]`` per neuron: ``{1}`` if ``l > 0``, ``{0}`` if ``u < 0``, else ``[0, 1]``."""
    return [((l > 0).astype(float), (u >= 0).astype(float)) for l, u in pre]


def backward_bounds(
    weights: Sequence[Array], pre: Sequence[tuple[Array, Array]], c: Array
) -> tuple[list[tuple[Array, Array]], tuple[Array, Array]]:
    """Interval bounds of the upstream gradients ``u_i`` (per hidden layer) and of the input gradient ``y``.

    ``v_i = s_i u_i`` ranges over the hull of ``{s u : s in [s_lo, s_hi], u in [l_u, u_u]}``.
    """
    gates = gate_ranges(pre)
    n_hidden = len(weights) - 1
    u_bounds: list[tuple[Array, Array]] = [None] * n_hidden  # type: ignore[list-item]
    vl = vu = c
    for i in range(n_hidden - 1, -1, -1):
        w = weights[i + 1]
        gc, gr = w.T @ ((vl + vu) / 2), np.abs(w).T @ ((vu - vl) / 2)
        gl, gu = _widen(gc - gr, gc + gr)
        u_bounds[i] = (gl, gu)
        s_lo, s_hi = gates[i]
        cand = np.stack([s_lo * gl, s_lo * gu, s_hi * gl, s_hi * gu])
        vl, vu = cand.min(axis=0), cand.max(axis=0)
    w = weights[0]
    yc, yr = w.T @ ((vl + vu) / 2), np.abs(w).T @ ((vu - vl) / 2)
    return u_bounds, _widen(yc - yr, yc + yr)


def pattern_gradient(weights: Sequence[Array], patterns: Sequence[Array], c: Array) -> Array:
    """``grad c^T f`` for fixed gate patterns: ``W_1^T S_1 W_2^T ... S_{L-1} W_L^T c``."""
    v = c
    for i in range(len(weights) - 1, 0, -1):
        v = patterns[i - 1] * (weights[i].T @ v)
    return weights[0].T @ v


def forward_pre_activations(weights: Sequence[Array], biases: Sequence[Array], x: Array) -> list[Array]:
    h, out = np.asarray(x, float), []
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        z = w @ h + b
        out.append(z)
        h = np.maximum(z, 0)
    return out


# ----------------------------------------------------------------------------------------------------------------
# MILP (LipMIP-style)
# ----------------------------------------------------------------------------------------------------------------


class _Milp:
    """Sparse MILP under construction: variables with bounds/integrality and two-sided row blocks."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.ri: list[Array] = []
        self.ci: list[Array] = []
        self.vals: list[Array] = []
        self.rlo: list[Array] = []
        self.rhi: list[Array] = []
        self.rows = 0

    def variables(self, lb: Array, ub: Array, integer: bool = False) -> Array:
        start = len(self.lb)
        self.lb.extend(np.asarray(lb, float).tolist())
        self.ub.extend(np.asarray(ub, float).tolist())
        self.integer.extend([int(integer)] * len(lb))
        return np.arange(start, len(self.lb))

    def rows_block(self, terms: list[tuple[Array, Array]], lo: Array, hi: Array) -> None:
        """Rows ``lo <= sum_t M_t @ vars_t <= hi``; each term is ``(var indices, matrix (R, len(indices)))``."""
        r = np.asarray(terms[0][1]).shape[0]
        for cols, mat in terms:
            mat = np.asarray(mat, float).reshape(r, len(cols))
            rr, cc = np.nonzero(mat)
            self.ri.append(rr + self.rows)
            self.ci.append(cols[cc])
            self.vals.append(mat[rr, cc])
        self.rlo.append(np.broadcast_to(np.asarray(lo, float), (r,)))
        self.rhi.append(np.broadcast_to(np.asarray(hi, float), (r,)))
        self.rows += r

    def solve(self, objective: Array, time_limit: float) -> Array:
        """Maximise ``objective @ vars``; returns the solution (raises RuntimeError unless optimal)."""
        n = len(self.lb)
        a = coo_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.ri), np.concatenate(self.ci))), shape=(self.rows, n)
        ).tocsr()
        res = milp(
            c=-np.asarray(objective, float),
            constraints=LinearConstraint(a, np.concatenate(self.rlo), np.concatenate(self.rhi)),
            integrality=np.asarray(self.integer),
            bounds=Bounds(np.asarray(self.lb), np.asarray(self.ub)),
            options={"mip_rel_gap": 1e-9, "time_limit": time_limit, "presolve": True},
        )
        if res.status != 0 or res.x is None:
            raise RuntimeError(f"MILP not solved to optimality: status {res.status}: {res.message}")
        return res.x


@dataclass
class MilpSolution:
    """Exact value with its certificate: a maximiser ``x``, the gate ``patterns`` and the solver's objective."""

    value: float
    objective: float
    x: Array
    patterns: list[Array]


def _encode_network(
    weights: Sequence[Array], biases: Sequence[Array], x_lo: Array, x_hi: Array, c: Array
) -> tuple[_Milp, Array, list[Array], Array, Array, tuple[Array, Array]]:
    """MILP for ``(x, gates, y = grad c^T f(x))``; returns the model, x/gate indices and ``y = M @ v_1 + k``.

    Forward, per hidden neuron with interval bounds ``[l, u]`` and binary gate ``a``:
    ``h >= z``, ``h >= 0``, ``h <= z - l (1 - a)``, ``h <= u a`` (so ``a = 1 => h = z >= 0``, ``a = 0 => h = 0 >= z``).
    Backward, ``v = a u`` with ``u`` in ``[L, U]``: ``v <= u - L (1 - a)``, ``v >= u - U (1 - a)``, ``v <= U a``,
    ``v >= L a``. Stable neurons get fixed gates (these rows then reduce to equalities or zeros).
    """
    pre = pre_activation_bounds(weights, biases, x_lo, x_hi)
    gates = gate_ranges(pre)
    u_bounds, y_bounds = backward_bounds(weights, pre, c)
    m = _Milp()
    xs = m.variables(x_lo, x_hi)
    prev = xs
    gate_idx = []
    for (w, b), (l, u), (s_lo, s_hi) in zip(zip(weights[:-1], biases[:-1], strict=True), pre, gates, strict=True):
        n = w.shape[0]
        eye = np.eye(n)
        h = m.variables(np.maximum(l, 0), np.maximum(u, 0))
        a = m.variables(s_lo, s_hi, integer=True)
        m.rows_block([(h, eye), (prev, -w)], b, np.inf)  # h - W p >= b
        m.rows_block([(h, eye), (prev, -w), (a, -np.diag(l))], -np.inf, b - l)  # h - W p - l a <= b - l
        m.rows_block([(h, eye), (a, -np.diag(u))], -np.inf, 0.0)  # h - u a <= 0
        prev = h
        gate_idx.append(a)
    # backward: u_i = M v_{i+1} + k  (k = W_L^T c for the last hidden layer)
    n_hidden = len(weights) - 1
    v_next: Array | None = None
    for i in range(n_hidden - 1, -1, -1):
        w = weights[i + 1]
        n = w.shape[1]
        eye = np.eye(n)
        lu, uu = u_bounds[i]
        if v_next is None:
            u_terms, k = [], w.T @ c
        else:
            u_terms, k = [(v_next, -w.T)], np.zeros(n)
        cand = np.stack([gates[i][0] * lu, gates[i][0] * uu, gates[i][1] * lu, gates[i][1] * uu])
        v = m.variables(cand.min(axis=0), cand.max(axis=0))
        a = gate_idx[i]
        m.rows_block([(v, eye), *u_terms, (a, -np.diag(lu))], -np.inf, k - lu)  # v - u - L a <= -L
        m.rows_block([(v, eye), *u_terms, (a, -np.diag(uu))], k - uu, np.inf)  # v - u - U a >= -U
        m.rows_block([(v, eye), (a, -np.diag(uu))], -np.inf, 0.0)  # v - U a <= 0
        m.rows_block([(v, eye), (a, -np.diag(lu))], 0.0, np.inf)  # v - L a >= 0
        v_next = v
    assert v_next is not None
    return m, xs, gate_idx, v_next, weights[0].T, y_bounds


def exact_local_lipschitz_milp_solution(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x_lo: Array,
    x_hi: Array,
    c: Array | None = None,
    norm: str | float | int = "inf",
    time_limit: float = 60.0,
) -> MilpSolution:
    """Solve the MILP and return the value with its maximiser (see :func:`exact_local_lipschitz_milp`)."""
    key = norm_key(norm)
    weights = [np.asarray(w, float) for w in weights]
    biases = [np.asarray(b, float) for b in biases]
    x_lo, x_hi = np.asarray(x_lo, float).reshape(-1), np.asarray(x_hi, float).reshape(-1)
    c = _as_c(weights, c)
    if len(weights) == 1:  # affine model: constant gradient
        y = weights[0].T @ c
        val = float(dual_norm(y, key))
        return MilpSolution(val, val, (x_lo + x_hi) / 2, [])
    if key == "2":
        raise NotImplementedError("the l2 gradient norm is not MILP-representable here; use exact_by_enumeration")
    m, xs, gate_idx, v1, mat, (yl, yu) = _encode_network(weights, biases, x_lo, x_hi, c)
    n0 = len(xs)
    best: tuple[float, Array] | None = None
    if key == "inf":
        big = np.maximum(np.abs(yl), np.abs(yu)) + 1.0
        t = m.variables(-big, big)
        sign = m.variables((yl >= 0).astype(float), (yu > 0).astype(float), integer=True)
        eye = np.eye(n0)
        # t <= y + 2M(1-b)  and  t <= -y + 2M b   (y = mat @ v1): max over b gives |y|
        m.rows_block([(t, eye), (v1, -mat), (sign, np.diag(2 * big))], -np.inf, 2 * big)
        m.rows_block([(t, eye), (v1, mat), (sign, -np.diag(2 * big))], -np.inf, 0.0)
        obj = np.zeros(len(m.lb))
        obj[t] = 1.0
        sol = m.solve(obj, time_limit)
        best = (float(obj @ sol), sol)
    else:  # ||y||_inf = max_j max_{s=+-1} s y_j: one-hot choice e_{j,s} of the coordinate and sign
        big = 2 * (np.maximum(np.abs(yl), np.abs(yu)).max() + 1.0)
        t = m.variables([-big], [big])
        pick_pos = m.variables(np.zeros(n0), (yu > 0).astype(float), integer=True)
        pick_neg = m.variables(np.zeros(n0), (yl < 0).astype(float), integer=True)
        ones = np.ones((n0, 1))
        # t <= s y_j + big (1 - e_{j,s})
        m.rows_block([(t, ones), (v1, -mat), (pick_pos, big * np.eye(n0))], -np.inf, big)
        m.rows_block([(t, ones), (v1, mat), (pick_neg, big * np.eye(n0))], -np.inf, big)
        m.rows_block([(pick_pos, np.ones((1, n0))), (pick_neg, np.ones((1, n0)))], 1.0, 1.0)
        obj = np.zeros(len(m.lb))
        obj[t] = 1.0
        if not (yu > 0).any() and not (yl < 0).any():  # y == 0 on the whole box
            return MilpSolution(0.0, 0.0, (x_lo + x_hi) / 2, [])
        sol = m.solve(obj, time_limit)
        best = (float(obj @ sol), sol)
    assert best is not None
    objective, sol = best
    x = np.clip(sol[xs], x_lo, x_hi)
    patterns = [np.round(sol[a]) for a in gate_idx]
    value = float(dual_norm(pattern_gradient(weights, patterns, c), key))
    _check_pattern_touches_box(weights, biases, x_lo, x_hi, patterns)
    if not value >= objective - 1e-6 * (1 + abs(objective)):
        raise RuntimeError(f"MILP objective {objective} not reproduced by its rounded pattern ({value})")
    return MilpSolution(value, objective, x, patterns)


def exact_local_lipschitz_milp(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x_lo: Array,
    x_hi: Array,
    c: Array | None = None,
    norm: str | float | int = "inf",
    time_limit: float = 60.0,
) -> float:
    """``max_{x in [x_lo, x_hi]} ||grad c^T f(x)||_q`` for a ReLU MLP (``weights[i]`` of shape (out, in)).

    ``norm="inf"``: one MILP maximising ``sum_j t_j`` with ``t_j = |y_j|`` encoded by a sign binary per input
    coordinate; ``norm=1``: one MILP maximising ``t <= s y_j + M (1 - e_{j,s})`` with a one-hot choice ``e`` of the
    coordinate ``j`` and sign ``s``. Big-M constants come from interval bounds of the
    pre-activations and of the backward vectors. The returned value is recomputed from the solver's rounded gate
    pattern (a pattern whose closed region meets the box, checked by an LP) and agrees with the objective.
    """
    return exact_local_lipschitz_milp_solution(weights, biases, x_lo, x_hi, c, norm, time_limit).value


# ----------------------------------------------------------------------------------------------------------------
# activation-region enumeration
# ----------------------------------------------------------------------------------------------------------------


def _margin_lp(a_rows: list[Array], b_rows: list[float], x_lo: Array, x_hi: Array) -> float:
    """``max t`` s.t. ``a_r x + t <= b_r`` (rows normalised), ``x`` in the box, ``t <= 1``."""
    n = len(x_lo)
    if not a_rows:
        return 1.0
    a = np.asarray(a_rows)
    b = np.asarray(b_rows)
    res = linprog(
        c=np.r_[np.zeros(n), -1.0],
        A_ub=np.c_[a, np.ones(len(a))],
        b_ub=b,
        bounds=[*zip(x_lo, x_hi, strict=True), (None, 1.0)],
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"region LP failed: {res.message}")
    return float(-res.fun)


def _sign_row(a_row: Array, d: float, s: float) -> tuple[Array, float]:
    """Row for ``s = 1: z >= t`` or ``s = 0: z <= -t`` with ``z = a x + d``, normalised by ``||a||``."""
    nrm = float(np.linalg.norm(a_row)) or 1.0
    if s > 0:
        return -a_row / nrm, d / nrm
    return a_row / nrm, -d / nrm


def _check_pattern_touches_box(
    weights: Sequence[Array], biases: Sequence[Array], x_lo: Array, x_hi: Array, patterns: Sequence[Array]
) -> None:
    rows, rhs = [], []
    a_mat, d = weights[0], biases[0]
    for i, s in enumerate(patterns):
        for j in range(len(s)):
            r, q = _sign_row(a_mat[j], d[j], s[j])
            rows.append(r)
            rhs.append(q)
        a_mat, d = weights[i + 1] @ (s[:, None] * a_mat), weights[i + 1] @ (s * d) + biases[i + 1]
    if _margin_lp(rows, rhs, x_lo, x_hi) < -1e-7:
        raise RuntimeError("MILP gate pattern has no point in the box")


@dataclass
class Region:
    """A full-dimensional activation region meeting the box: its gate patterns and ``grad c^T f`` on it."""

    patterns: list[Array]
    gradient: Array


def enumerate_regions(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x_lo: Array,
    x_hi: Array,
    c: Array | None = None,
    tol: float = 1e-9,
    max_lps: int = 20000,
) -> tuple[list[Region], int]:
    """All activation patterns whose region has a nonempty interior inside the box (depth-first over neurons).

    Within a fixed pattern of layers ``< i`` the pre-activation ``z_i = A_i x + d_i`` is affine. A neuron whose
    exact range over the box is strictly signed gets its only gate without an LP; otherwise both gates are tried
    and kept if ``max t`` s.t. the signed, normalised constraints ``+-z >= t`` is ``> tol``.
    Returns the regions and the number of LPs solved.
    """
    weights = [np.asarray(w, float) for w in weights]
    biases = [np.asarray(b, float) for b in biases]
    x_lo, x_hi = np.asarray(x_lo, float).reshape(-1), np.asarray(x_hi, float).reshape(-1)
    c = _as_c(weights, c)
    centre, radius = (x_lo + x_hi) / 2, (x_hi - x_lo) / 2
    regions: list[Region] = []
    n_lps = 0
    n_hidden = len(weights) - 1

    def descend(layer: int, a_mat: Array, d: Array, s: list[float], rows: list, rhs: list, pats: list) -> None:
        nonlocal n_lps
        if layer == n_hidden:
            regions.append(Region([p.copy() for p in pats], pattern_gradient(weights, pats, c)))
            return
        j = len(s)
        if j == len(d):
            sv = np.asarray(s)
            nxt_a = weights[layer + 1] @ (sv[:, None] * a_mat)
            nxt_d = weights[layer + 1] @ (sv * d) + biases[layer + 1]
            descend(layer + 1, nxt_a, nxt_d, [], rows, rhs, [*pats, sv])
            return
        zc, zr = a_mat[j] @ centre + d[j], np.abs(a_mat[j]) @ radius
        options = [1.0] if zc - zr > 0 else [0.0] if zc + zr < 0 else [1.0, 0.0]
        for gate in options:
            r, q = _sign_row(a_mat[j], d[j], gate)
            new_rows, new_rhs = [*rows, r], [*rhs, q]
            if len(options) > 1:
                n_lps += 1
                if n_lps > max_lps:
                    raise RuntimeError(f"enumeration exceeded {max_lps} LPs")
                if _margin_lp(new_rows, new_rhs, x_lo, x_hi) <= tol:
                    continue
            descend(layer, a_mat, d, [*s, gate], new_rows, new_rhs, pats)

    if n_hidden == 0:
        return [Region([], weights[0].T @ c)], 0
    descend(0, weights[0], biases[0], [], [], [], [])
    return regions, n_lps


def exact_by_enumeration(
    weights: Sequence[Array],
    biases: Sequence[Array],
    x_lo: Array,
    x_hi: Array,
    c: Array | None = None,
    norm: str | float | int = "inf",
) -> float:
    """Clarke local Lipschitz value of a tiny ReLU MLP: max of ``||grad||_q`` over the regions meeting the box."""
    regions, _ = enumerate_regions(weights, biases, x_lo, x_hi, c)
    return max(float(dual_norm(r.gradient, norm)) for r in regions)


# ----------------------------------------------------------------------------------------------------------------
# sampled lower bounds (any torch model)
# ----------------------------------------------------------------------------------------------------------------


def box_points(x_lo: Tensor, x_hi: Tensor, n: int = 256, max_vertices: int = 256, seed: int = 0) -> Tensor:
    """Points of each box, shape ``(B, S, *shape)``: the centre, vertices (all if ``2^d <= max_vertices``, else
    ``max_vertices`` random ones) and ``n`` uniform samples."""
    b, shape = x_lo.shape[0], tuple(x_lo.shape[1:])
    d = int(np.prod(shape)) if shape else 1
    gen = torch.Generator().manual_seed(seed)
    kw = {"dtype": x_lo.dtype}
    if 2**d <= max_vertices:
        bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), **kw)
    else:
        bits = torch.randint(0, 2, (max_vertices, d), generator=gen).to(x_lo.dtype)
    uni = torch.rand(n, d, generator=gen, **kw)
    frac = torch.cat([torch.full((1, d), 0.5, **kw), bits, uni]).to(x_lo.device)  # (S, d)
    lo, hi = x_lo.reshape(b, 1, d), x_hi.reshape(b, 1, d)
    return (lo + frac * (hi - lo)).reshape(b, -1, *shape)


def output_rows(c: Tensor | None, m: int, b: int, dtype: torch.dtype, device) -> tuple[Tensor, bool]:
    """Direction rows ``(B, K, m)`` and whether the row dimension is squeezed (scalar output or a single c)."""
    if c is None:
        eye = torch.eye(m, dtype=dtype, device=device)
        return eye.expand(b, m, m), m == 1
    c = torch.as_tensor(c, dtype=dtype, device=device)
    if c.dim() == 1:
        return c.reshape(1, 1, m).expand(b, 1, m), True
    if c.dim() == 2:
        return c.unsqueeze(0).expand(b, *c.shape), False
    return c, False


def gradients_at(model: Callable[[Tensor], Tensor], x: Tensor, rows: Tensor) -> Tensor:
    """``grad_x rows_k^T f(x)`` for every point: ``x`` is ``(N, *shape)``, rows ``(N, K, m)``; returns
    ``(N, K, *shape)`` (autograd; at ReLU kinks torch picks the gate 0, one element of the Clarke set)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = model(x).reshape(x.shape[0], -1)
        grads = []
        for k in range(rows.shape[1]):
            (g,) = torch.autograd.grad((f * rows[:, k]).sum(), x, retain_graph=k + 1 < rows.shape[1])
            grads.append(g)
    return torch.stack(grads, dim=1)


def sampled_gradient_norm(
    model: Callable[[Tensor], Tensor],
    x_lo: Tensor,
    x_hi: Tensor,
    c: Tensor | None = None,
    norm: str | float | int = "inf",
    n: int = 256,
    max_vertices: int = 256,
    seed: int = 0,
) -> Tensor:
    """Max of ``||grad c^T f(x)||_q`` over :func:`box_points` of each box: a valid LOWER bound of the local
    Lipschitz constant. Shape ``(B,)`` (scalar output or a single ``c``) or ``(B, K)``."""
    pts = box_points(x_lo, x_hi, n, max_vertices, seed)
    b, s = pts.shape[:2]
    with torch.no_grad():
        m = model(pts[:, 0]).reshape(b, -1).shape[1]
    rows, squeeze = output_rows(c, m, b, x_lo.dtype, x_lo.device)
    flat_rows = rows.unsqueeze(1).expand(b, s, *rows.shape[1:]).reshape(b * s, *rows.shape[1:])
    g = gradients_at(model, pts.reshape(b * s, *pts.shape[2:]), flat_rows)
    vals = dual_norm(g.reshape(b, s, rows.shape[1], -1), norm).amax(dim=1)  # (B, K)
    return vals[:, 0] if squeeze else vals


# ----------------------------------------------------------------------------------------------------------------
# global product bound (a crude but valid reference upper bound for any architecture of tests.reference.nets)
# ----------------------------------------------------------------------------------------------------------------


def operator_norm(mat: Array, norm: str | float | int) -> float:
    """``||M||_{p -> p}`` for the input norm ``p``: max row sum (inf), spectral norm (2), max column sum (1)."""
    key = norm_key(norm)
    if key == "inf":
        return float(np.abs(mat).sum(axis=1).max())
    if key == "1":
        return float(np.abs(mat).sum(axis=0).max())
    return float(np.linalg.norm(mat, 2))


def _dense(module: nn.Module, in_shape: tuple[int, ...]) -> Array:
    x = torch.zeros(1, *in_shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: module(t).reshape(-1), x)
    return jac.reshape(jac.shape[0], -1).numpy()


def _lip(module: nn.Module, in_shape: tuple[int, ...], key: str) -> tuple[float, tuple[int, ...]]:
    from tests.reference.nets import Residual

    with torch.no_grad():
        out_shape = tuple(module(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    if isinstance(module, nn.Sequential):
        total, shape = 1.0, in_shape
        for child in module:
            k, shape = _lip(child, shape, key)
            total *= k
        return total, shape
    if isinstance(module, Residual):
        body, _ = _lip(module.body, in_shape, key)
        short = 1.0 if module.shortcut is None else _lip(module.shortcut, in_shape, key)[0]
        return body + short, out_shape
    if isinstance(module, (nn.ReLU, nn.Tanh, nn.Identity, nn.Flatten, nn.Dropout)):
        return 1.0, out_shape
    if isinstance(module, nn.Sigmoid):
        return 0.25, out_shape
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope)), out_shape
    if type(module).__name__ in ("MaxMin", "GroupSort"):  # sorting is non-expansive in every l_p
        return 1.0, out_shape
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d)):
        return operator_norm(_dense(module, in_shape), key) * (1 + 1e-12), out_shape
    raise TypeError(f"no Lipschitz rule for {type(module).__name__}")


def global_lipschitz_upper(
    model: nn.Module, input_shape: tuple[int, ...], norm: str | float | int = "inf", c: Tensor | None = None
) -> Tensor:
    """``||c_k||_q * prod_layers ||layer||_{p -> p}`` (residual blocks: ``1 + ||body||``): an upper bound of
    ``||grad c_k^T f||_q`` everywhere. Shape ``()`` for a single direction, ``(K,)`` for K rows."""
    key = norm_key(norm)
    total, out_shape = _lip(copy.deepcopy(model).double(), tuple(input_shape), key)
    m = int(np.prod(out_shape)) if out_shape else 1
    rows, squeeze = output_rows(c, m, 1, torch.float64, "cpu")
    vals = dual_norm(rows[0], key) * total
    return vals[0] if squeeze else vals
