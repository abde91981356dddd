"""Counterfactual generators, batched over factuals x (B, d): closest CF, Wachter, nearest neighbour, T-Rex:I/NN.

Every generator returns a :class:`CounterfactualResult` whose ``x_cf`` is a legal record of the
:class:`~lipbound.counterfactuals.space.FeatureSpace` (inside the data range, immutable features equal to the
factual's, one-hot blocks and integer features discretised) and whose ``valid`` says, for that returned point,
whether the base model m accepts it (m(x_cf) >= 1/2). ``stability`` is the absdev Stability R_{k,sigma^2}(x_cf, m)
with fresh seeded noise (comparable across methods).

* closest_counterfactual (CC): min ||x' - x||_p  s.t. t(x') >= kappa (t the favourable logit margin), by the
  penalty c * max(0, kappa - t(x')) + ||x' - x||_p (p = 1, or p = 2 squared) minimised with Adam, c tuned per row
  by bisection over a few rounds (the elastic-net/C&W scheme); the cheapest valid discretised iterate is kept.
  Losses are evaluated on the discretised record with straight-through gradients, so the penalty stays active
  until the legal record (not its continuous relaxation) is accepted.
* wachter: lambda (m(x') - 1)^2 + ||x' - x||_1 with lambda multiplied by 10 per round; the first valid iterate.
* nearest_neighbour (NN): the closest (l2) training point accepted by m, immutable features copied from x.
* trex_iterative (T-Rex:I): normalised gradient ascent on the Monte-Carlo Stability (noise fixed within the call),
  x' <- x' + eta grad R / ||grad R||_2, projected to the l2 ball of ``radius`` around the start and to the space; a
  discretised iterate replaces the current best only if m accepts it and its Stability (same noise) is not lower,
  so the returned point never has lower Stability than the start; stop when R >= tau or after ``max_steps``.
* trex_nn (T-Rex:NN): the training points accepted by m in order of distance to x, the first with R > tau;
  otherwise the plain nearest neighbour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.counterfactuals.space import FeatureSpace
from lipbound.counterfactuals.stability import favourable_probability, stability
from lipbound.errors import InvalidInputError

METHODS = ("closest", "wachter", "nn", "trex-i", "trex-nn")


@dataclass
class CounterfactualResult:
    """``x`` factuals (B, d), ``x_cf`` (B, d), ``valid`` (B,) under m, ``stability`` (B,), wall ``seconds``."""

    method: str
    x: Tensor
    x_cf: Tensor
    valid: Tensor
    stability: Tensor
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[int]:
        """Rows for which no counterfactual valid under m was found."""
        return (~self.valid).nonzero().flatten().tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "x": self.x.tolist(),
            "x_cf": self.x_cf.tolist(),
            "valid": self.valid.tolist(),
            "stability": self.stability.tolist(),
            "seconds": self.seconds,
            "failed": self.failed,
            "details": self.details,
        }


def probability(model: nn.Module, x: Tensor) -> Tensor:
    """m(x) (B,), evaluated in the model's parameter dtype and returned in ``x``'s dtype."""
    p = next(model.parameters(), None)
    xm = x.to(p.dtype) if p is not None and p.is_floating_point() else x
    return favourable_probability(model, xm).to(x.dtype)


def margin(model: nn.Module, x: Tensor) -> Tensor:
    """Favourable logit margin t(x) = logit(m(x)) (z_1 - z_0 for two logits), differentiable."""
    m = probability(model, x).clamp(1e-12, 1 - 1e-12)
    return torch.log(m) - torch.log1p(-m)


def _check_tau(tau: float) -> None:
    if not 0.0 < float(tau) < 1.0:
        raise InvalidInputError(f"tau must lie in (0, 1) (a Stability threshold on a probability), got {tau}")


def _check_factuals(model: nn.Module, x: Tensor, space: FeatureSpace) -> None:
    space.check(x, "factuals")
    with torch.no_grad():
        accepted = (probability(model, x) >= 0.5).nonzero().flatten().tolist()
    if accepted:
        raise InvalidInputError(
            f"factual rows {accepted[:10]}{' ...' if len(accepted) > 10 else ''} are already favourable "
            "(m(x) >= 1/2): a counterfactual is only defined for rejected points"
        )


def _space(space: FeatureSpace | None, x: Tensor) -> FeatureSpace:
    return space if space is not None else FeatureSpace.unit_box(x.shape[1])


def _dist(a: Tensor, b: Tensor, norm: int) -> Tensor:
    return (a - b).abs().sum(-1) if norm == 1 else (a - b).norm(dim=-1)


#: points per Monte-Carlo Stability call (memory ~ points * k * d floats)
STABILITY_CHUNK = 128


def stability_chunked(model: nn.Module, pts: Tensor, sigma: float, k: int, generator: torch.Generator) -> Tensor:
    """:func:`stability` of ``pts`` (n, d) without gradients, ``STABILITY_CHUNK`` points per call."""
    mdt = _mdtype(model)
    with torch.no_grad():
        parts = [
            stability(model, pts[i : i + STABILITY_CHUNK].to(mdt), sigma=sigma, k=k, generator=generator)
            for i in range(0, pts.shape[0], STABILITY_CHUNK)
        ]
    return torch.cat(parts).to(pts.dtype) if parts else pts.new_zeros(0)


def _finish(method, model, x, x_cf, t0, sigma, k, seed, details) -> CounterfactualResult:
    with torch.no_grad():
        valid = probability(model, x_cf) >= 0.5
    r = stability_chunked(model, x_cf, sigma, k, torch.Generator().manual_seed(seed))
    return CounterfactualResult(method, x, x_cf, valid, r, time.perf_counter() - t0, details)


def _mdtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _straight_through(space: FeatureSpace, z: Tensor, x: Tensor) -> Tensor:
    """The discretised record in the forward pass, the identity of the projection in the backward pass."""
    zp = space.project(z, x)
    return zp + (space.discretise(zp, x) - zp).detach()


def closest_counterfactual(
    model: nn.Module,
    x: Tensor,
    norm: int = 2,
    space: FeatureSpace | None = None,
    kappa: float = 0.5,
    steps: int = 100,
    rounds: int = 5,
    lr: float = 0.01,
    sigma: float = 0.05,
    k: int = 1000,
    seed: int = 0,
) -> CounterfactualResult:
    """Minimal-cost (l1 or l2) counterfactual by penalised gradient search with a per-row bisection on c."""
    t0 = time.perf_counter()
    if norm not in (1, 2):
        raise InvalidInputError(f"norm must be 1 or 2, got {norm!r}")
    space = _space(space, x)
    _check_factuals(model, x, space)
    b = x.shape[0]
    c = torch.ones(b, dtype=x.dtype)
    lo, hi = torch.zeros(b, dtype=x.dtype), torch.full((b,), float("inf"), dtype=x.dtype)
    best = x.clone()
    best_cost = torch.full((b,), float("inf"), dtype=x.dtype)
    mask = space.mutable_mask(x)
    for _ in range(rounds):
        z = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        success = torch.zeros(b, dtype=torch.bool)
        for _ in range(steps):
            zp = _straight_through(space, z, x)
            cost = _dist(zp, x, norm) if norm == 1 else ((zp - x) ** 2).sum(-1)
            loss = (c * torch.relu(kappa - margin(model, zp)) + cost).sum()
            opt.zero_grad()
            loss.backward()
            z.grad.mul_(mask)
            opt.step()
            with torch.no_grad():
                cand = space.discretise(z, x)
                ok = probability(model, cand) >= 0.5
                dc = _dist(cand, x, norm)
                better = ok & (dc < best_cost)
                best[better], best_cost[better] = cand[better], dc[better]
                success |= ok
        hi = torch.where(success, torch.minimum(hi, c), hi)
        lo = torch.where(success, lo, torch.maximum(lo, c))
        c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)
    return _finish(f"closest-l{norm}", model, x, best, t0, sigma, k, seed, {"norm": norm, "kappa": kappa})


def wachter(
    model: nn.Module,
    x: Tensor,
    space: FeatureSpace | None = None,
    lam: float = 0.1,
    steps: int = 100,
    rounds: int = 5,
    lr: float = 0.01,
    sigma: float = 0.05,
    k: int = 1000,
    seed: int = 0,
) -> CounterfactualResult:
    """Wachter et al. (2017): lambda (m(x') - 1)^2 + ||x' - x||_1, lambda x10 per round, first valid iterate kept."""
    t0 = time.perf_counter()
    space = _space(space, x)
    _check_factuals(model, x, space)
    b = x.shape[0]
    found = torch.zeros(b, dtype=torch.bool)
    best = x.clone()
    mask = space.mutable_mask(x)
    z = x.clone().requires_grad_(True)
    for r in range(rounds):
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            zp = _straight_through(space, z, x)
            loss = (lam * 10**r * (probability(model, zp) - 1) ** 2 + (zp - x).abs().sum(-1)).sum()
            opt.zero_grad()
            loss.backward()
            z.grad.mul_(mask * (~found).to(x.dtype).unsqueeze(1))  # rows already found stop moving
            opt.step()
            with torch.no_grad():
                cand = space.discretise(z, x)
                new = (probability(model, cand) >= 0.5) & ~found
                best[new], found = cand[new], found | new
        if bool(found.all()):
            break
    return _finish("wachter", model, x, best, t0, sigma, k, seed, {"lambda0": lam})


def _accepted_candidates(model: nn.Module, x: Tensor, x_train: Tensor, space: FeatureSpace) -> tuple[Tensor, Tensor]:
    """Per factual: training rows with immutables copied from x (B, N, d), and their l2 distance (inf if m rejects)."""
    cand = space.project(x_train.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1), x.unsqueeze(1))
    with torch.no_grad():
        ok = (probability(model, cand.reshape(-1, x.shape[1])) >= 0.5).reshape(cand.shape[:2])
    dist = torch.where(ok, (cand - x.unsqueeze(1)).norm(dim=-1), torch.full_like(ok, float("inf"), dtype=x.dtype))
    return cand, dist


def _check_train(x_train: Tensor, space: FeatureSpace) -> None:
    space.check(x_train, "X_train")
    if x_train.shape[0] == 0:
        raise InvalidInputError("X_train is empty")


def nearest_neighbour(
    model: nn.Module,
    x: Tensor,
    x_train: Tensor,
    space: FeatureSpace | None = None,
    sigma: float = 0.05,
    k: int = 1000,
    seed: int = 0,
) -> CounterfactualResult:
    """The l2-closest training point accepted by m (immutable features set to the factual's)."""
    t0 = time.perf_counter()
    space = _space(space, x)
    _check_factuals(model, x, space)
    _check_train(x_train, space)
    cand, dist = _accepted_candidates(model, x, x_train, space)
    j = dist.argmin(1)
    x_cf = cand[torch.arange(x.shape[0]), j]
    x_cf = torch.where(torch.isfinite(dist.min(1).values).unsqueeze(1), x_cf, x)
    return _finish("nn", model, x, x_cf, t0, sigma, k, seed, {})


def trex_nn(
    model: nn.Module,
    x: Tensor,
    x_train: Tensor,
    tau: float = 0.75,
    sigma: float = 0.05,
    k: int = 1000,
    space: FeatureSpace | None = None,
    chunk: int = 4,
    max_candidates: int | None = None,
    seed: int = 0,
) -> CounterfactualResult:
    """T-Rex:NN: the closest accepted training point with Stability > tau (scanned ``chunk`` at a time)."""
    t0 = time.perf_counter()
    _check_tau(tau)
    space = _space(space, x)
    _check_factuals(model, x, space)
    _check_train(x_train, space)
    b, d = x.shape
    cand, dist = _accepted_candidates(model, x, x_train, space)
    order = dist.argsort(1)
    n_ok = torch.isfinite(dist).sum(1)
    limit = int(n_ok.max()) if max_candidates is None else min(int(n_ok.max()), max_candidates)
    rows = torch.arange(b)
    x_cf = torch.where((n_ok > 0).unsqueeze(1), cand[rows, order[:, 0]], x)
    done = n_ok == 0
    robust = torch.zeros(b, dtype=torch.bool)
    scanned = 0
    gen = torch.Generator().manual_seed(seed + 1)
    for start in range(0, limit, chunk):
        todo = (~done).nonzero().flatten()
        if todo.numel() == 0:
            break
        idx = order[todo, start : start + chunk]  # (T, c)
        pts = cand[todo.unsqueeze(1), idx]  # (T, c, d)
        r = stability_chunked(model, pts.reshape(-1, d), sigma, k, gen).reshape(idx.shape)
        alive = torch.arange(start, start + idx.shape[1]).unsqueeze(0) < n_ok[todo].unsqueeze(1)
        hit = (r > tau) & alive
        first = hit.float().argmax(1)
        got = hit.any(1)
        x_cf[todo[got]] = pts[got, first[got]]
        robust[todo[got]] = True
        done[todo] = got | (start + idx.shape[1] >= n_ok[todo])
        scanned += int(alive.sum())
    details = {"tau": tau, "robust_found": int(robust.sum()), "candidates_scanned": scanned}
    return _finish("trex-nn", model, x, x_cf, t0, sigma, k, seed, details)


def trex_iterative(
    model: nn.Module,
    x_cf: Tensor,
    tau: float = 0.75,
    sigma: float = 0.05,
    k: int = 1000,
    step: float = 0.01,
    max_steps: int = 20,
    radius: float = 1.0,
    space: FeatureSpace | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> CounterfactualResult:
    """T-Rex:I refinement of base counterfactuals ``x_cf`` (B, d); see the module docstring."""
    t0 = time.perf_counter()
    _check_tau(tau)
    space = _space(space, x_cf)
    space.check(x_cf, "x_cf")
    if not radius > 0 or not step > 0 or max_steps < 0:
        raise InvalidInputError(f"need radius > 0, step > 0, max_steps >= 0; got {radius}, {step}, {max_steps}")
    x0 = x_cf.detach()
    b, d = x0.shape
    gen = generator if generator is not None else torch.Generator().manual_seed(seed + 2)
    noise = torch.randn(b, k, d, generator=gen, dtype=x0.dtype)
    mdt = _mdtype(model)

    def r_of(z: Tensor) -> Tensor:
        return stability(model, z.to(mdt), sigma=sigma, k=k, noise=noise.to(mdt)).to(x0.dtype)

    mask = space.mutable_mask(x0)
    with torch.no_grad():
        best, best_r = x0.clone(), r_of(x0)
        valid0 = probability(model, x0) >= 0.5
    start_r = best_r.clone()
    z = x0.clone()
    active = best_r < tau
    steps_taken = torch.zeros(b, dtype=torch.long)
    for _ in range(max_steps):
        if not bool(active.any()):
            break
        zr = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(r_of(zr).sum(), zr)
        grad = grad * mask
        gn = grad.norm(dim=1, keepdim=True)
        move = active.unsqueeze(1) & (gn > 0)
        with torch.no_grad():
            z = torch.where(move, z + step * grad / gn.clamp(min=1e-30), z)
            off = z - x0
            on = off.norm(dim=1, keepdim=True)
            z = x0 + off * torch.clamp(radius / on.clamp(min=1e-30), max=1.0)
            z = space.project(z, x0)
            cand = space.discretise(z, x0)
            rc = r_of(cand)
            inside = (cand - x0).norm(dim=1) <= radius  # rounding may leave the ball: such records are skipped
            ok = (probability(model, cand) >= 0.5) & valid0 & active & inside & (rc >= best_r)
            best[ok], best_r[ok] = cand[ok], rc[ok]
            steps_taken += active.long()
            active = active & (best_r < tau) & move.squeeze(1)
    details = {
        "tau": tau,
        "step": step,
        "max_steps": max_steps,
        "radius": radius,
        "reached_tau": int((best_r >= tau).sum()),
        "stability_start": start_r.tolist(),
        "stability_end_same_noise": best_r.tolist(),
        "steps": steps_taken.tolist(),
    }
    return _finish("trex-i", model, x0, best, t0, sigma, k, seed, details)
