"""Probabilistic guarantee behind the Stability measure, with a certified Lipschitz constant.

Setting. m(x) = sigmoid(t(x)) is the base model's favourable-class probability, t = z_1 - z_0 for two logits (or the
single logit). R_hat = (1/k) sum_i [m(X_i) - |m(x') - m(X_i)|], X_i ~ N(x', sigma^2 I_d) i.i.d. (the "absdev"
Stability of :func:`lipbound.counterfactuals.stability`), and mu(x') = E R_hat its expectation (mu <= m(x') by the
triangle inequality).

Assumption (A) on a changed model M (the "naturally-occurring model change" made explicit): M(x') >= mu(x'), i.e.
the changed model's probability at x' is not below the base model's expected Stability at x'. Because
mu = E m(X) - E|m(x') - m(X)|, (A) allows M(x') to fall below m(x') by as much as the mean absolute variation of m
in the Gaussian neighbourhood (minus any upward bias of E m(X)). Nothing about M is computed here; (A) is the
hypothesis under which the number below means what it says.

Statement. Let M satisfy (A) and be independent of the samples X_1..X_k. For a fixed eps > 0 chosen before the
samples are drawn,

    P( M(x') < R_hat - eps ) <= p,

the probability being over the k Monte-Carlo samples. With eps = tau - 1/2 (tau the Stability threshold, fixed in
advance) this gives P( R_hat >= tau and M(x') < 1/2 ) <= p: a counterfactual accepted with R_hat >= tau stays
valid for M with probability >= 1 - p.

Proof and the terms of p.
* gamma given (float): the caller asserts m is gamma-Lipschitz (l2) on all of R^d. Each summand
  X -> m(X) - |m(x') - m(X)| is then 2 gamma-Lipschitz, R_hat is (2 gamma sigma / sqrt(k))-Lipschitz in the
  k*d standard normals, and Gaussian concentration (Tsirelson-Ibragimov-Sudakov) gives
  P(R_hat - mu >= eps) <= exp(-k eps^2 / (8 gamma^2 sigma^2)); (A) turns this into the statement.
* gamma = "certified", global: gamma_G = Lip_2(t) / 4 (sigmoid' <= 1/4) with Lip_2(t) from
  :func:`lipbound.global_lipschitz` on the logit difference. p_G = exp(-k eps^2 / (8 gamma_G^2 sigma^2)).
* gamma = "certified", local on the box B_r = x' + [-r, r]^d (not intersected with the data box): with
  [t_lo, t_hi] an enclosure of t on B_r (from t(x') and the certified l_inf / l2 local constants of t),
  gamma_r = max_{s in [t_lo, t_hi]} sigmoid'(s) * Lip_2(t, B_r) >= sup_{y in B_r} ||grad m(y)||_2, certified by
  :func:`lipbound.local_lipschitz`. m_B = m o Pi_B (Pi_B the coordinate clamp, 1-Lipschitz) is gamma_r-Lipschitz
  on R^d. On the event that all k samples fall in B_r, R_hat(m) = R_hat(m_B); that event fails with probability
  <= k p_out, p_out = 1 - (1 - 2 Phi(-r / sigma))^d (exact). Each summand lies in [-1, 1] so
  |mu - mu_B| <= 2 p_out. Hence
      p_r = k p_out + exp(-k (eps - 2 p_out)_+^2 / (8 gamma_r^2 sigma^2)).
* Every p_r and p_G is a valid bound (none depends on the samples), so the reported p is their minimum over a
  fixed grid of radii r = z sigma and the global bound.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError

#: box half-widths r = z * sigma tried for the local certificate (each is a valid bound; the smallest p wins)
RADII_Z = (4.0, 5.0, 6.0)


def outside_mass(x: Tensor, lower: Tensor, upper: Tensor, sigma: float) -> Tensor:
    """p_out = P(X not in [lower, upper]) for X ~ N(x, sigma^2 I), per row of ``x`` (B, d), exact per coordinate."""
    normal = torch.distributions.Normal(0.0, 1.0)
    inside = normal.cdf((upper - x) / sigma) - normal.cdf((lower - x) / sigma)
    return 1.0 - inside.clamp(0.0, 1.0).prod(-1)


def cube_outside_mass(d: int, z: float) -> float:
    """p_out for the cube x' + [-z sigma, z sigma]^d: 1 - (1 - 2 Phi(-z))^d, computed without cancellation."""
    tail = math.erfc(z / math.sqrt(2.0))  # = 2 Phi(-z)
    return -math.expm1(d * math.log1p(-tail))


