"""LipSDP-NSR: certified l2 and l_inf bounds for GroupSort / MaxMin / Householder networks (plain and residual).

Quadratic constraint (S = P = 0). For an activation ``y = s(z)`` with ``kappa``-Lipschitz groups,
``dz^T (kappa^2 T) dz - dy^T T dy >= 0`` for every multiplier ``T`` of the form

* GroupSort / MaxMin (sorting permutes each group ``J`` and preserves ``1_J^T z``):
  ``T = blkdiag_J(lambda_J I + gamma_J 1_J 1_J^T)``, ``lambda_J >= 0``, ``gamma_J`` free;
* Householder (orthogonal on each pair of its grouping): ``T = blkdiag_J(lambda_J I)``;
* entrywise activations with slopes in ``[alpha, beta]``: ``kappa = max(|alpha|, |beta|)``, ``T = diag(lambda)``.

Chained certificate on "metrics" ``X_k`` of the hidden states ``h_k`` (``X_0 = rho I`` for l2):

* plain block ``h' = s(W h)``:  ``X - kappa^2 W^T T W >= 0`` and ``X' = T``;
* residual block ``h' = h + s(W h)``:  ``[[X - X' - kappa^2 W^T T W, -X'], [-X', T - X']] >= 0``
  (S-procedure for ``dh^T X dh - (dh + dy)^T X' (dh + dy) >= 0`` under the QC);
* output: l2: ``X_L - W_L^T W_L >= 0`` gives ``||f(x) - f(y)||_2 <= sqrt(rho) ||x - y||_2``;
  l_inf (scalar output ``w``, GeoLIP-style): ``X_0 = diag(tau)``, ``[[X_L, w], [w^T, 2 rho - sum(tau)]] >= 0``
  gives ``|w^T (h_L - h_L')| <= rho ||x - y||_inf``; a vector output takes the max over its rows.

Certification uses only the solver's ``T`` (and ``tau``, ``X_L`` for l_inf) and rebuilds every ``X_k`` backwards:
``R_L`` = requirement on ``h_L``; plain: ``t = min{t : t T >= R}`` (certified), ``R <- t kappa^2 W^T T W``;
residual: ``R <- R + t kappa^2 W^T T W + R (t T - R)^{-1} R`` for ``t`` slightly above the smallest feasible one
(then verified by Cholesky). l2: ``rho = lambda_max(R_0)``. l_inf: with ``R_L = X_L``,
``q = w^T X_L^{-1} w``, ``c = min{c : c diag(tau) >= R_0}``, the bound is ``sqrt(c sum(tau) q)`` (optimising the
free scale of the chain in ``2 rho = s c sum(tau) + q / s``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from lipbound.errors import InvalidInputError, SolverError, UnsupportedOperatorError
from lipbound.global_bounds.certify import (
    certified_product,
    certified_sqrt,
    is_psd_certified,
    max_eig_certified,
    min_scale,
    round_up,
    solve_problem,
)
from lipbound.global_bounds.certify import positive_definite_multiplier as _pd
from lipbound.global_bounds.certify import sandwich_upper as _sandwich
from lipbound.global_bounds.lipsdp import prepare
from lipbound.global_bounds.network import Activation, LayeredNetwork, group_index


def multiplier_structure(act: Activation, n: int) -> tuple[np.ndarray, bool, float]:
    """``(group id per feature, has_gamma, kappa)`` for the multiplier ``T`` of activation ``act`` on ``n`` features."""
    if act.kind in ("maxmin", "groupsort"):
        return group_index(act).numpy(), True, 1.0
    if act.kind == "householder":  # reflection of each pair (grouping of the layer): T = lambda_J I per pair
        return group_index(act).numpy(), False, 1.0
    if act.slope is not None:
        return np.arange(n), False, float(max(abs(act.slope[0]), abs(act.slope[1])))
    raise UnsupportedOperatorError(act.kind, "activation", hint="no LipSDP-NSR quadratic constraint for it")


def t_matrix(gid: np.ndarray, lam: np.ndarray, gam: np.ndarray | None) -> np.ndarray:
    """``T = diag(lambda[gid]) + sum_J gamma_J 1_J 1_J^T``."""
    T = np.diag(lam[gid])
    if gam is not None:
        T = T + gam[gid][:, None] * (gid[:, None] == gid[None, :])
    return T


def backward_chain(
    Ws: list[np.ndarray],
    Ts: list[np.ndarray],
    kappas: list[float],
    residual: list[bool],
    R: np.ndarray,
    Ys: list[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Certified requirement ``R_0`` on the input from the requirement ``R`` on ``h_L`` (see module doc).

    For residual blocks the next-state metric ``X'`` is either ``R`` itself or the solver's ``Y`` scaled to
    dominate ``R``; every candidate is verified and the one with the smallest ``lambda_max`` is kept.
    """
    for k in range(len(Ts) - 1, -1, -1):
        T = _pd(Ts[k])
        t0 = min_scale(T, R)
        if not math.isfinite(t0):  # unusable multiplier: fall back to T = I (always valid)
            T = np.eye(T.shape[0])
            t0 = min_scale(T, R)
        if not residual[k]:
            R = _sandwich(Ws[k], T, t0 * kappas[k] ** 2)
            continue
        cands = [(R, t0 * f) for f in (1.001, 1.01, 1.05, 1.2, 1.5, 2.0, 4.0)]
        Y = None if Ys is None else Ys[k]
        if Y is not None:
            Yp = _pd(0.5 * (Y + Y.T))
            s = min_scale(Yp, R)
            if math.isfinite(s):
                cands += [(s * Yp, s * f) for f in (1.0, 1.0001, 1.001, 1.01)]
        best, best_val = None, math.inf
        for Xp, t in cands:
            Rn = _residual_metric(Ws[k], T, t, kappas[k], Xp)
            if Rn is not None:
                val = float(np.linalg.eigvalsh(Rn)[-1])
                if val < best_val:
                    best, best_val = Rn, val
        if best is None:
            raise ArithmeticError(f"could not certify residual block {k}")
        R = best
    return R


