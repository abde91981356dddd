"""LipSDP-Neuron and LipSDP-Layer (l2, slope-restricted activations), certified in float64.

Network ``h_0 = x``, ``h_k = s(W_{k-1} h_{k-1})`` (k = 1..L), ``f = W_L h_L``; every activation is slope-restricted
in ``[alpha_k, beta_k]`` (scalars per layer, or per-neuron vectors ``alpha_k, beta_k`` where the products below are
taken entrywise, ``diag(alpha_k beta_k) T_k``: the local slope intervals of :mod:`lipbound.local_sdp`).
With ``T_k = diag(lambda_k)`` (Neuron, ``lambda_k >= 0`` per neuron) or
``T_k = lambda_k I`` (Layer), the block-tridiagonal matrix over ``(dx, dh_1, ..., dh_L)``

    M(rho, T)[0, 0]   = rho I + 2 alpha_1 beta_1 W_0^T T_1 W_0
    M[k, k]           = 2 T_k + 2 alpha_{k+1} beta_{k+1} W_k^T T_{k+1} W_k         (1 <= k < L)
    M[L, L]           = 2 T_L - W_L^T W_L
    M[k-1, k]         = -(alpha_k + beta_k) W_{k-1}^T T_k

is PSD only if ``||f(x) - f(y)||^2 <= rho ||x - y||^2`` (S-procedure on the slope QCs), so ``L2 <= sqrt(rho)``.
LipSDP-Network (couplings between neurons) is deliberately not offered: it is invalid for repeated ReLU.

Reductions applied before solving: the first layer ``W_0`` (n_1 x n_0, n_0 > n_1) is replaced by a square ``R``
with ``R R^T >= W_0 W_0^T`` proven in float64 (then ``W_0 = R C`` with ``||C|| <= 1``: the bound still holds for
the real weights; an SVD's ``W_0 V`` is only equal up to its rounding), the last (more rows than columns) by ``R^T``
with ``R R^T >= W_L^T W_L`` (:func:`~lipbound.global_bounds.certify.dominating_factor`); layers are
divided by powers of two (exact in floating point) to unit-order norm: the first and last always (any network),
inner layers only across positively homogeneous activations (ReLU, LeakyReLU, identity). The certified bound is
``sqrt(rho_cert) * prod(scales)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from lipbound.errors import InvalidInputError, UnsupportedOperatorError
from lipbound.global_bounds.certify import (
    certified_product,
    certified_sqrt,
    dominating_factor,
    is_psd_certified,
    solve_problem,
)
from lipbound.global_bounds.network import LayeredNetwork


@dataclass
class Prepared:
    """Reduced, rescaled float64 weights; the Lipschitz constant of the original is ``scale`` times theirs."""

    weights: list[np.ndarray]
    scale: float


def pow2(x: float) -> float:
    """The power of two nearest to ``x > 0`` (division by it is exact)."""
    return 2.0 ** round(math.log2(x)) if x > 0 else 1.0


def prepare(
    net: LayeredNetwork,
    homogeneous: list[bool],
    reduce: bool = True,
    residual: list[bool] | None = None,
    prune: bool = False,
) -> Prepared:
    """Optionally SVD-reduce the first/last layers (l2 only) and rescale by powers of two (see module doc).

    ``homogeneous[k]`` says whether activation ``k`` commutes with positive scaling. A weight is rescaled only if
    the factor passes to the output through homogeneous activations; weights inside residual blocks never are
    (the whole block ``x + s(W x)`` is homogeneous, ``W`` alone is not). ``prune``: drop constant or unused
    neurons first (:func:`prune_constant_neurons`; only valid for element-wise activations).
    """
    residual = residual or [False] * len(net.activations)
    Ws = [w.detach().cpu().double().numpy().copy() for w in net.weights]
    if prune:
        Ws = prune_constant_neurons(Ws)
    if reduce and residual[:1] != [True] and Ws[0].shape[1] > Ws[0].shape[0]:
        R = dominating_factor(Ws[0])  # (n1, n1) with R R^T >= W_0 W_0^T proven: W_0 = R C, ||C|| <= 1
        if R is not None:
            Ws[0] = R
    if reduce and Ws[-1].shape[0] > Ws[-1].shape[1]:
        R = dominating_factor(Ws[-1].T)  # R R^T >= W_L^T W_L: ||W_L z|| <= ||R^T z|| for every z
        if R is not None:
            Ws[-1] = R.T
    scales: list[float] = []
    L = len(Ws) - 1
    for k, w in enumerate(Ws):
        if k < L and residual[k]:
            continue
        if k in (0, L) or all(homogeneous[k:]):  # the factor must pass through every later activation
            c = pow2(float(np.linalg.norm(w, 2)) if w.size else 1.0)
            Ws[k] = w / c
            scales.append(c)
    return Prepared(Ws, certified_product(scales))


def prune_constant_neurons(Ws: list[np.ndarray]) -> list[np.ndarray]:
    """Drop hidden neurons that cannot change the output: ``Ws[k]`` maps layer k to layer k+1.

    Hidden neuron j after ``Ws[k]`` is constant when its incoming row ``Ws[k][j, :]`` is exactly zero (its
    pre-activation is its bias, e.g. a conv output that only sees padding), and unused when its outgoing column
    ``Ws[k+1][:, j]`` is exactly zero. Either way the network equals, up to a constant in the next pre-activation,
    the network without it, so the Lipschitz constant is unchanged; removing it keeps the LMI free of multipliers
    that nothing constrains (the first-order method would drive them to overflow). Repeated to a fixed point. A
    hidden layer left empty means the network is constant (Lipschitz constant 0).
    """
    Ws = [w.copy() for w in Ws]
    changed = True
    while changed:
        changed = False
        for k in range(len(Ws) - 1):
            keep = np.any(Ws[k] != 0, axis=1) & np.any(Ws[k + 1] != 0, axis=0)
            if not keep.all():
                Ws[k], Ws[k + 1] = Ws[k][keep], Ws[k + 1][:, keep]
                changed = True
    return Ws


def check_lipsdp(net: LayeredNetwork, norm: str) -> None:
    if norm != "2":
        raise InvalidInputError(f"LipSDP-Neuron/Layer bound the l2 Lipschitz constant only (got norm={norm!r})")
    for k, a in enumerate(net.activations):
        if a.slope is None:
            raise UnsupportedOperatorError(
                a.kind,
                net.origins[k] if k < len(net.origins) else f"activation {k}",
                hint="LipSDP-Neuron/Layer need slope-restricted activations (ReLU, LeakyReLU, tanh, sigmoid); "
                "use method='lipsdp-nsr' for GroupSort/MaxMin/Householder",
            )
        if net.residual[k]:
            raise UnsupportedOperatorError(
                "residual block",
                net.origins[k] if k < len(net.origins) else f"activation {k}",
                hint="LipSDP-Neuron/Layer handle plain feed-forward nets; use method='lipsdp-nsr' or 'product'",
            )


def lmi_matrix(
    Ws: list[np.ndarray], lams: list[np.ndarray], slopes: list[tuple[float, float]], rho: float
) -> np.ndarray:
    """The matrix ``M(rho, T)`` of the module doc in float64 (``lams[k]``: diagonal of ``T_{k+1}``)."""
    dims = [Ws[0].shape[1]] + [w.shape[0] for w in Ws[:-1]]
    off = np.concatenate([[0], np.cumsum(dims)])
    M = np.zeros((off[-1], off[-1]))
    M[: dims[0], : dims[0]] = rho * np.eye(dims[0])
    for k, lam in enumerate(lams):  # hidden layer k+1, T = diag(lam), pre-activation W_k h_k
        a, b = slopes[k]  # scalars, or per-neuron arrays (local slope intervals)
        W = Ws[k]
        i, j = slice(off[k], off[k + 1]), slice(off[k + 1], off[k + 2])
        M[i, i] += 2 * (W.T * (a * b * lam)) @ W
        M[i, j] += -(W.T * ((a + b) * lam))
        M[j, i] += -(((a + b) * lam)[:, None] * W)
        M[j, j] += 2 * np.diag(lam)
    WL = Ws[-1]
    M[off[-2] :, off[-2] :] -= WL.T @ WL
    return 0.5 * (M + M.T)


def certify_rho(Ws: list[np.ndarray], lams: list[np.ndarray], slopes: list[tuple[float, float]]) -> tuple[float, dict]:
    """Smallest rho (certified) for which ``M(rho, T) >= 0`` with the given multipliers (clipped to >= 0).

    If the trailing block ``C`` of ``M`` is not positive definite (slightly infeasible solver output) the
    multipliers are scaled up by a few factors ``s > 1`` (a positive multiple of valid multipliers is valid) and the
    best certified rho is kept. Returns ``(rho, info)``; ``rho = inf`` if no scaling works.
    """
    lams = [np.maximum(np.asarray(l, dtype=np.float64), 0.0) for l in lams]
    n0 = Ws[0].shape[1]
    best, best_s = math.inf, None
    for s in (1.0, 1.0 + 1e-6, 1.0 + 1e-4, 1.001, 1.01, 1.1, 1.5, 2.0, 4.0, 16.0):
        N = lmi_matrix(Ws, [s * l for l in lams], slopes, 0.0)
        C, B, N00 = N[n0:, n0:], N[n0:, :n0], N[:n0, :n0]
        try:
            Lc = np.linalg.cholesky(C)
        except np.linalg.LinAlgError:
            continue
        Y = sla.solve_triangular(Lc, B, lower=True)
        S = Y.T @ Y - N00
        r = float(np.linalg.eigvalsh(0.5 * (S + S.T))[-1])
        rho = _verify(Ws, [s * l for l in lams], slopes, max(r, 0.0))
        if rho >= best:
            break  # scaling up further no longer helps
        best, best_s = rho, s
        if s > 1.01:
            break
    return best, {"multiplier_scale": best_s}


def _verify(Ws, lams, slopes, r: float, tries: int = 40) -> float:
    """Smallest ``r + d`` (``d`` growing geometrically) for which ``M(r + d, T)`` is proven PSD in float64."""
    M = lmi_matrix(Ws, lams, slopes, 0.0)
    d = max(abs(r), 1e-6 * float(np.abs(M).max()), 1e-300) * 1e-9
    n0 = Ws[0].shape[1]
    for _ in range(tries):
        cand = r + d
        Mc = M.copy()
        Mc[np.arange(n0), np.arange(n0)] += cand
        if is_psd_certified(Mc):
            return cand
        d *= 4.0
    return math.inf


def build_problem(Ws: list[np.ndarray], slopes: list[tuple[float, float]], per_neuron: bool):
    """cvxpy problem ``min rho s.t. M(rho, T) >= 0``; returns ``(problem, rho, [lambda_k])``."""
    import cvxpy as cp

    dims = [Ws[0].shape[1]] + [w.shape[0] for w in Ws[:-1]]
    L = len(dims) - 1
    rho = cp.Variable(nonneg=True)
    lams = [cp.Variable(dims[k + 1], nonneg=True) if per_neuron else cp.Variable(nonneg=True) for k in range(L)]

    def T(k: int):  # diag of T_{k+1} as a vector expression
        return lams[k] if per_neuron else lams[k] * np.ones(dims[k + 1])

    blocks = [[None] * (L + 1) for _ in range(L + 1)]
    for i in range(L + 1):
        for j in range(L + 1):
            blocks[i][j] = np.zeros((dims[i], dims[j]))
    blocks[0][0] = rho * np.eye(dims[0])
    for k in range(L):
        a, b = (np.broadcast_to(np.asarray(v, dtype=np.float64), (dims[k + 1],)) for v in slopes[k])
        W = Ws[k]
        t = T(k)
        TW = cp.multiply(cp.reshape(t, (dims[k + 1], 1), order="F"), W)  # T_{k+1} W_k
        if np.any(a * b != 0):
            blocks[k][k] = blocks[k][k] + 2 * ((W * (a * b)[:, None]).T @ TW)
        sTW = cp.multiply(np.reshape(a + b, (dims[k + 1], 1)), TW)  # diag(a + b) T_{k+1} W_k
        blocks[k][k + 1] = -sTW.T
        blocks[k + 1][k] = -sTW
        blocks[k + 1][k + 1] = 2 * cp.diag(t)
    WL = Ws[-1]
    blocks[L][L] = blocks[L][L] - WL.T @ WL
    M = cp.bmat(blocks)
    prob = cp.Problem(cp.Minimize(rho), [0.5 * (M + M.T) >> 0])
    return prob, rho, lams


#: default solver choice: SCS while the LMI has at most this many rows and the net at most this many hidden layers
#: (SCS then converges in seconds), the first-order chain method beyond (SCS needs > 130 s at 768 rows and returns
#: uncertifiable multipliers on deep nets, whose rho is orders of magnitude below its absolute tolerance)
SCS_MAX_ROWS = 200
SCS_MAX_DEPTH = 4
SOLVER_CHOICES = ("auto", "first-order", "scs", "clarabel", "mosek")


def lipsdp_bound(net: LayeredNetwork, variant: str = "neuron", solver: str | None = None, time_budget=None) -> dict:
    """Certified l2 LipSDP bound (``variant`` "neuron" or "layer"). Returns a dict with ``upper`` and details.

    ``solver``: None/"auto" (LipSDP-Neuron: SCS polished by the first-order method on small LMIs, the first-order
    chain method alone on large or deep ones; LipSDP-Layer: always the first-order method), "first-order"
    (solver-free, :mod:`lipbound.global_bounds.lipsdp_fast`), or an SDP solver through cvxpy ("scs", "clarabel",
    "mosek"). Whatever produced the multipliers, the reported bound
    is :func:`certify_rho` of them.
    """
    check_lipsdp(net, "2")
    if net.depth == 0:
        from lipbound.global_bounds.certify import max_eig_certified

        W = net.weights[0].double().numpy()
        return {"upper": certified_sqrt(max_eig_certified(W.T @ W)), "status": "exact (no activation)"}
    name = (solver or "auto").lower()
    if name not in SOLVER_CHOICES:
        raise InvalidInputError(f"unknown solver {solver!r}; choose one of {SOLVER_CHOICES}")
    homog = [bool(a.homogeneous) for a in net.activations]  # the op traits
    prep = prepare(net, homog, prune=True)
    Ws = prep.weights
    if any(w.size == 0 for w in Ws):
        return {"upper": 0.0, "status": "constant network (every path crosses a layer of constant neurons)"}
    slopes = [tuple(map(float, a.slope)) for a in net.activations]
    per_neuron = variant == "neuron"
    rows = int(sum(w.shape[1] for w in Ws))
    best, info, raw_rho = solve_certified(Ws, slopes, per_neuron, name, time_budget)
    rho_c, lam_vals, cinfo = best
    if lam_vals is None:
        return {"upper": math.inf, **info, "certified": False}
    upper = certified_product([certified_sqrt(rho_c), prep.scale]) if math.isfinite(rho_c) else math.inf
    raw = float(np.sqrt(max(raw_rho, 0.0))) * prep.scale if raw_rho is not None else None
    return {
        "upper": upper,
        **info,
        "raw_solver_value": raw,
        "certified_rho": rho_c,
        "scale": prep.scale,
        "lmi_size": rows,
        **cinfo,
        "certified": math.isfinite(upper),
        "_multipliers": [l * (cinfo["multiplier_scale"] or 1.0) for l in lam_vals],
        "_weights": Ws,
    }


def solve_certified(
    Ws: list[np.ndarray], slopes: list[tuple], per_neuron: bool, name: str = "auto", time_budget=None
) -> tuple[tuple, dict, float | None]:
    """Multipliers for ``min rho s.t. M(rho, T) >= 0`` and their certified rho (the core of :func:`lipsdp_bound`).

    ``name``: "auto" (per-neuron: SCS polished by the first-order method on small LMIs, first-order alone on large
    or deep ones; per-layer: first-order), "first-order", "scs", "clarabel" or "mosek". Returns
    ``((rho_cert, multipliers | None, cert_info), info, raw_solver_rho)``; ``rho_cert`` is :func:`certify_rho` of
    the best multipliers found (``inf`` if none could be certified).
    """
    dims = [w.shape[0] for w in Ws[:-1]]
    rows = int(sum(w.shape[1] for w in Ws))
    auto = name == "auto"
    if auto:  # LipSDP-Layer has one multiplier per layer: the first-order method solves it to high accuracy
        small = rows <= SCS_MAX_ROWS and len(dims) <= SCS_MAX_DEPTH
        name = "scs" if per_neuron and small else "first-order"
    info: dict = {}
    lam_vals, raw_rho = None, None
    if name != "first-order":
        prob, rho, lams = build_problem(Ws, slopes, per_neuron)
        info = solve_problem(prob, name, time_budget)
        if lams[0].value is not None:
            lam_vals = [
                np.broadcast_to(np.asarray(l.value, dtype=np.float64), (dims[k],)).copy() for k, l in enumerate(lams)
            ]
            raw_rho = float(rho.value) if rho.value is not None else None
    best = (math.inf, None, {"multiplier_scale": None})
    if lam_vals is not None:
        rho_c, cinfo = certify_rho(Ws, lam_vals, slopes)
        best = (rho_c, lam_vals, cinfo)
    if name == "first-order" or auto:
        from lipbound.global_bounds.lipsdp_fast import first_order_multipliers

        start = None
        if best[1] is not None and math.isfinite(best[0]):  # polish the certified solver multipliers
            s = best[2]["multiplier_scale"] or 1.0
            start = [np.maximum(s * l, 1e-9 * max(float(np.max(l)), 1e-300)) for l in best[1]]
        fo_lams, fo_info = first_order_multipliers(Ws, slopes, per_neuron, time_budget, start=start)
        fo_info.pop("trace", None)
        rho_f, cinfo_f = certify_rho(Ws, fo_lams, slopes)
        fo_raw = fo_info["stages"][-1]["rho"] if fo_info["stages"] else None
        info = {
            **info,
            "first_order": {**fo_info, "certified_rho": rho_f},
            "solver": "first-order" if lam_vals is None else f"{info.get('solver')}+first-order",
        }
        if "status" not in info:
            info["status"] = "first-order: time limit" if fo_info.get("timed_out") else "first-order: converged"
        if rho_f < best[0]:
            best = (rho_f, fo_lams, cinfo_f)
            raw_rho = fo_raw if lam_vals is None else raw_rho
    return best, info, raw_rho