def concentration_tail(k: int, eps: float, gamma: float | Tensor, sigma: float) -> float | Tensor:
    """exp(-k eps^2 / (8 gamma^2 sigma^2)): bound on P(R_hat - E R_hat >= eps) for a gamma-Lipschitz m."""
    if isinstance(gamma, Tensor):
        return torch.exp(-k * eps**2 / (8.0 * gamma.clamp(min=1e-300) ** 2 * sigma**2))
    return math.exp(-k * eps**2 / (8.0 * max(gamma, 1e-300) ** 2 * sigma**2))


def max_sigmoid_slope(t_lo: Tensor, t_hi: Tensor) -> Tensor:
    """max of sigmoid'(s) = sigmoid(s)(1 - sigmoid(s)) over s in [t_lo, t_hi] (1/4 if the interval contains 0)."""
    closest = torch.where((t_lo <= 0) & (t_hi >= 0), torch.zeros_like(t_lo), torch.minimum(t_lo.abs(), t_hi.abs()))
    s = torch.sigmoid(closest)
    return s * (1 - s)


@dataclass
class GuaranteeResult:
    """Output of :func:`stability_guarantee`; tensors are ``(B,)``.

    ``probability``: p, the bound on P(M(x') < R_hat - eps) under assumption (A) (1 when trivial).
    ``applies``: R_hat - eps >= 1/2, i.e. the statement says "M(x') >= 1/2 with probability >= 1 - p".
    ``valid_probability``: 1 - p where it applies, else 0 (nothing is claimed).
    ``gamma``: the Lipschitz constant behind the winning bound; ``source``: "local", "global" or "given";
    ``radius``: r of the winning box (0 for global/given); ``tail`` and ``outside``: the two terms of p.
    """

    probability: Tensor
    applies: Tensor
    valid_probability: Tensor
    gamma: Tensor
    source: list[str]
    radius: Tensor
    tail: Tensor
    outside: Tensor
    eps: float
    sigma: float
    k: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def nontrivial(self) -> Tensor:
        """Rows where the guarantee applies and p < 1."""
        return self.applies & (self.probability < 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "probability": self.probability.tolist(),
            "applies": self.applies.tolist(),
            "valid_probability": self.valid_probability.tolist(),
            "gamma": self.gamma.tolist(),
            "source": self.source,
            "radius": self.radius.tolist(),
            "tail": self.tail.tolist(),
            "outside": self.outside.tolist(),
            "eps": self.eps,
            "sigma": self.sigma,
            "k": self.k,
            "seconds": self.seconds,
            "details": self.details,
        }