def _residual_metric(W, T, t, kappa, Xp, tries: int = 30) -> np.ndarray | None:
    """Smallest verified ``X`` with ``[[X - X' - t kappa^2 W^T T W, -X'], [-X', t T - X']] >= 0``."""
    A = t * T - Xp
    try:
        Lc = np.linalg.cholesky(0.5 * (A + A.T))
    except np.linalg.LinAlgError:
        return None
    Y = np.linalg.solve(Lc, Xp)
    S = _sandwich(W, T, t * kappa**2)
    Rn = Xp + S + Y.T @ Y
    Rn = 0.5 * (Rn + Rn.T)
    n = Xp.shape[0]
    d = 1e-12 * max(float(np.abs(Rn).max()), 1e-300)
    for _ in range(tries):
        X = Rn + d * np.eye(n)
        big = np.block([[X - Xp - S, -Xp], [-Xp, A]])  # S dominates the exact t kappa^2 W^T T W
        if is_psd_certified(big):
            return X
        d *= 8.0
    return None


def check_nsr(net: LayeredNetwork, norm: str) -> None:
    if norm not in ("2", "inf"):
        raise InvalidInputError(f"norm must be 2 or 'inf', got {norm!r}")
    for k, a in enumerate(net.activations):
        n = net.segments[k].n_out  # shapes from the structured segment: no dense matrix for a check
        multiplier_structure(a, n)
        seg = net.segments[k]
        if net.residual[k] and seg.n_out != seg.n_in:
            raise InvalidInputError(f"residual block {k} needs a square weight, got {(seg.n_out, seg.n_in)}")


