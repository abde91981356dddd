"""Rigorous emptiness proofs for ``{x : lo <= x <= hi, A x <= b}`` (Branch and Bound's domain pruning).

Farkas' lemma for a box: the set is empty if and only if some ``y >= 0`` has

    min_{lo <= x <= hi} (A^T y)^T x  >  y^T b,

because every point of the set satisfies ``(A^T y)^T x = y^T A x <= y^T b``. :func:`farkas_certifies` checks a
candidate ``y`` for the given float64 data in float64 arithmetic with an explicit bound on every rounding error
(Higham's standard model: ``|fl(sum_i p_i) - sum_i p_i| <= gamma_n sum_i |p_i|``, ``gamma_n = n u / (1 - n u)``,
``u = 2^-53``), and small systems that fail that test in exact rationals, so an accepted certificate proves
emptiness of the exact real set; the solver that proposed ``y`` is not trusted. :class:`EmptinessProver` asks
HiGHS (``highspy``) for candidates: the dual ray of an infeasible LP and, when there is none or it fails the
check, the row duals of the elastic LP
``min 1^T s  s.t.  A x - s <= b, s >= 0, lo <= x <= hi`` (whose optimal dual is a Farkas vector whenever the
optimum is positive). A domain is pruned only when a certificate passes; otherwise it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

U64 = 2.0**-53  # unit round-off of float64


def _gamma(n: int) -> float:
    """Higham's ``gamma_n`` for float64, doubled (covers the rounding of the error terms themselves)."""
    nu = n * U64
    return 2 * nu / (1 - nu) if nu < 0.5 else float("inf")


#: systems with at most this many coefficients are re-checked in exact rationals when the float64 test refuses
EXACT_MAX_ENTRIES = 256


