"""Solver-free LipSDP-NSR (l2, plain networks): first-order minimisation of the certified rho over the multipliers.

With ``S = P = 0`` the l2 LipSDP-NSR SDP of :mod:`lipbound.global_bounds.nsr` is the chain

    rho I - k_1^2 W_0^T T_1 W_0 >= 0,   T_k - k_{k+1}^2 W_k^T T_{k+1} W_k >= 0 (k = 1..L-1),   T_L - W_L^T W_L >= 0

(``k_j`` the Lipschitz factor ``kappa`` of activation ``j``). Every ``T_k`` carries a free positive scale, so for fixed
multipliers the smallest feasible rho is a PRODUCT of generalised eigenvalues, one per link:

    rho(T) = prod_k kappa_k^2 * prod_{k=0}^{L} ||T_{k+1}^{1/2} W_k T_k^{-1/2}||_2^2        (T_0 = T_{L+1} = I).

A multiplier ``T = blkdiag_J(lambda_J I + gamma_J 1 1^T)`` has the eigenvalues ``lambda_J`` (on ``1_J^perp``) and
``mu_J = lambda_J + |J| gamma_J`` (on ``1_J``), so every positive definite multiplier is ``lambda_J = exp(a_J)``,
``mu_J = exp(b_J)`` and ``T^p = blkdiag_J(lambda_J^p (I - P_J) + mu_J^p P_J)`` (``P_J = 1 1^T / |J|``) is applied
to a matrix in ``O(n m)`` -- no factorisation, no domain constraint. Householder / entrywise multipliers have
``mu_J = lambda_J`` (no ``b``). ``log rho`` is minimised over ``(a, b)`` in torch float64 with L-BFGS
(:func:`lipbound.global_bounds.lipsdp_fast._lbfgs`), each ``||.||_2^2`` smoothed by a log-sum-exp of the eigenvalues
of the (smaller) Gram matrix with decreasing temperature, starting from ``T_k = I`` (the product of norms).

Nothing computed here is reported as a bound: :func:`certify_chain` rebuilds the chain backwards from the final
multipliers with the certified ``min_scale`` / Rump-shifted Cholesky checks of :mod:`lipbound.global_bounds.certify`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lipbound.global_bounds.certify import max_eig_certified, min_scale
from lipbound.global_bounds.certify import positive_definite_multiplier as _pd
from lipbound.global_bounds.certify import sandwich_upper as _sandwich
from lipbound.global_bounds.lipsdp_fast import _lbfgs

Struct = tuple[np.ndarray, bool, float]  # (group id per feature, has_gamma, kappa), see nsr.multiplier_structure


class _Layer:
    """Group bookkeeping of one multiplier ``T`` (features ``n``, groups ``ng``)."""

    def __init__(self, gid: np.ndarray, has_gamma: bool) -> None:
        self.gid = torch.from_numpy(np.asarray(gid, dtype=np.int64))
        self.ng = int(gid.max()) + 1
        self.size = torch.bincount(self.gid, minlength=self.ng).to(torch.float64)
        # groups of one feature: the 1 1^T term is the identity there, gamma adds nothing
        self.has_gamma = bool(has_gamma) and bool((self.size > 1).any())
        self.nvar = 2 * self.ng if self.has_gamma else self.ng

    def lam_mu(self, th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = torch.exp(th[: self.ng])
        return lam, (torch.exp(th[self.ng :]) if self.has_gamma else lam)

    def apply(self, x: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor, p: float) -> torch.Tensor:
        """``T^p x`` along dim 0 of ``x`` (``n x m``)."""
        lp = lam.pow(p)
        out = lp[self.gid][:, None] * x
        if not self.has_gamma:
            return out
        mean = torch.zeros(self.ng, x.shape[1], dtype=x.dtype).index_add(0, self.gid, x) / self.size[:, None]
        return out + (mu.pow(p) - lp)[self.gid][:, None] * mean[self.gid]


def link_matrices(Ws: list[torch.Tensor], layers: list[_Layer], thetas: list[torch.Tensor]) -> list[torch.Tensor]:
    """``M_k = T_{k+1}^{1/2} W_k T_k^{-1/2}`` for ``k = 0..L`` (``T_0 = T_{L+1} = I``)."""
    lm = [lay.lam_mu(th) for lay, th in zip(layers, thetas, strict=True)]
    out = []
    for k, W in enumerate(Ws):
        M = W
        if k > 0:  # right factor T_k^{-1/2}: apply to W^T along its rows
            M = layers[k - 1].apply(M.T, *lm[k - 1], -0.5).T
        if k < len(layers):
            M = layers[k].apply(M, *lm[k], 0.5)
        out.append(M)
    return out


class _Objective:
    """``theta -> sum_k log(smoothed ||M_k||_2^2)`` and its gradient (``log rho`` without the kappa factors)."""

    def __init__(self, Ws: list[np.ndarray], structs: list[Struct]) -> None:
        self.Ws = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64)) for w in Ws]
        self.layers = [_Layer(gid, hg) for gid, hg, _ in structs]
        self.sizes = [lay.nvar for lay in self.layers]
        self.mu = 1e-2
        self.evals = 0

    def split(self, theta: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(theta, self.sizes))

    def __call__(self, theta: torch.Tensor, grad: bool = True) -> tuple[float, torch.Tensor | None]:
        self.evals += 1
        th = theta.detach().clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            f = th.new_zeros(())
            for M in link_matrices(self.Ws, self.layers, self.split(th)):
                G = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
                e = torch.linalg.eigvalsh(0.5 * (G + G.T))
                top = e[-1].detach()
                if not torch.isfinite(top) or top <= 0:
                    return math.inf, None
                t = self.mu * top
                f = f + torch.log(top + t * torch.logsumexp((e - top) / t, 0))
            if not torch.isfinite(f):
                return math.inf, None
            if not grad:
                return float(f.detach()), None
            (g,) = torch.autograd.grad(f, th)
        return float(f.detach()), g

    def multipliers(self, theta: torch.Tensor) -> list[np.ndarray]:
        """Dense ``T_k`` (float64) of the parameters."""
        out = []
        for lay, th in zip(self.layers, self.split(theta.detach()), strict=True):
            lam, mu = lay.lam_mu(th)
            out.append(lay.apply(torch.eye(lay.gid.numel(), dtype=torch.float64), lam, mu, 1.0).numpy())
        return [0.5 * (T + T.T) for T in out]


def theta_from_multipliers(structs: list[Struct], Ts: list[np.ndarray], floor: float = 1e-6) -> np.ndarray | None:
    """Log-parameters of given (e.g. SCS) multipliers, eigenvalues clipped to ``floor * max``; ``None`` if unusable."""
    parts = []
    for (gid, hg, _), T in zip(structs, Ts, strict=True):
        lay = _Layer(gid, hg)
        g = lay.gid.numpy()
        d = np.diag(T)
        ng = lay.ng
        size = lay.size.numpy()
        # T = diag(lambda[gid]) + gamma[gid] 1 1^T per group: lambda = diagonal - (off-diagonal within the group)
        same = g[:, None] == g[None, :]
        off = np.where(same & ~np.eye(len(g), dtype=bool), T, 0.0)
        gam = np.zeros(ng)
        np.add.at(gam, g, off.sum(1))
        gam = np.where(size > 1, gam / np.maximum(size * (size - 1), 1), 0.0)
        lam = np.zeros(ng)
        np.add.at(lam, g, d)
        lam = lam / size - gam
        mu = lam + size * gam
        top = max(float(np.max(lam)), float(np.max(mu)), 0.0)
        if not math.isfinite(top) or top <= 0:
            return None
        lam, mu = np.maximum(lam, floor * top), np.maximum(mu, floor * top)
        parts.append(np.log(lam))
        if lay.has_gamma:
            parts.append(np.log(mu))
    return np.concatenate(parts)


def first_order_multipliers(
    Ws: list[np.ndarray],
    structs: list[Struct],
    time_budget: float | None = None,
    start: np.ndarray | None = None,
    iters: int = 200,
    mus: tuple[float, ...] = (1e-2, 2e-3, 4e-4, 1e-4),
) -> tuple[list[np.ndarray], dict]:
    """Minimise ``rho(T)`` (module doc); returns ``(dense multipliers T_k, info)`` -- UNcertified."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small dense eigenproblems: one thread was faster on the 2-core CPU (see lipsdp_fast)
    try:
        t0 = time.perf_counter()
        deadline = t0 + (time_budget if time_budget else math.inf)
        obj = _Objective(Ws, structs)
        logk = sum(2 * math.log(s[2]) for s in structs)
        theta = torch.zeros(sum(obj.sizes), dtype=torch.float64)
        info: dict = {"warm_start": "T_k = I (product of norms)", "trace": []}
        f0, _ = obj(theta, grad=False)
        info["start_rho"] = math.exp(f0 + logk)
        if start is not None:
            cand = torch.from_numpy(np.asarray(start, dtype=np.float64))
            fc, _ = obj(cand, grad=False)
            if fc < f0:
                theta, info["warm_start"] = cand, "given multipliers"
        f = math.inf
        for mu in mus:
            obj.mu = mu
            f, g = obj(theta)
            if g is None:
                break
            theta, f, g = _lbfgs(obj, theta, f, g, iters, deadline)
            info["trace"].append((mu, obj.evals, math.exp(f + logk), time.perf_counter() - t0))
        info.update(
            evals=obj.evals,
            rho=math.exp(f + logk) if math.isfinite(f) else math.inf,
            seconds=time.perf_counter() - t0,
            timed_out=time.perf_counter() > deadline,
        )
        return obj.multipliers(theta), info
    finally:
        torch.set_num_threads(threads)