def build_problem(Ws, structs, residual: list[bool], norm: str, w: np.ndarray | None = None):
    """cvxpy problem of the module doc; returns ``(problem, rho, params)`` with ``params`` holding the variables."""
    import cvxpy as cp

    n0 = Ws[0].shape[1]
    rho = cp.Variable(nonneg=True)
    tau = cp.Variable(n0, nonneg=True) if norm == "inf" else None
    X = rho * np.eye(n0) if norm == "2" else cp.diag(tau)
    cons, lams, gams, T_exprs, ys = [], [], [], [], []
    for k, (gid, has_gam, kappa) in enumerate(structs):
        ng = int(gid.max()) + 1
        E = (gid[:, None] == np.arange(ng)[None, :]).astype(float)
        lam = cp.Variable(ng, nonneg=True)
        gam = cp.Variable(ng) if has_gam else None
        T = cp.diag(E @ lam)
        if gam is not None:
            T = T + E @ cp.diag(gam) @ E.T
        W = Ws[k]
        WTW = kappa**2 * (W.T @ T @ W)
        if residual[k]:
            Y = cp.Variable((W.shape[0], W.shape[0]), symmetric=True)
            big = cp.bmat([[X - Y - WTW, -Y], [-Y, T - Y]])
            cons.append(0.5 * (big + big.T) >> 0)
            X = Y
            ys.append(Y)
        else:
            ys.append(None)
            cons.append(0.5 * ((X - WTW) + (X - WTW).T) >> 0)
            X = T
        lams.append(lam)
        gams.append(gam)
        T_exprs.append(T)
    WL = Ws[-1]
    if norm == "2":
        last = X - WL.T @ WL
        cons.append(0.5 * (last + last.T) >> 0)
    else:
        col = w.reshape(-1, 1)
        big = cp.bmat([[X, col], [col.T, cp.reshape(2 * rho - cp.sum(tau), (1, 1), order="F")]])
        cons.append(0.5 * (big + big.T) >> 0)
    prob = cp.Problem(cp.Minimize(rho), cons)
    return prob, rho, {"lam": lams, "gam": gams, "tau": tau, "X_last": X, "Y": ys}


def _values(structs, params) -> list[np.ndarray]:
    Ts = []
    for (gid, _, _), lam, gam in zip(structs, params["lam"], params["gam"], strict=True):
        lv = np.maximum(np.asarray(lam.value, dtype=np.float64), 0.0) if lam.value is not None else None
        if lv is None:
            Ts.append(np.eye(len(gid)))
            continue
        gv = None if gam is None or gam.value is None else np.asarray(gam.value, dtype=np.float64)
        Ts.append(t_matrix(gid, lv, gv))
    return Ts