def exact_farkas_value(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> Fraction:
    """``min_{lo <= x <= hi} (a^T y)^T x - y^T b`` in exact rational arithmetic (every float64 is a rational;
    negative ``y`` entries count as 0)."""
    r, n = a.shape
    yq = [Fraction(max(float(v), 0.0)) for v in y]
    total = Fraction(0)
    for i in range(n):
        g = sum((Fraction(float(a[k, i])) * yq[k] for k in range(r) if yq[k]), Fraction(0))
        total += min(g * Fraction(float(lo[i])), g * Fraction(float(hi[i])))
    return total - sum((Fraction(float(b[k])) * yq[k] for k in range(r) if yq[k]), Fraction(0))


def farkas_certifies(
    a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, y: np.ndarray, exact: bool = True
) -> bool:
    """Whether ``y`` (R,) proves ``{x in [lo, hi] : a x <= b}`` empty (``a`` (R, n), ``b`` (R,), ``lo, hi`` (n,)).

    Negative entries of ``y`` are replaced by 0 (any ``y >= 0`` is a candidate). With ``g = a^T y`` the exact
    quantity ``min_box g^T x - y^T b`` is bounded below in float64:

    * ``|fl(g_i) - g_i| <= e_i = gamma_{R+2} (|a|^T y)_i``, so ``min_{x_i} g_i x_i >= min(fl(g_i) lo_i, fl(g_i) hi_i)
      - e_i max(|lo_i|, |hi_i|)``;
    * the sum of the ``n`` terms ``t_i`` is within ``gamma_{n+2} sum |t_i|`` of its float value, and ``y^T b`` within
      ``gamma_{R+2} y^T |b|``;
    * the final subtractions are covered by a further ``8 u`` of the magnitudes involved.

    Accepts only when the lower bound is strictly positive; refuses non-finite data. When the float64 test refuses
    and ``exact`` is set, systems of at most :data:`EXACT_MAX_ENTRIES` coefficients are decided exactly
    (:func:`exact_farkas_value` ``> 0``): large cancelling coefficients can make the float64 error bound exceed a
    real certificate's margin.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, None)
    if a.ndim != 2 or b.shape != (a.shape[0],) or lo.shape != (a.shape[1],) or hi.shape != lo.shape:
        raise ValueError(f"shapes do not match: a {a.shape}, b {b.shape}, lo {lo.shape}, hi {hi.shape}")
    if y.shape != b.shape:
        raise ValueError(f"certificate has shape {y.shape}, expected {b.shape}")
    if not all(np.isfinite(t).all() for t in (a, b, lo, hi, y)) or not (lo <= hi).all():
        return False
    r, n = a.shape
    gr, gn = _gamma(r + 2), _gamma(n + 2)
    g = a.T @ y
    e = gr * (np.abs(a).T @ y) * (1 + gr)  # |fl(g) - g|, with the rounding of its own evaluation
    t = np.minimum(g * lo, g * hi)  # each product within u |t_i| (covered by gamma_{n+2})
    m = np.maximum(np.abs(lo), np.abs(hi))
    s = float(t.sum())
    mag = float(np.abs(t).sum())
    err_g = float((e * m).sum()) * (1 + gn)
    yb = float(y @ b)
    err_b = gr * float(y @ np.abs(b)) * (1 + gr)
    err_t = gn * mag * (1 + gn)
    value = s - err_t - err_g - yb - err_b
    slack = 8 * U64 * (abs(s) + err_t + err_g + abs(yb) + err_b) + 1e-300
    if np.isfinite(value) and value > slack:
        return True
    if exact and a.size <= EXACT_MAX_ENTRIES and y.any():
        return exact_farkas_value(a, b, lo, hi, y) > 0
    return False


@dataclass
class ProverStats:
    lps: int = 0  # feasibility LPs solved
    solver_infeasible: int = 0  # HiGHS said "infeasible"
    certified: int = 0  # emptiness proven by a checked certificate (the domains pruned)
    refused: int = 0  # HiGHS said infeasible but no candidate passed the check (domain kept)


class EmptinessProver:
    """HiGHS-backed emptiness test for small dense systems; one solver instance reused across calls."""

    def __init__(self) -> None:
        import highspy

        from lipbound.highs import new_highs

        self._hs = highspy
        self._h = new_highs(presolve="off")  # presolve-detected infeasibility comes without a dual ray
        self.stats = ProverStats()

    def _solve(self, cost, a, col_lo, col_hi, b):
        hs, h = self._hs, self._h
        r, n = a.shape
        lp = hs.HighsLp()
        lp.num_col_, lp.num_row_ = n, r
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, col_lo, col_hi
        lp.row_lower_, lp.row_upper_ = np.full(r, -hs.kHighsInf), b
        mat = lp.a_matrix_
        mat.format_ = hs.MatrixFormat.kRowwise
        mat.start_ = np.arange(0, r * n + 1, n, dtype=np.int32)
        mat.index_ = np.tile(np.arange(n, dtype=np.int32), r)
        mat.value_ = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
        h.clearModel()
        h.passModel(lp)
        h.run()
        return h.getModelStatus()

    def empty(self, a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
        """``True`` only when ``{x in [lo, hi] : a x <= b}`` is proven empty by a checked Farkas certificate."""
        hs, h = self._hs, self._h
        r, n = a.shape
        self.stats.lps += 1
        status = self._solve(np.zeros(n), a, lo, hi, b)
        if status != hs.HighsModelStatus.kInfeasible:
            return False
        self.stats.solver_infeasible += 1
        candidates = []
        _, has_ray, ray = h.getDualRay()
        if has_ray:
            ray = np.asarray(ray, dtype=np.float64)[:r]
            candidates += [ray, -ray]
        for y in candidates:
            if farkas_certifies(a, b, lo, hi, y):
                self.stats.certified += 1
                return True
        # elastic LP: columns (x, s), rows a x - s <= b; its optimal row duals form a Farkas vector
        ae = np.concatenate([a, -np.eye(r)], 1)
        cost = np.concatenate([np.zeros(n), np.ones(r)])
        status = self._solve(cost, ae, np.concatenate([lo, np.zeros(r)]), np.concatenate([hi, np.full(r, np.inf)]), b)
        if status == hs.HighsModelStatus.kOptimal:
            duals = np.asarray(h.getSolution().row_dual, dtype=np.float64)[:r]
            for y in (duals, -duals):
                if farkas_certifies(a, b, lo, hi, y):
                    self.stats.certified += 1
                    return True
        self.stats.refused += 1
        return False
