"""Simplex maps s: R^K -> Delta^K turning logits into class scores, and their l2 Lipschitz constants.

* ``argmax``: one-hot e_{argmax z} (Cohen's hard vote; not Lipschitz, constant inf). Ties go to the lowest index.
* ``softmax(t z)``: Jacobian t (diag(p) - p p^T), spectral norm <= t/2, so t/2-Lipschitz.
* ``sparsemax(t z)`` = argmin_{p in Delta^K} ||p - t z||_2 (Martins & Astudillo 2016), the Euclidean projection onto
  the simplex: 1-Lipschitz, so sparsemax(t .) is t-Lipschitz.

A :class:`Candidate` is one (map, temperature) pair, i.e. one smoothed classifier G(x) = argmax_c E[s_c(t f(x+delta))].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MAPS = ("argmax", "softmax", "sparsemax")
#: default temperature grid of the soft maps (geometric, 0.25 .. 64); with argmax: 2 * 9 + 1 = 19 candidates
DEFAULT_TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True)
class Candidate:
    """One simplex map with its temperature (``None`` for argmax)."""

    map: str
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.map not in MAPS:
            raise ValueError(f"unknown simplex map {self.map!r}; choose one of {MAPS}")
        if self.map == "argmax":
            if self.temperature is not None:
                raise ValueError("the argmax map takes no temperature")
        elif self.temperature is None or not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"{self.map} needs a finite temperature t > 0, got {self.temperature!r}")

    @property
    def lipschitz(self) -> float:
        """l2 Lipschitz constant of z -> s(t z): t/2 (softmax), t (sparsemax), inf (argmax)."""
        return map_lipschitz(self.map, self.temperature)

    def label(self) -> str:
        return "argmax" if self.map == "argmax" else f"{self.map}(t={self.temperature:g})"

    def to_dict(self) -> dict:
        return {"map": self.map, "temperature": self.temperature}


def map_lipschitz(name: str, temperature: float | None) -> float:
    """l2 Lipschitz constant of z -> s(t z) for simplex map ``name``."""
    if name == "argmax":
        return math.inf
    if name == "softmax":
        return float(temperature) / 2.0
    if name == "sparsemax":
        return float(temperature)
    raise ValueError(f"unknown simplex map {name!r}; choose one of {MAPS}")


def default_candidates(temperatures: Sequence[float] = DEFAULT_TEMPERATURES) -> list[Candidate]:
    """argmax, then softmax and sparsemax at every temperature of the grid."""
    out = [Candidate("argmax")]
    out += [Candidate("softmax", float(t)) for t in temperatures]
    out += [Candidate("sparsemax", float(t)) for t in temperatures]
    return out


def argmax_onehot(z: Tensor) -> Tensor:
    """One-hot of argmax over the last dimension (first index on ties), same dtype as ``z``."""
    idx = z.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(z).scatter_(-1, idx, 1.0)


def sparsemax(z: Tensor) -> Tensor:
    """Euclidean projection of every row (last dim) of ``z`` onto the probability simplex.

    With z sorted decreasingly, k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}, tau = (sum_{j<=k*} z_(j) - 1) / k*,
    and sparsemax(z) = max(z - tau, 0).
    """
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cums = zs.cumsum(dim=-1)
    support = (1 + k * zs) > cums
    k_star = support.to(z.dtype).sum(dim=-1, keepdim=True)  # support is a prefix, so its size is k*
    tau = (cums.gather(-1, k_star.long() - 1) - 1) / k_star
    return torch.clamp(z - tau, min=0)


def apply_maps(logits: Tensor, candidates: Sequence[Candidate]) -> Tensor:
    """Scores of every candidate: (M, rows, K) for logits (rows, K), batched over temperatures per map."""
    out: list[Tensor | None] = [None] * len(candidates)
    for name in MAPS:
        idx = [i for i, c in enumerate(candidates) if c.map == name]
        if not idx:
            continue
        if name == "argmax":
            onehot = argmax_onehot(logits)
            for i in idx:
                out[i] = onehot
            continue
        t = torch.tensor([candidates[i].temperature for i in idx], dtype=logits.dtype, device=logits.device)
        tz = t[:, None, None] * logits[None]
        scores = torch.softmax(tz, dim=-1) if name == "softmax" else sparsemax(tz)
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return torch.stack(out)  # type: ignore[arg-type]