def nsr_bound(net: LayeredNetwork, norm: str = "2", solver: str | None = None, time_budget=None) -> dict:
    """Certified LipSDP-NSR bound for ``norm`` "2" or "inf". Returns a dict with ``upper`` and details.

    ``solver``: None/"auto" (plain l2 nets: SCS polished by the first-order chain method of
    :mod:`lipbound.global_bounds.nsr_fast` on small nets, see :func:`scs_is_default`, the first-order method alone on
    larger/deeper ones; residual or l_inf: SCS), "first-order" (plain l2 only, else SCS), "scs", "clarabel" or
    "mosek". ``details["solver"]`` says which ran; the reported bound is always the float64-certified one.
    """
    check_nsr(net, norm)
    homog = [bool(a.homogeneous) for a in net.activations]  # the op traits
    prep = prepare(net, homog, reduce=norm == "2", residual=net.residual)
    Ws = prep.weights
    if net.depth == 0:
        W = Ws[0]
        val = certified_sqrt(max_eig_certified(W.T @ W)) if norm == "2" else _inf_norm(W)
        return {"upper": certified_product([val, prep.scale]), "status": "exact (no activation)", "certified": True}
    structs = [multiplier_structure(a, Ws[k].shape[0]) for k, a in enumerate(net.activations)]
    kappas = [s[2] for s in structs]
    name = (solver or "auto").lower()
    if name not in SOLVER_CHOICES:
        raise InvalidInputError(f"unknown solver {solver!r}; choose one of {SOLVER_CHOICES}")
    chain_ok = norm == "2" and not any(net.residual)
    if chain_ok and (name == "first-order" or (name == "auto" and not scs_is_default(Ws))):
        return _first_order_bound(Ws, structs, kappas, prep.scale, time_budget)
    if chain_ok and name == "auto":  # small net: SCS, then polish its multipliers with the first-order method
        return _scs_polished(Ws, structs, kappas, prep.scale, time_budget)
    fallback_note = "" if name not in ("auto", "first-order") else "first-order path is plain l2 only; "
    solver = None if name in ("auto", "first-order") else name
    if norm == "2":
        prob, rho, params = build_problem(Ws, structs, net.residual, "2")
        info = solve_problem(prob, solver, time_budget)
        Ts = _values(structs, params)
        WL = Ws[-1]
        R = _sandwich(WL, np.eye(WL.shape[0]), 1.0)
        try:
            R0 = backward_chain(Ws, Ts, kappas, net.residual, R, _y_values(params))
            rho_c = max_eig_certified(R0)
        except ArithmeticError as e:
            info["status"] += f"; certification failed: {e}"
            rho_c = math.inf
        raw = float(np.sqrt(max(float(rho.value), 0))) * prep.scale if rho.value is not None else None
        upper = certified_product([certified_sqrt(rho_c), prep.scale]) if math.isfinite(rho_c) else math.inf
        info["status"] = fallback_note + info["status"]
        return {"upper": upper, **info, "raw_solver_value": raw, "certified_rho": rho_c, "certified": True}
    # l_inf: one scalar problem per output row
    rows, infos, raws = [], [], []
    n_out = Ws[-1].shape[0]
    deadline = None if time_budget is None else time.perf_counter() + float(time_budget)
    for i in range(n_out):
        w = Ws[-1][i]
        left = None if deadline is None else (deadline - time.perf_counter()) / (n_out - i)
        if left is not None and left <= 0:  # one SCS problem per output row: the budget is for all of them
            raise SolverError(f"lipsdp-nsr (l_inf) exceeded time_budget={time_budget} s after {i} of {n_out} rows")
        prob, rho, params = build_problem(Ws, structs, net.residual, "inf", w)
        info = solve_problem(prob, solver, left)
        rows.append(_certify_inf(Ws, structs, net.residual, params, w))
        infos.append(info["status"])
        raws.append(float(rho.value) * prep.scale if rho.value is not None else math.nan)
    best = max(rows)
    upper = certified_product([best, prep.scale]) if math.isfinite(best) else math.inf
    return {
        "upper": upper,
        "solver": info["solver"],
        "status": fallback_note + ",".join(sorted(set(infos))),
        "raw_solver_value": max(raws),
        "per_output": [certified_product([r, prep.scale]) for r in rows],
        "certified": True,
    }


#: "auto" solver for plain l2 nets: SCS (polished by the first-order method) while every hidden layer has at most
#: this many units and the net at most this many hidden layers; the solver-free chain method beyond (SCS: 14 s at
#: width 128 vs 4 s, ~300 s predicted at 256; the two agree to ~1e-4 relative)
SCS_MAX_WIDTH = 64
SCS_MAX_DEPTH = 4
#: default time budget (s) of the first-order optimisation when none is given (it stops there, still certified)
FIRST_ORDER_BUDGET = 30.0
SOLVER_CHOICES = ("auto", "first-order", "scs", "clarabel", "mosek")


def scs_is_default(Ws: list[np.ndarray]) -> bool:
    return len(Ws) - 1 <= SCS_MAX_DEPTH and max(w.shape[0] for w in Ws[:-1]) <= SCS_MAX_WIDTH


def _chain_result(rho_c: float, Xs: list[np.ndarray], Ws: list[np.ndarray], scale: float) -> dict:
    upper = certified_product([certified_sqrt(rho_c), scale]) if math.isfinite(rho_c) else math.inf
    return {
        "upper": upper,
        "certified_rho": rho_c,
        "scale": scale,
        "certified": math.isfinite(upper),
        "_multipliers": Xs,  # scaled: rho I >= W_0^T X_1 W_0, X_k >= W_k^T X_{k+1} W_k, X_L >= W_L^T W_L (kappa 1)
        "_weights": Ws,
    }


