"""Certified fast global Lipschitz baselines on a :class:`~lipbound.global_bounds.network.LayeredNetwork`.

The network is ``h_0 = x``, ``h_{k+1} = s_k(W_k h_k + b_k)`` (or ``h_k + s_k(W_k h_k + b_k)`` for a residual block),
``f(x) = W_L h_L + b_L``. Every matrix norm below is a CERTIFIED upper bound (:mod:`lipbound.linalg`);
a power-iteration value never enters a bound.

* ``product``: ``L <= prod_k a_k ||W_k||`` (residual block: ``1 + a_k ||W_k||``), ``a_k`` the Lipschitz constant of
  ``s_k`` in the chosen norm: ``max(|alpha|, |beta|)`` for slope-restricted activations (ReLU/tanh 1, sigmoid 1/4,
  LeakyReLU(a) ``max(1, |a|)``); 1 for MaxMin/GroupSort (sorting is non-expansive in every l_p); Householder: 1 in
  l2, ``max(1, |cos 2 theta| + |sin 2 theta|)`` over its pairs in l_inf (a continuous piecewise-linear map is
  Lipschitz with the largest operator norm of its pieces, here ``I`` and the reflection).
* ``liplt``: for slope-restricted ``s_l`` with slopes in ``[alpha_l, beta_l]`` write ``s_l(z) = c_l z + psi_l(z)``,
  ``c_l = (alpha_l + beta_l) / 2`` and ``psi_l`` ``h_l = (beta_l - alpha_l) / 2``-Lipschitz (ReLU: ``z/2 + |z|/2``).
  Unrolling ``z_i = c_{i-1} W_i z_{i-1} + W_i psi_{i-1}(z_{i-1})`` gives, with ``m_i`` the Lipschitz constant of
  ``z_i``: ``m_0 = ||W_0||``,
  ``m_i = sum_{j=0}^{i-1} (prod_{l=i-j}^{i-1} |c_l|) ||W_i ... W_{i-j}|| h_{i-1-j} m_{i-1-j}
  + (prod_{l=0}^{i-1} |c_l|) ||W_i ... W_0||`` and ``L <= m_L`` (for ReLU the reference recursion with ``2^-(j+1)``).
  The norm of a product is certified on the dense product when affordable, else by the best split
  ``||A B|| <= ||A|| ||B||`` (dynamic programming), so LipLT never exceeds the product bound.
* ``eclipse-fast`` (l2, slopes in ``[0, beta_i]``): from the quadratic constraint ``dv^T (beta dz - dv) >= 0``,
  ``dx^T X dx >= dv^T (l I - l^2 K) dv`` with ``K = (beta/2)^2 W X^{-1} W^T`` for every ``l > 0``. Starting from
  ``X_0 = I`` and choosing ``l_i = 1 / (2 lambda_max(K_i))``, ``X_i = l_i I - l_i^2 K_i`` (shrunk by a bound of the
  rounding error of ``K_i``, so that ``X_i`` is below the exact matrix), and
  ``L^2 <= lambda_max(W_L X_L^{-1} W_L^T)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lipbound.errors import InvalidModelError, SolverError, UnsupportedOperatorError
from lipbound.global_bounds.network import DenseSegment
from lipbound.global_bounds.segments import frobenius_upper
from lipbound.linalg import _U, matrix_norm_upper, parse_norm

_BIG_GRAM = 2048  # smaller side above which a dense Gram iteration gets fewer iterations
_MAX_PRODUCT_ENTRIES = 16_000_000  # dense products of weight chains larger than this are not formed


@dataclass
class BoundResult:
    """A certified global Lipschitz upper bound ``upper`` computed by ``method``; ``details`` explains it."""

    upper: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- building blocks


def _where(net, k: int) -> str:
    origins = getattr(net, "origins", None) or []
    return origins[k] if k < len(origins) and origins[k] else f"layer {k}"


def layer_norm_upper(net, k: int, norm: int | str = 2) -> float:
    """Certified ``||W_k||`` of the exact segment in l2 or l_inf (:meth:`AffineSegment.norm_upper
    <lipbound.global_bounds.segments.AffineSegment.norm_upper>`: a lone convolution by its operator-norm bound,
    small segments by their dense matrix plus its rounding bound, large ones structured, never densified)."""
    return float(net.segments[k].norm_upper(parse_norm(norm)))


def activation_lipschitz(act, norm: int | str = 2, where: str = "") -> float:
    """Lipschitz constant of one activation in l2 or l_inf (see module docstring)."""
    nrm = parse_norm(norm)
    if act.slope is not None:
        return max(abs(float(act.slope[0])), abs(float(act.slope[1])))
    if act.kind in ("maxmin", "groupsort"):
        return 1.0
    if act.kind == "householder":
        if nrm == "2":
            return 1.0
        theta = getattr(act.module, "theta", None)
        if theta is None:
            raise InvalidModelError(f"Householder activation at {where!r} has no module/theta to bound in l_inf")
        t = theta.detach().to(torch.float64)
        piece = (torch.cos(2 * t).abs() + torch.sin(2 * t).abs()).max() if t.numel() else torch.tensor(1.0)
        return max(1.0, float(piece) * (1 + 8 * _U))
    raise UnsupportedOperatorError(act.kind, where, hint="no Lipschitz constant known for this activation")


def _check_weights(net) -> None:
    if len(net.segments) != len(net.activations) + 1:
        raise InvalidModelError(
            f"layered network needs one more weight than activations, got {len(net.segments)} and "
            f"{len(net.activations)}"
        )
    for k, seg in enumerate(net.segments):
        if isinstance(seg, DenseSegment) and not torch.isfinite(seg.w).all():
            raise InvalidModelError(f"non-finite weights in {_where(net, k)!r}")


def _deadline(time_budget: float | None) -> float:
    return math.inf if time_budget is None else time.perf_counter() + float(time_budget)


def _check_time(deadline: float, method: str, time_budget: float | None, what: str) -> None:
    if time.perf_counter() > deadline:
        raise SolverError(f"{method} exceeded time_budget={time_budget} s ({what})")


# ------------------------------------------------------------------------------------- rounding of dense weights


def dense_perturbation(net, norm: int | str = 2) -> float:
    """A bound ``eta`` such that ``L(exact weights) <= L_method(W_hat) + eta`` for every method run on the dense
    matrices ``W_hat_k`` (``|W_hat_k - W_k| <= E_k`` entrywise, :meth:`AffineSegment.dense`).

    Every method bounds ``||F_L ... F_0||`` over all Jacobians of its activation class (``F_k = D_k W_k``,
    ``I + D_k W_k`` for a residual block, ``F_L = W_L``; ``D_k`` a slope-restricted diagonal, a permutation or a
    reflection, ``||D_k|| <= a_k``), so it bounds them for ``W_hat`` too. With ``F_k = F_hat_k + G_k``,
    ``||F_hat_k|| <= n_k`` and ``||G_k|| <= a_k ||E_k|| = g_k``, expanding the product gives
    ``||prod F_k|| <= ||prod F_hat_k|| + prod (n_k + g_k) - prod n_k`` (each term with at least one ``G``
    bounded by norms); ``||E_k||`` is ``||E_k||_F`` (l2) or its largest row sum (l_inf). Zero when every
    segment is exact (hand-given weights)."""
    nrm = parse_norm(norm)
    if not any(getattr(s, "rel", 0.0) for s in net.segments):
        return 0.0
    lips = [activation_lipschitz(a, nrm, _where(net, k)) for k, a in enumerate(net.activations)] + [1.0]
    base, wide = 1.0, 1.0
    for k, seg in enumerate(net.segments):
        _w, e = seg.dense()
        n_w = layer_norm_upper(net, k, nrm)
        err = float(e.sum(dim=1).max()) if nrm == "inf" and e.numel() else frobenius_upper(e) if nrm == "2" else 0.0
        err *= 1 + 8 * _U
        n_k, g_k = lips[k] * n_w, lips[k] * err
        if k < len(net.activations) and net.residual[k]:
            n_k += 1.0
        base *= n_k
        wide *= n_k + g_k
    return max(wide * (1 + 16 * _U) ** len(net.segments) - base * (1 - 16 * _U) ** len(net.segments), 0.0)


# -------------------------------------------------------------------------------------------------- product


def product_bound(net, norm: int | str = 2, time_budget: float | None = None) -> BoundResult:
    """``prod_k a_k ||W_k||`` with certified layer norms (residual blocks ``1 + a_k ||W_k||``).

    ``time_budget``: seconds; exceeding it between layers raises :class:`SolverError` (no partial product is a
    bound)."""
    t0 = time.perf_counter()
    deadline = _deadline(time_budget)
    nrm = parse_norm(norm)
    _check_weights(net)
    norms = []
    for k in range(len(net.segments)):
        _check_time(deadline, "product", time_budget, f"before layer {k}")
        norms.append(layer_norm_upper(net, k, nrm))
    lips = [activation_lipschitz(a, nrm, _where(net, k)) for k, a in enumerate(net.activations)]
    up = 1.0 + 4 * _U
    bound = norms[-1]
    for k, (n, a) in enumerate(zip(norms[:-1], lips, strict=True)):
        factor = 1.0 + a * n if net.residual[k] else a * n
        bound = bound * factor * up * up
    return BoundResult(
        float(bound),
        "product",
        {"norm": nrm, "layer_norms": norms, "activation_lipschitz": lips, "seconds": time.perf_counter() - t0},
    )


# ---------------------------------------------------------------------------------------------------- LipLT


def _slopes(net, method: str) -> list[tuple[float, float]]:
    out = []
    for k, act in enumerate(net.activations):
        if net.residual[k]:
            raise UnsupportedOperatorError(
                "residual block", _where(net, k), hint=f"{method} handles plain feed-forward networks only"
            )
        if act.slope is None:
            raise UnsupportedOperatorError(
                act.kind, _where(net, k), hint=f"{method} needs slope-restricted activations (use lipsdp-nsr)"
            )
        out.append((float(act.slope[0]), float(act.slope[1])))
    return out


def chain_product(net, a: int, b: int, limit: int = _MAX_PRODUCT_ENTRIES) -> tuple[Tensor, Tensor] | None:
    """``(P_hat, E)`` with ``P = W_b ... W_a`` (dense ``(n_out_b, n_in_a)``) and ``|P_hat - P| <= E`` entrywise, or
    ``None`` if it or an intermediate would exceed ``limit`` entries.

    Formed from its smaller end without densifying any segment: the identity on the input side pushed through the
    segments' ``apply`` (or on the output side through ``apply_t``, giving ``P^T``). Rounding: each segment's
    computed image of an inexact input is within ``rel_k`` (its relative bound) of the absolute chain, so
    ``|P_hat - P| <= (prod_k (1 + rel_k) - 1) |A_b| ... |A_a|`` (the absolute chain, evaluated alongside)."""
    segs = net.segments[a : b + 1]
    rows, cols = segs[-1].n_out, segs[0].n_in
    inner = max(s.n_out for s in segs)
    side = min(rows, cols)
    if rows * cols > limit or side * inner > limit:
        return None
    rel = 1.0
    for s in segs:
        rel *= 1 + max(float(getattr(s, "rel", 0.0)), _gamma_apply(s))
    rel = (rel - 1) * (1 + 16 * _U) + 16 * len(segs) * _U
    with torch.no_grad():
        if cols <= rows:
            x = torch.eye(cols, dtype=torch.float64)
            q = x
            for s in segs:
                x, q = s.apply(x), s.abs_apply(q)
            return x.T.contiguous(), (q.T * rel).contiguous()
        y = torch.eye(rows, dtype=torch.float64)
        q = y
        for s in reversed(segs):
            y, q = s.apply_t(y), s.abs_apply_t(q)
        return y, q * rel


def _gamma_apply(s) -> float:
    """Rounding of one application of segment ``s`` (a dense given matrix: ``gamma_n``, ``n`` its larger side)."""
    n = max(int(s.n_in), int(s.n_out)) + 2
    return n * _U / (1 - n * _U)


def segment_norms(
    net, norm: int | str = 2, dense_limit: int = _BIG_GRAM, deadline: float = math.inf
) -> dict[tuple[int, int], float]:
    """Certified ``||W_b W_{b-1} ... W_a||`` for all ``a <= b``: the dense product's certified norm plus its
    rounding bound when it is affordable (:func:`chain_product`; l2: smaller side ``<= dense_limit``), minimised
    over all splits ``||W_b..W_{k+1}|| ||W_k..W_a||``. Past ``deadline`` only splits are used (still certified)."""
    nrm = parse_norm(norm)
    n_w = len(net.segments)
    seg: dict[tuple[int, int], float] = {}
    for a in range(n_w):
        seg[(a, a)] = layer_norm_upper(net, a, nrm)
    for a in range(n_w):
        for b in range(a + 1, n_w):
            if time.perf_counter() > deadline:
                break
            if nrm == "2" and min(net.segments[b].n_out, net.segments[a].n_in) > dense_limit:
                continue
            pe = chain_product(net, a, b)
            if pe is None:
                break
            p, e = pe
            if nrm == "inf":
                seg[(a, b)] = (matrix_norm_upper(p, "inf") + float(e.sum(dim=1).max())) * (1 + 4 * _U)
            else:
                seg[(a, b)] = (matrix_norm_upper(p, 2) + frobenius_upper(e)) * (1 + 4 * _U)
    for length in range(1, n_w):
        for a in range(n_w - length):
            b = a + length
            split = min(seg[(k + 1, b)] * seg[(a, k)] for k in range(a, b)) * (1 + 4 * _U)
            seg[(a, b)] = min(seg.get((a, b), math.inf), split)
    return seg


def liplt_bound(
    net, norm: int | str = 2, dense_limit: int = _BIG_GRAM, time_budget: float | None = None
) -> BoundResult:
    """LipLT recursion (module docstring) for slope-restricted activations, l2 or l_inf.

    ``time_budget``: products of weight chains are formed while at most half of it is used (after that the
    certified splits ``||A B|| <= ||A|| ||B||``); a layer norm that cannot be computed in it raises
    :class:`SolverError`."""
    t0 = time.perf_counter()
    deadline = _deadline(time_budget)
    half = _deadline(None if time_budget is None else time_budget / 2)
    nrm = parse_norm(norm)
    _check_weights(net)
    slopes = _slopes(net, "liplt")
    c = [abs(a + b) / 2 for a, b in slopes]
    h = [(b - a) / 2 for a, b in slopes]
    seg = segment_norms(net, nrm, dense_limit, half)
    _check_time(deadline, "liplt", time_budget, "layer norms")
    up = 1.0 + 8 * _U
    m = [seg[(0, 0)]]
    for i in range(1, len(net.segments)):
        total = 0.0
        coef = 1.0  # prod_{l=i-j}^{i-1} |c_l|
        for j in range(i):
            total += coef * seg[(i - j, i)] * h[i - 1 - j] * m[i - 1 - j]
            coef *= c[i - 1 - j]
        total += coef * seg[(0, i)]
        m.append(total * up ** (i + 2))
    return BoundResult(
        float(m[-1]),
        "liplt",
        {
            "norm": nrm,
            "m": m,
            "product": math.prod(seg[(k, k)] for k in range(len(net.segments))),
            "seconds": time.perf_counter() - t0,
        },
    )


# --------------------------------------------------------------------------------------------- ECLipsE-Fast


def _gram_error(n: int, k_mat: Tensor, cond: float) -> float:
    """Generous bound of the float64 error of ``K = Y^T Y``, ``Y = chol(X)^{-1} W^T`` (``cond`` bounds cond(X))."""
    return 64.0 * (n + 8) * _U * float(torch.linalg.matrix_norm(k_mat, "fro")) * max(cond, 1.0)


def _lambda_max_estimate(k_mat: Tensor) -> float:
    """An estimate of ``lambda_max`` of a PSD matrix (only used to choose ``l``; soundness does not rely on it)."""
    if k_mat.shape[0] <= 1024:
        return float(torch.linalg.eigvalsh(k_mat).max())
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(k_mat.shape[0], 8, generator=gen, dtype=k_mat.dtype).to(k_mat.device)
    for _ in range(60):
        v, _ = torch.linalg.qr(k_mat @ v)
    return float(torch.linalg.eigvalsh(v.T @ k_mat @ v).max())


def _next_x(k_mat: Tensor, cond_prev: float, n_contract: int) -> tuple[Tensor, float]:
    """``X = l I - l^2 (K + eps I)`` with ``lambda_min(X) >= l / 4`` checked by Cholesky (so cond(X) <= 4)."""
    eps = _gram_error(n_contract, k_mat, cond_prev)
    l = 1.0 / (2 * max(_lambda_max_estimate(k_mat), 1e-300) * (1 + 1e-9))
    eye = torch.eye(k_mat.shape[0], dtype=k_mat.dtype, device=k_mat.device)
    for _ in range(60):
        x = l * eye - (l * l) * (k_mat + eps * eye)
        x = (x + x.T) / 2
        # lambda_min(X) >= l/4 (up to a rounding margin far below l/4) iff this Cholesky succeeds
        margin = (l / 4) * (1 - 1e-6) - 4 * k_mat.shape[0] ** 2 * _U * l
        _chol, info = torch.linalg.cholesky_ex(x - margin * eye)
        if int(info) == 0:
            return x, l
        l *= 0.8
    raise InvalidModelError("eclipse-fast: could not keep X positive definite (ill-conditioned weights)")


def eclipse_width_error(net, max_dim: int = 4096) -> str | None:
    """Why ECLipsE-Fast cannot run on ``net`` (a hidden width above ``max_dim`` needs dense width^2 matrices)."""
    dims = [int(s.n_out) for s in net.segments[:-1]]
    if max(dims, default=0) > max_dim:
        k = max(range(len(dims)), key=lambda i: dims[i])
        n = dims[k]
        return (
            f"eclipse-fast: hidden width {n} after {_where(net, k)!r} needs dense {n} x {n} float64 matrices "
            f"({3 * n * n * 8 / 2**30:.1f} GiB for X, K and a Cholesky factor; max_dim={max_dim})"
        )
    return None


def eclipse_fast_bound(net, max_dim: int = 4096, time_budget: float | None = None) -> BoundResult:
    """ECLipsE-Fast (module docstring): l2, slope-restricted activations with slopes in ``[0, beta]``.

    Runs on the dense matrices (the rounding of intake-built ones is added by :func:`dense_perturbation` in
    :func:`~lipbound.global_bounds.api.global_lipschitz`). A width above ``max_dim`` is refused before
    allocation (:func:`eclipse_width_error`)."""
    t0 = time.perf_counter()
    deadline = _deadline(time_budget)
    _check_weights(net)
    slopes = _slopes(net, "eclipse-fast")
    for k, (a, _b) in enumerate(slopes):
        if a < 0:
            raise UnsupportedOperatorError(
                net.activations[k].kind, _where(net, k), hint="eclipse-fast needs slopes in [0, beta]"
            )
    why = eclipse_width_error(net, max_dim)
    if why is not None:
        raise InvalidModelError(why)
    w = [x.to(torch.float64) for x in net.weights]
    ls: list[float] = []
    chol = None  # Cholesky factor of X (None: X = I)
    cond = 1.0  # bound of cond(X): 1 for X = I, then 4 (checked in _next_x)
    for i, (_a, beta) in enumerate(slopes):
        _check_time(deadline, "eclipse-fast", time_budget, f"layer {i}")
        y = w[i].T if chol is None else torch.linalg.solve_triangular(chol, w[i].T, upper=False)
        k_mat = (beta / 2) ** 2 * (y.T @ y)
        k_mat = (k_mat + k_mat.T) / 2
        if float(k_mat.abs().max()) == 0.0:
            return BoundResult(0.0, "eclipse-fast", {"note": f"the output of layer {i} is constant", "seconds": 0.0})
        x, l = _next_x(k_mat, cond, y.shape[0])
        cond = 4.0
        chol = torch.linalg.cholesky(x)
        ls.append(l)
    y = w[-1].T if chol is None else torch.linalg.solve_triangular(chol, w[-1].T, upper=False)
    # L^2 <= lambda_max(W_L X^{-1} W_L^T) = ||Y||_2^2 up to the error of forming Y
    lam = matrix_norm_upper(y, 2) ** 2 * (1 + 4 * _U) + _gram_error(y.shape[0], y.T @ y, cond)
    return BoundResult(
        math.sqrt(lam) * (1 + 4 * _U),
        "eclipse-fast",
        {"l": ls, "seconds": time.perf_counter() - t0},
    )
