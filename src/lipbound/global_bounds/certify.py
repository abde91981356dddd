"""Float64 certification of solver output.

Solvers return approximately feasible multipliers. Nothing they report is trusted: from the multipliers alone we
compute a value for which the linear matrix inequality provably holds and report that.

Positive definiteness is verified with a floating-point Cholesky factorisation of a shifted matrix (Rump's
criterion): if Cholesky of ``A - tau I`` succeeds in IEEE double precision with
``tau >= (n + 1) u / (1 - 2 (n + 1) u) * trace(|diag A|) + (2 n + 2) eta``, where ``u = 2^-53`` and ``eta`` is
the smallest normal number, then ``A`` is positive definite. We use a shift a few times larger than that, and
additionally cover the rounding made when *forming* ``A`` by an absolute term ``4 n u ||A||_F``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

U = 2.0**-53
TINY = np.finfo(np.float64).tiny


def rump_shift(A: np.ndarray) -> float:
    """Shift ``tau`` such that a successful float64 Cholesky of ``A - tau I`` proves ``A`` (as formed) PSD, plus a
    margin for the rounding made when forming ``A`` from its factors."""
    n = A.shape[0]
    alpha = (n + 1) * U / (1 - 2 * (n + 1) * U)
    trace = float(np.abs(np.diag(A)).sum())
    return 4.0 * alpha * trace + 4.0 * n * U * float(np.linalg.norm(A)) + (2 * n + 2) * TINY * 4


def positive_definite_multiplier(T: np.ndarray) -> np.ndarray:
    """Make a multiplier safely positive definite (``lambda_J += delta`` keeps it a valid multiplier)."""
    d = 1e-9 * max(float(np.abs(T).max()), 1e-300)
    return T + d * np.eye(T.shape[0])


def sandwich_upper(W: np.ndarray, T: np.ndarray, coef: float) -> np.ndarray:
    """``coef W^T T W`` plus a diagonal term covering its floating-point rounding (so the result dominates it)."""
    P = coef * (W.T @ T @ W)
    err = 2 * (W.shape[0] + T.shape[0] + 4) * U * coef * float(np.linalg.norm(np.abs(W).T @ np.abs(T) @ np.abs(W)))
    return 0.5 * (P + P.T) + err * np.eye(P.shape[0])


def is_psd_certified(A: np.ndarray) -> bool:
    """True only if ``A`` (symmetrised) is proven positive semidefinite by a shifted Cholesky in float64."""
    A = 0.5 * (A + A.T)
    if not np.all(np.isfinite(A)):
        return False
    tau = rump_shift(A)
    try:
        np.linalg.cholesky(A - tau * np.eye(A.shape[0]))
    except np.linalg.LinAlgError:
        return False
    return True


def min_scale(B: np.ndarray, A: np.ndarray, max_tries: int = 60) -> float:
    """Smallest certified ``s >= 0`` with ``s B - A`` PSD (``B`` positive definite); ``inf`` if none is found.

    ``s`` starts at the largest generalised eigenvalue ``lambda_max(A, B)`` and is raised until the shifted Cholesky
    test proves ``s B - A >= 0``.
    """
    A = 0.5 * (A + A.T)
    B = 0.5 * (B + B.T)
    try:
        top = float(sla.eigh(A, B, eigvals_only=True, subset_by_index=[A.shape[0] - 1, A.shape[0] - 1])[0])
    except (np.linalg.LinAlgError, ValueError):
        return float("inf")
    s = max(top, 0.0)
    scale = max(float(np.linalg.norm(A)) / max(float(np.linalg.norm(B)), TINY), TINY)
    step = 1e-12 * scale
    for _ in range(max_tries):
        cand = s * (1 + 1e-12) + step
        if is_psd_certified(cand * B - A):
            return cand
        step *= 4.0
    return float("inf")


def max_eig_certified(A: np.ndarray) -> float:
    """Certified upper bound on ``lambda_max(A)``: the smallest ``r`` found with ``r I - A`` proven PSD."""
    return min_scale(np.eye(A.shape[0]), A)


def round_up(x: float, k: int = 4) -> float:
    """``x`` moved ``k`` ulps towards +inf (covers the rounding of a few float operations on ``x``)."""
    for _ in range(k):
        x = float(np.nextafter(x, np.inf))
    return x


def certified_product(values: list[float]) -> float:
    """An upper bound on the exact product of non-negative floats (each multiplication rounded up)."""
    out = 1.0
    for v in values:
        out = round_up(out * float(v), 1)
    return out


def certified_sqrt(x: float) -> float:
    """An upper bound on ``sqrt(x)`` for ``x >= 0``."""
    return round_up(float(np.sqrt(max(x, 0.0))), 2)


SOLVERS = ("scs", "clarabel", "mosek")


def available_solvers() -> list[str]:
    """Names of the SDP solvers usable through cvxpy on this machine."""
    import cvxpy as cp

    inst = set(cp.installed_solvers())
    return [s for s in SOLVERS if s.upper() in inst]


def solve_problem(prob, solver: str | None = None, time_budget: float | None = None, eps: float = 1e-5) -> dict:
    """Solve a cvxpy problem with ``solver`` ("scs" default, "clarabel", "mosek"); never raises on solver failure.

    Returns ``{"solver", "status", "solve_seconds"}`` (status ``"error: ..."`` if the solver failed). The
    variables' values are whatever the solver returned: they are only *candidates* for certification.
    """
    import time

    import cvxpy as cp

    from lipbound.errors import InvalidInputError

    name = (solver or "scs").lower()
    if name not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if name not in available_solvers():
        raise InvalidInputError(f"solver {name!r} is not installed (available: {available_solvers()})")
    opts: dict = {}
    if name == "scs":
        opts = {"eps_abs": eps, "eps_rel": eps, "max_iters": 20000}
        if time_budget:
            opts["time_limit_secs"] = float(time_budget)
    elif name == "clarabel" and time_budget:
        opts = {"time_limit": float(time_budget)}
    elif name == "mosek" and time_budget:
        opts = {"mosek_params": {"MSK_DPAR_OPTIMIZER_MAX_TIME": float(time_budget)}}
    t0 = time.perf_counter()
    try:
        prob.solve(solver=name.upper(), **opts)
        status = str(prob.status)
    except (cp.SolverError, ArithmeticError, ValueError) as e:
        status = f"error: {type(e).__name__}: {e}"
    return {"solver": name, "status": status, "solve_seconds": time.perf_counter() - t0}


def _gamma(n: int) -> float:
    return n * U / (1 - n * U)


def dominating_factor(W: np.ndarray, rel: float = 1e-9) -> np.ndarray | None:
    """A square ``R`` (``m x m``, ``W`` is ``m x n``) with ``R R^T >= W W^T`` PROVEN (real arithmetic), or ``None``.

    Then ``W = R C`` with ``||C||_2 <= 1`` (Douglas' lemma), so a network reading its input only through ``W x``
    has an l2 Lipschitz constant at most that of the same network with ``R`` in place of ``W``: the input
    dimension drops from ``n`` to ``m`` without the rounding of an SVD entering the bound. ``R`` is the Cholesky
    factor of ``fl(W W^T) + tau I`` with ``tau = rel * ||W||_F^2`` (a relative inflation of about ``rel / 2`` in
    the norms), and ``R R^T - W W^T >= 0`` is checked by a shifted Cholesky after subtracting an upper bound of
    the Frobenius norm of the rounding made in forming both Gram matrices (``gamma_k |A| |A|^T`` entrywise).
    """
    m, n = W.shape
    if m == 0:
        return np.zeros((0, 0))
    W = np.asarray(W, dtype=np.float64)
    G = W @ W.T
    tau = rel * float(np.sum(W * W)) + TINY
    try:
        R = np.linalg.cholesky(0.5 * (G + G.T) + tau * np.eye(m))
    except np.linalg.LinAlgError:
        return None
    aW, aR = np.abs(W), np.abs(R)
    err = _gamma(n + 2) * (aW @ aW.T) + _gamma(m + 2) * (aR @ aR.T)  # |fl(W W^T) - W W^T| + |fl(R R^T) - R R^T|
    D = R @ R.T - G
    shift = float(np.linalg.norm(err)) * (1 + _gamma(m * m + 2)) + _gamma(3) * float(np.abs(D).max()) * m
    return R if is_psd_certified(D - shift * np.eye(m)) else None