def certify_chain(Ws: list[np.ndarray], Ts: list[np.ndarray], kappas: list[float]) -> tuple[float, list[np.ndarray]]:
    """Certified ``rho`` for the plain l2 chain with multipliers ``Ts`` (each scaled freely).

    Returns ``(rho, Xs)``: ``Xs[k] = c_k T_k`` (c_k > 0, ``T_k`` made safely positive definite) satisfy, in exact
    arithmetic, ``rho I - k_1^2 W_0^T X_1 W_0 >= 0``, ``X_k - k_{k+1}^2 W_k^T X_{k+1} W_k >= 0``,
    ``X_L - W_L^T W_L >= 0`` (each step proven by a shifted Cholesky after rounding margins).
    """
    with _one_blas_thread():
        return _certify_chain(Ws, Ts, kappas)


def _one_blas_thread():
    """Single-threaded BLAS for the certification: on the shared 2-core CPU, 2 OpenBLAS threads made the dense
    Cholesky/eigh calls 50-70x slower (16 s vs 0.24 s for a 2 x 512 chain)."""
    return threadpool_limits(1)


def _certify_chain(Ws, Ts, kappas):
    L = len(Ts)
    Xs: list[np.ndarray] = [np.zeros(0)] * L
    WL = Ws[L]
    R = _sandwich(WL, np.eye(WL.shape[0]), 1.0)
    for k in range(L - 1, -1, -1):
        T = _pd(Ts[k])
        t = min_scale(T, R)
        if not math.isfinite(t):  # unusable multiplier: T = I is always valid
            T = np.eye(T.shape[0])
            t = min_scale(T, R)
        Xs[k] = t * T
        R = _sandwich(Ws[k], T, t * kappas[k] ** 2)
    return max_eig_certified(R), Xs
