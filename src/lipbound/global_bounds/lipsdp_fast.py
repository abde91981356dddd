"""Solver-free LipSDP-Neuron / LipSDP-Layer: first-order minimisation of the certified rho over the multipliers.

For fixed multipliers ``T_k = diag(lambda_k)`` the LMI ``M(rho, T) >= 0`` of :mod:`lipbound.global_bounds.lipsdp`
holds iff its trailing block ``C`` (over ``dh_1..dh_L``) is positive definite and
``rho >= rho(lambda) = lambda_max(M[0,1] C^{-1} M[1,0] - M_0[0,0])`` (Schur complement, ``M_0`` = ``M`` at rho 0).
``C`` is block tridiagonal (a chain), so both are obtained by a backward block-Cholesky recursion in
``O(depth * width^3)``:

    D_L = M[L, L],   D_k = M[k, k] - M[k, k+1] D_{k+1}^{-1} M[k+1, k]   (k = L-1 .. 1),
    C > 0  <=>  every D_k > 0,   rho(lambda) = lambda_max(M[0, 1] D_1^{-1} M[1, 0] - M_0[0, 0]).

``rho(lambda)`` is convex in ``lambda`` (partial minimisation of a jointly convex problem) and is minimised here in
torch float64 over ``lambda = exp(theta)`` (positivity built in) with L-BFGS and a backtracking line search that
rejects steps leaving the domain (some ``D_k`` not positive definite). ``lambda_max`` is smoothed by a log-sum-exp
of the eigenvalues whose temperature is decreased in stages. Start: a feasible per-layer point built backwards
along the chain (each ``D_k >= lambda_k I``), optimised per layer first (that is LipSDP-Layer) and then per neuron.

Nothing computed here is reported as a bound: the caller certifies the final multipliers with
:func:`lipbound.global_bounds.lipsdp.certify_rho` (dense float64 Schur complement + Rump-shifted Cholesky check).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

Slopes = list[tuple]  # per hidden layer (alpha, beta): floats, or per-neuron vectors (numpy or torch)


def _nonzero(v) -> bool:
    return bool((v != 0).any()) if hasattr(v, "any") else v != 0


def _torch_slopes(slopes: Slopes) -> Slopes:
    """Per-neuron numpy slope vectors as float64 tensors (scalars are kept)."""
    conv = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64)) if np.ndim(v) else float(v)  # noqa: E731
    return [(conv(a), conv(b)) for a, b in slopes]


def _chain(Ws: list[torch.Tensor], lams: list[torch.Tensor], slopes: Slopes) -> torch.Tensor | None:
    """The Schur complement matrix whose ``lambda_max`` is ``rho(lambda)``; ``None`` if ``C`` is not PD."""
    L = len(Ws) - 1
    WL = Ws[L]
    D = torch.diag(2 * lams[L - 1]) - WL.T @ WL
    for k in range(L - 1, -1, -1):  # eliminate block k+1, form the Schur complement onto block k
        if not bool(torch.isfinite(D).all()):
            return None
        chol, info = torch.linalg.cholesky_ex(0.5 * (D + D.T))
        if int(info) != 0:
            return None
        a, b = slopes[k]
        W, lam = Ws[k], lams[k]
        Y = torch.linalg.solve_triangular(chol, ((a + b) * lam)[:, None] * W, upper=False)
        D = Y.T @ Y  # M[k, k+1] D_{k+1}^{-1} M[k+1, k]
        if _nonzero(a * b):
            D = D - 2 * (W.T * (a * b * lam)) @ W
        if k > 0:
            D = torch.diag(2 * lams[k - 1]) - D
    return 0.5 * (D + D.T)  # k = 0: D now holds M[0,1] D_1^{-1} M[1,0] - M_0[0,0]


def rho_of(Ws: list[np.ndarray], lams: list[np.ndarray], slopes: Slopes) -> float:
    """Uncertified ``rho(lambda)`` in float64 via the chain recursion (``inf`` outside the domain)."""
    with torch.no_grad():
        S = _chain(
            [torch.from_numpy(w) for w in Ws],
            [torch.from_numpy(np.asarray(l, float)) for l in lams],
            _torch_slopes(slopes),
        )
    return math.inf if S is None else float(torch.linalg.eigvalsh(S)[-1])


def feasible_start(Ws: list[np.ndarray], slopes: Slopes) -> list[np.ndarray]:
    """Per-layer multipliers built backwards along the chain so that every ``D_k >= lambda_k I`` (strictly PD)."""
    L = len(Ws) - 1
    dims = [w.shape[0] for w in Ws[:-1]]
    lams: list[np.ndarray] = [np.zeros(0)] * L
    K = Ws[L].T @ Ws[L]
    for k in range(L - 1, -1, -1):
        top = float(np.linalg.eigvalsh(0.5 * (K + K.T))[-1])
        lam = max(top, 1e-3 * max(float(np.abs(K).max()), 1e-12), 1e-12)
        lams[k] = np.full(dims[k], lam)
        D = 2 * lam * np.eye(dims[k]) - K
        if k == 0:
            break
        a, b = (np.asarray(v, dtype=np.float64) for v in slopes[k])
        W = Ws[k]
        G = lam * np.reshape(a + b, (-1, 1)) * W  # -M[k+1, k] with T_{k+1} = lam I
        ab = np.reshape(a * b, (-1, 1))
        K = G.T @ np.linalg.solve(D, G) - (2 * lam * (W.T @ (ab * W)) if np.any(ab != 0) else 0.0)
    return lams


class _Objective:
    """``theta -> log(smoothed lambda_max)`` with its gradient; ``inf`` outside the domain."""

    def __init__(self, Ws: list[np.ndarray], slopes: Slopes, dims: list[int], per_neuron: bool) -> None:
        self.Ws = [torch.from_numpy(np.ascontiguousarray(w)) for w in Ws]
        self.slopes = _torch_slopes(slopes)
        self.dims = dims
        self.per_neuron = per_neuron
        self.mu = 1e-2
        self.evals = 0

    def lams(self, theta: torch.Tensor) -> list[torch.Tensor]:
        lam = torch.exp(theta)
        if self.per_neuron:
            return list(torch.split(lam, self.dims))
        return [lam[k].expand(d) for k, d in enumerate(self.dims)]

    def __call__(self, theta: torch.Tensor, grad: bool = True) -> tuple[float, torch.Tensor | None]:
        self.evals += 1
        th = theta.detach().clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            lams = self.lams(th)
            if not all(bool(torch.isfinite(l).all()) for l in lams):
                return math.inf, None  # multipliers overflowed: outside the domain we search
            S = _chain(self.Ws, lams, self.slopes)
            if S is None or not bool(torch.isfinite(S).all()):
                return math.inf, None
            e = torch.linalg.eigvalsh(S)
            top = e[-1].detach()
            if not torch.isfinite(top) or top <= 0:
                return (math.inf if not torch.isfinite(top) else 0.0), None
            t = self.mu * top
            f = torch.log(top + t * torch.logsumexp((e - top) / t, 0))
            if not grad:
                return float(f.detach()), None
            (g,) = torch.autograd.grad(f, th)
        return float(f.detach()), g


def _lbfgs(obj: _Objective, x: torch.Tensor, f: float, g: torch.Tensor, iters: int, deadline: float, m: int = 10):
    """L-BFGS with Armijo backtracking (steps into the infeasible region count as failed). Returns ``(x, f, g)``."""
    S: list[torch.Tensor] = []
    Yl: list[torch.Tensor] = []
    for _ in range(iters):
        if time.perf_counter() > deadline:
            break
        q = g.clone()
        alphas = []
        for s, y in zip(reversed(S), reversed(Yl), strict=True):
            a = (s @ q) / (y @ s)
            alphas.append(a)
            q -= a * y
        if S:
            q *= (S[-1] @ Yl[-1]) / (Yl[-1] @ Yl[-1])
        else:
            q /= max(float(g.abs().max()), 1e-12)  # first step: at most one unit of log-multiplier
        for (s, y), a in zip(zip(S, Yl, strict=True), reversed(alphas), strict=True):
            b = (y @ q) / (y @ s)
            q += (a - b) * s
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            S.clear()
            Yl.clear()
            d = -g / max(float(g.abs().max()), 1e-12)
            slope = float(g @ d)
        step, accepted = 1.0, False
        for _ in range(30):
            xn = x + step * d
            fn, gn = obj(xn)
            if gn is not None and fn <= f + 1e-4 * step * slope:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        s, y = xn - x, gn - g
        if float(s @ y) > 1e-12 * float(s @ s):
            S.append(s)
            Yl.append(y)
            if len(S) > m:
                S.pop(0)
                Yl.pop(0)
        improved = f - fn
        x, f, g = xn, fn, gn
        if improved < 1e-9:
            break
    return x, f, g


def first_order_multipliers(
    Ws: list[np.ndarray],
    slopes: Slopes,
    per_neuron: bool = True,
    time_budget: float | None = None,
    start: list[np.ndarray] | None = None,
    iters: int = 150,
    mus: tuple[float, ...] = (1e-2, 2e-3, 4e-4, 1e-4),
) -> tuple[list[np.ndarray], dict]:
    """Minimise ``rho(lambda)`` over the multipliers; returns ``(multipliers, info)`` (multipliers UNcertified).

    ``start``: optional multipliers to warm-start from (e.g. a solver's, must be > 0 and feasible to be used).
    Without it the per-layer problem (LipSDP-Layer) is solved first from :func:`feasible_start`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these small dense factorisations ran 3-10x SLOWER with 2 threads on the 2-core CPU
    try:
        return _first_order(Ws, slopes, per_neuron, time_budget, start, iters, mus)
    finally:
        torch.set_num_threads(threads)


def _first_order(Ws, slopes, per_neuron, time_budget, start, iters, mus):
    t0 = time.perf_counter()
    deadline = t0 + (time_budget if time_budget else math.inf)
    dims = [w.shape[0] for w in Ws[:-1]]
    info: dict = {"stages": []}

    def run(obj: _Objective, theta: torch.Tensor, share: float) -> tuple[torch.Tensor, float]:
        f = math.inf
        stage_deadline = time.perf_counter() + share * max(deadline - time.perf_counter(), 0.0)
        for mu in mus:
            obj.mu = mu
            f, g = obj(theta)
            if g is None:
                break
            theta, f, g = _lbfgs(obj, theta, f, g, iters, min(stage_deadline, deadline))
            info.setdefault("trace", []).append((mu, obj.evals, math.exp(f), time.perf_counter() - t0))
        return theta, f

    theta_n = None
    if start is not None and all(np.all(np.asarray(l) > 0) for l in start):
        if per_neuron:
            cand = torch.from_numpy(np.log(np.concatenate([np.asarray(l, float) for l in start])))
        else:
            cand = torch.tensor([math.log(float(np.mean(l))) for l in start], dtype=torch.float64)
        if _Objective(Ws, slopes, dims, per_neuron)(cand, grad=False)[0] < math.inf:
            theta_n = cand
            info["warm_start"] = "given multipliers"
    if theta_n is None:
        info["warm_start"] = "feasible per-layer chain start"
        init = feasible_start(Ws, slopes)
        obj = _Objective(Ws, slopes, dims, False)
        theta = torch.tensor([math.log(float(l[0])) for l in init], dtype=torch.float64)
        theta, f = run(obj, theta, 0.3 if per_neuron else 1.0)
        info["stages"].append({"stage": "layer", "evals": obj.evals, "rho": math.exp(f)})
        lams = [l.detach().numpy().copy() for l in obj.lams(theta)]
        if not per_neuron:
            info["seconds"] = time.perf_counter() - t0
            info["timed_out"] = time.perf_counter() > deadline
            return lams, info
        theta_n = torch.from_numpy(np.log(np.concatenate(lams)))
    obj = _Objective(Ws, slopes, dims, per_neuron)
    theta_n, f = run(obj, theta_n, 1.0)
    info["stages"].append({"stage": "neuron" if per_neuron else "layer", "evals": obj.evals, "rho": math.exp(f)})
    info["seconds"] = time.perf_counter() - t0
    info["timed_out"] = time.perf_counter() > deadline
    return [l.detach().numpy().copy() for l in obj.lams(theta_n)], info
