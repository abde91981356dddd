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