def logit_difference(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """t(x) (B,) and the output direction c for :func:`lipbound.local_lipschitz` (e_1 - e_0, or None for 1 logit)."""
    p = next(model.parameters(), None)
    with torch.no_grad():
        z = model(x.to(p.dtype) if p is not None and p.is_floating_point() else x)
    if z.ndim == 1:
        z = z.unsqueeze(-1)
    if z.shape[-1] == 2:
        return (z[..., 1] - z[..., 0]).to(torch.float64), torch.tensor([-1.0, 1.0], dtype=torch.float64)
    if z.shape[-1] == 1:
        return z[..., 0].to(torch.float64), None
    raise InvalidInputError(
        f"model returns {z.shape[-1]} outputs; expected 2 logits (class 1 favourable) or 1 favourable-class logit"
    )


_GLOBAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    return tuple(
        (tuple(p.shape), float(p.detach().double().sum()), float(p.detach().double().abs().sum()))
        for p in model.parameters()
    )


def global_gamma(
    model: nn.Module, n_outputs: int, time_budget: float | None = 10.0, dim: int | None = None
) -> tuple[float, str]:
    """Certified global l2 constant of m = sigmoid(t): Lip_2(t) / 4, Lip_2(t) from :func:`lipbound.global_lipschitz`.

    Cached per model object (and its weights' fingerprint): repeated guarantees for one model solve once.
    """
    key = (n_outputs, _fingerprint(model))
    hit = _GLOBAL_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    out = _global_gamma(model, n_outputs, time_budget, dim)
    _GLOBAL_CACHE[model] = (key, out)
    return out


def _global_gamma(model: nn.Module, n_outputs: int, time_budget: float | None, dim: int | None) -> tuple[float, str]:
    from lipbound.global_bounds import global_lipschitz

    shape = (dim,) if dim is not None else None
    if n_outputs == 2 and isinstance(model, torch.jit.ScriptModule):
        # no head can be appended to a TorchScript archive: |t(x) - t(y)| <= sqrt(2) ||f(x) - f(y)||_2
        res = global_lipschitz(model, norm=2, method="auto", input_shape=shape, time_budget=time_budget)
        return math.sqrt(2.0) * res.upper / 4.0, res.method + " (sqrt(2) * Lip(f))"
    head = model
    if n_outputs == 2:
        diff = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            diff.weight.copy_(torch.tensor([[-1.0, 1.0]]))
        head = nn.Sequential(model, diff.to(next(model.parameters()).dtype))
    res = global_lipschitz(head, norm=2, method="auto", input_shape=shape, time_budget=time_budget)
    return res.upper / 4.0, res.method


def local_gamma(model: nn.Module, x: Tensor, t: Tensor, c: Tensor | None, radii: Tensor) -> Tensor:
    """gamma_r for every row of ``x`` (B, d) and radius (Z,): certified sup of ||grad m||_2 on x + [-r, r]^d; (B, Z)."""
    from lipbound.local import local_lipschitz

    b, d = x.shape
    if isinstance(model, torch.jit.ScriptModule):
        from lipbound.graph import trace

        model = trace(model, (d,))
    nz = radii.numel()
    xs = x.detach().to(torch.float64).repeat_interleave(nz, 0)
    rs = radii.to(torch.float64).repeat(b)
    l2 = local_lipschitz(model, xs, eps=rs, norm=2, c=c, lower=False).upper.reshape(b, nz)
    l1 = local_lipschitz(model, xs, eps=rs, norm="inf", c=c, lower=False).upper.reshape(b, nz)
    spread = torch.minimum(l1 * radii, l2 * radii * math.sqrt(d))  # |t(y) - t(x')| on the box
    slope = max_sigmoid_slope(t.unsqueeze(1) - spread, t.unsqueeze(1) + spread)
    return slope * l2


def stability_guarantee(
    model: nn.Module,
    x: Tensor,
    R: Tensor,
    sigma: float = 0.05,
    k: int = 1000,
    eps: float = 0.25,
    gamma: str | float = "certified",
    radii_z: tuple[float, ...] = RADII_Z,
    use_global: bool = True,
    only_applicable: bool = True,
) -> GuaranteeResult:
    """Bound p on P(M(x') < R_hat - eps) for changed models M satisfying (A); see the module docstring.

    Args:
        model: base model (two logits, class 1 favourable, or one favourable-class logit).
        x: points x' (B, d); R: their absdev Stability R_hat (B,) computed with the same ``sigma`` and ``k``.
        eps: margin fixed in advance (tau - 1/2 for a Stability threshold tau).
        gamma: "certified" (lipbound local/global bounds) or a float the caller guarantees is a global l2
            Lipschitz constant of m.
        only_applicable: skip the local certificate on rows with R - eps < 1/2 (nothing is claimed there; their
            local gamma is reported as inf).
    """
    t0 = time.perf_counter()
    if x.ndim != 2:
        raise InvalidInputError(f"x must be a batch (B, d), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidInputError("x contains NaN or inf features")
    R = torch.as_tensor(R, dtype=torch.float64).detach().reshape(-1).cpu()
    if R.numel() != x.shape[0]:
        raise InvalidInputError(f"R has {R.numel()} values for {x.shape[0]} points")
    if not sigma > 0 or k < 1 or not eps > 0:
        raise InvalidInputError(f"need sigma > 0, k >= 1 and eps > 0, got sigma={sigma}, k={k}, eps={eps}")
    b, d = x.shape
    applies = R - eps >= 0.5
    details: dict[str, Any] = {}
    if not isinstance(gamma, str):
        if not float(gamma) > 0:
            raise InvalidInputError(f"gamma must be 'certified' or a positive float, got {gamma!r}")
        g = torch.full((b,), float(gamma), dtype=torch.float64)
        tail = concentration_tail(k, eps, g, sigma)
        p, source, radius, outside = tail, ["given"] * b, torch.zeros(b, dtype=torch.float64), torch.zeros(b)
    elif gamma != "certified":
        raise InvalidInputError(f"gamma must be 'certified' or a positive float, got {gamma!r}")
    else:
        t, c = logit_difference(model, x)
        t = t.cpu()
        radii = torch.tensor([z * sigma for z in radii_z], dtype=torch.float64)
        g_loc = torch.full((b, len(radii_z)), math.inf, dtype=torch.float64)  # rows that do not apply: not computed
        rows_local = applies.nonzero().flatten() if only_applicable else torch.arange(b)
        if rows_local.numel():
            g_loc[rows_local] = local_gamma(model, x[rows_local], t[rows_local], c, radii).cpu()  # (B, Z)
        p_out = torch.tensor([cube_outside_mass(d, z) for z in radii_z], dtype=torch.float64)
        eff = (eps - 2 * p_out).clamp(min=0)
        tails = torch.exp(-k * eff**2 / (8.0 * g_loc.clamp(min=1e-300) ** 2 * sigma**2))
        p_loc = (k * p_out + tails).clamp(max=1.0)
        best = p_loc.argmin(1)
        rows = torch.arange(b)
        p, g, tail = p_loc[rows, best], g_loc[rows, best], tails[rows, best]
        outside, radius, source = k * p_out[best], radii[best], ["local"] * b
        details["gamma_local_per_radius"] = g_loc.tolist()
        details["radii"] = radii.tolist()
        if use_global:
            g_glob, method = global_gamma(model, 2 if c is not None else 1, dim=d)
            p_glob = concentration_tail(k, eps, g_glob, sigma)
            details["gamma_global"], details["global_method"] = g_glob, method
            better = torch.full((b,), p_glob, dtype=torch.float64) < p
            p = torch.where(better, torch.full_like(p, p_glob), p)
            g = torch.where(better, torch.full_like(g, g_glob), g)
            tail = torch.where(better, torch.full_like(tail, p_glob), tail)
            outside = torch.where(better, torch.zeros_like(outside), outside)
            radius = torch.where(better, torch.zeros_like(radius), radius)
            source = ["global" if bt else "local" for bt in better.tolist()]
    p = torch.as_tensor(p, dtype=torch.float64).clamp(max=1.0)
    return GuaranteeResult(
        probability=p,
        applies=applies,
        valid_probability=torch.where(applies, 1 - p, torch.zeros_like(p)),
        gamma=torch.as_tensor(g, dtype=torch.float64),
        source=source,
        radius=radius,
        tail=torch.as_tensor(tail, dtype=torch.float64),
        outside=torch.as_tensor(outside, dtype=torch.float64),
        eps=eps,
        sigma=sigma,
        k=k,
        seconds=time.perf_counter() - t0,
        details=details,
    )