def _first_order_bound(Ws, structs, kappas, scale, time_budget, start=None) -> dict:
    from lipbound.global_bounds.nsr_fast import certify_chain, first_order_multipliers

    budget = time_budget if time_budget else FIRST_ORDER_BUDGET
    Ts, fo = first_order_multipliers(Ws, structs, budget, start=start)
    fo.pop("trace", None)
    rho_c, Xs = certify_chain(Ws, Ts, kappas)
    raw = math.sqrt(fo["rho"]) * scale if math.isfinite(fo["rho"]) else None
    status = "first-order: time limit" if fo["timed_out"] else "first-order: converged"
    return {
        **_chain_result(rho_c, Xs, Ws, scale),
        "solver": "first-order",
        "status": status,
        "raw_solver_value": raw,
        "first_order": {**fo, "certified_rho": rho_c},
    }


def _scs_polished(Ws, structs, kappas, scale, time_budget) -> dict:
    from lipbound.global_bounds.nsr_fast import certify_chain, theta_from_multipliers

    prob, rho, params = build_problem(Ws, structs, [False] * len(structs), "2")
    info = solve_problem(prob, "scs", time_budget)
    Ts = _values(structs, params)
    rho_s, Xs = certify_chain(Ws, Ts, kappas)
    start = theta_from_multipliers(structs, Ts) if params["lam"][0].value is not None else None
    fo = _first_order_bound(Ws, structs, kappas, scale, time_budget, start=start)
    raw = float(np.sqrt(max(float(rho.value), 0))) * scale if rho.value is not None else None
    out = {**fo, **info, "solver": "scs+first-order", "raw_solver_value": raw}
    out["first_order"]["scs_certified_rho"] = rho_s
    if rho_s <= fo["certified_rho"]:
        out.update(_chain_result(rho_s, Xs, Ws, scale))
    return out


def _inf_norm(W: np.ndarray) -> float:
    return round_up(float(np.abs(W).sum(axis=1).max()), 2 + W.shape[1] // 64)


def _y_values(params) -> list[np.ndarray | None]:
    return [None if y is None or y.value is None else np.asarray(y.value, dtype=np.float64) for y in params["Y"]]


def _certify_inf(Ws, structs, residual, params, w: np.ndarray) -> float:
    Ts = _values(structs, params)
    Xv = params["X_last"].value
    X0 = 0.5 * (Xv + Xv.T) if Xv is not None else Ts[-1]
    tau = params["tau"].value
    tau = np.maximum(np.asarray(tau, dtype=np.float64), 0.0) if tau is not None else np.ones(Ws[0].shape[1])
    D = np.diag(tau + 1e-9 * max(float(tau.max()), 1e-300))
    top = max(float(np.linalg.eigvalsh(X0)[-1]), 1e-300)
    neg = max(-float(np.linalg.eigvalsh(X0)[0]), 0.0)
    best = math.inf
    for rel in (1e-9, 1e-7, 1e-5, 1e-3, 1e-1):  # make X_L positive definite; keep the best certified value
        XL = X0 + (neg + rel * top) * np.eye(X0.shape[0])
        try:
            R0 = backward_chain(Ws[:-1], Ts, [s[2] for s in structs], residual, XL, _y_values(params))
            c = min_scale(D, R0)
            Lc = np.linalg.cholesky(XL)
        except (ArithmeticError, np.linalg.LinAlgError):
            continue
        q = _verify_q(XL, w, float(np.sum(np.linalg.solve(Lc, w) ** 2)))
        total = certified_product([c, round_up(float(np.diag(D).sum()), 2 + len(tau) // 64)])
        best = min(best, certified_sqrt(certified_product([total, q])))
    return best


def _verify_q(XL: np.ndarray, w: np.ndarray, q: float, tries: int = 40) -> float:
    """Certified ``q' >= w^T XL^{-1} w``: ``[[XL, w], [w^T, q']] >= 0`` proven by Cholesky."""
    d = 1e-12 * max(q, 1e-300)
    col = w.reshape(-1, 1)
    for _ in range(tries):
        cand = q + d
        if is_psd_certified(np.block([[XL, col], [col.T, np.array([[cand]])]])):
            return cand
        d *= 8.0
    return math.inf
