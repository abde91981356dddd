"""The PSD certificate's rounding shift (``rump_shift``) is load-bearing (issue 7 item 5).

A plain float64 Cholesky can succeed on a symmetric matrix that is NOT positive semidefinite in exact arithmetic:
its rounding errors (relative ~1e-16) hide a negative eigenvalue below that resolution. The matrices here are
float64 matrices ``A`` proven indefinite EXACTLY (rational LDL^T of ``A``'s float entries and a rational witness
``v`` with ``v^T A v < 0``) that ``np.linalg.cholesky`` accepts; :func:`is_psd_certified` must refuse every one.
With ``rump_shift`` returning 0 (``scripts/mutation.py --only rump-shift-zero``) it accepts them.

Construction (a seeded search, deterministic): ``M = Q diag(lam) Q^T`` in exact rationals with a Householder
reflection ``Q = I - 2 w w^T / (w^T w)`` (``w`` integer: ``Q`` is exactly orthogonal), eigenvalues in
``[1/4, 1]`` and one at ``-1e-18``, far below float64 resolution relative to ``||M|| ~ 1``; ``A = fl(M)``
entrywise. Rounding moves the small eigenvalue by ~1e-16 either way, so only some draws stay indefinite: each
candidate is re-checked exactly on the ROUNDED matrix, and kept if Cholesky also accepts it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipbound.global_bounds.certify import is_psd_certified

N = 5
WANTED = 3


def exact_ldl(a: np.ndarray) -> tuple[list[list[Fraction]], list[Fraction]]:
    """Rational ``A = L D L^T`` of the float entries of ``a``, stopped at the first non-positive pivot."""
    n = a.shape[0]
    m = [[Fraction(float(x)) for x in row] for row in a]
    lo = [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]
    d: list[Fraction] = []
    for k in range(n):
        dk = m[k][k] - sum(lo[k][j] ** 2 * d[j] for j in range(k))
        d.append(dk)
        if dk <= 0:
            break
        for i in range(k + 1, n):
            lo[i][k] = (m[i][k] - sum(lo[i][j] * lo[k][j] * d[j] for j in range(k))) / dk
    return lo, d


def witness(lo: list[list[Fraction]], k: int, n: int) -> list[Fraction]:
    """``v`` with ``L^T v = e_k`` on the leading ``k + 1`` coordinates (zero after): ``v^T A v = d_k``."""
    v = [Fraction(0)] * n
    v[k] = Fraction(1)
    for i in range(k - 1, -1, -1):
        v[i] = -sum(lo[j][i] * v[j] for j in range(i + 1, k + 1))
    return v


def quad(a: np.ndarray, v: list[Fraction]) -> Fraction:
    """``v^T A v`` in exact arithmetic on the float entries of ``a``."""
    n = a.shape[0]
    return sum(v[i] * Fraction(float(a[i, j])) * v[j] for i in range(n) for j in range(n))


def hidden_indefinite(n: int, wanted: int, seed: int = 0) -> list[tuple[np.ndarray, list[Fraction]]]:
    """``wanted`` float64 matrices that plain Cholesky accepts, each with an exact witness of indefiniteness."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(500):
        w = [Fraction(int(x)) for x in rng.integers(-9, 10, n)]
        ww = sum(x * x for x in w)
        if ww == 0:
            continue
        q = [[Fraction(int(i == j)) - 2 * w[i] * w[j] / ww for j in range(n)] for i in range(n)]
        lam = [Fraction(int(rng.integers(1, 5)), 4) for _ in range(n - 1)] + [Fraction(-1, 10**18)]
        m = [[sum(q[i][k] * lam[k] * q[j][k] for k in range(n)) for j in range(n)] for i in range(n)]
        a = np.array([[float(m[i][j]) for j in range(n)] for i in range(n)])
        lo, d = exact_ldl(a)
        if d[-1] >= 0:  # rounding made it PSD (or singular): not a counterexample
            continue
        try:
            np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            continue
        out.append((a, witness(lo, len(d) - 1, n)))
        if len(out) == wanted:
            break
    return out


def test_hidden_indefinite_matrices_are_refused():
    cases = hidden_indefinite(N, WANTED)
    assert len(cases) == WANTED, "the seeded search found too few counterexamples"
    for a, v in cases:
        assert np.array_equal(a, a.T)
        assert quad(a, v) < 0  # exact proof: A (as stored in float64) is not positive semidefinite
        np.linalg.cholesky(a)  # ... yet plain float64 Cholesky accepts it
        assert float(np.linalg.norm(a, 2)) <= 1.5  # ||A|| ~ 1: the negative part is below float resolution
        assert not is_psd_certified(a)
        assert not is_psd_certified(a.copy(order="F"))


def test_a_clearly_pd_neighbour_is_certified():
    """The shift is small: the same matrices plus 1e-12 I (safely PD) are certified, so the refusal above is
    about the hidden negative eigenvalue, not a certificate that refuses everything."""
    for a, _ in hidden_indefinite(N, WANTED):
        assert is_psd_certified(a + 1e-12 * np.eye(N))


def _exact_psd(M) -> bool:
    """Exact (rational) test that a symmetric matrix of Fractions is positive semidefinite: LDL^T pivots."""
    n = len(M)
    A = [row[:] for row in M]
    for k in range(n):
        if A[k][k] < 0:
            return False
        if A[k][k] == 0:
            if any(A[k][j] != 0 for j in range(k + 1, n)):
                return False
            continue
        for i in range(k + 1, n):
            f = A[i][k] / A[k][k]
            for j in range(k + 1, n):
                A[i][j] -= f * A[k][j]
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dominating_factor_is_proven_in_exact_arithmetic(seed):
    """The LipSDP input reduction replaces W (m x n) by R with R R^T >= W W^T: checked here with Fractions, on a
    well-conditioned, a rank-deficient and a badly scaled W."""
    from fractions import Fraction

    from lipbound.global_bounds.certify import dominating_factor

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((5, 40))
    if seed == 1:
        W[4] = W[0] + W[1]  # rank deficient: W W^T singular
    if seed == 2:
        W *= np.logspace(-6, 6, 40)  # columns over twelve orders of magnitude
    R = dominating_factor(W)
    assert R is not None and R.shape == (5, 5)
    Wf = [[Fraction(float(v)) for v in row] for row in W]
    Rf = [[Fraction(float(v)) for v in row] for row in R]
    D = [
        [sum(Rf[i][k] * Rf[j][k] for k in range(5)) - sum(Wf[i][k] * Wf[j][k] for k in range(40)) for j in range(5)]
        for i in range(5)
    ]
    assert _exact_psd(D)
    # and it is tight: the norms grow by about 1e-9 relative only
    assert np.linalg.norm(R, 2) <= np.linalg.norm(W, 2) * (1 + 1e-8)


def test_dominating_factor_refuses_a_non_dominating_candidate(monkeypatch):
    """If the Cholesky factor does not dominate (here: inflation switched off and the factor shrunk), no R."""
    from lipbound.global_bounds import certify

    W = np.random.default_rng(3).standard_normal((4, 12))
    real = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda A: real(A) * (1 - 1e-6) if A.shape == (4, 4) else real(A))
    assert certify.dominating_factor(W, rel=0.0) is None
