"""The Monte-Carlo loop: Gaussian noise around a group of inputs, base logits, votes and simplex-map moments.

For inputs x_1..x_g and n samples each, rows x_i + delta_ij (delta_ij ~ N(0, sigma^2 I), drawn from one seeded
generator) are pushed through the base model in chunks of at most ``batch_size`` rows. Per input it keeps the argmax
vote counts and, for every soft candidate (map, t), the running mean and sample variance (ddof = 1, Chan's update)
of s(t f(x_i + delta)). No Python loop runs over samples: only over chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lipbound.smoothing.maps import Candidate, apply_maps
from lipbound.smoothing.stats import StreamingMoments


@dataclass
class SampleStats:
    """Statistics of n noisy copies of g inputs: ``counts`` (g, K) int64 argmax votes; for the soft candidates (in
    the order given) ``mean`` and ``variance`` (g, M_soft, K) float64 of the map's scores."""

    n: int
    counts: Tensor
    soft: list[Candidate]
    mean: Tensor | None = None
    variance: Tensor | None = None

    def scores(self, candidates: Sequence[Candidate]) -> tuple[Tensor, Tensor]:
        """Mean and variance (g, len(candidates), K) of each candidate's scores; argmax from the vote counts."""
        frac = self.counts.to(torch.float64) / self.n
        bern_var = frac * (1 - frac) * (self.n / max(self.n - 1, 1))  # sample variance of one-hot votes
        means, variances = [], []
        for c in candidates:
            if c.map == "argmax":
                means.append(frac)
                variances.append(bern_var)
            else:
                j = self.soft.index(c)
                assert self.mean is not None and self.variance is not None
                means.append(self.mean[:, j])
                variances.append(self.variance[:, j])
        return torch.stack(means, dim=1), torch.stack(variances, dim=1)


def sample_stats(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma: float,
    n: int,
    num_classes: int,
    candidates: Sequence[Candidate],
    batch_size: int,
    generator: torch.Generator,
) -> SampleStats:
    """Draw ``n`` noisy copies of every input of ``x`` (g, *shape) and accumulate votes and soft-map moments."""
    g, shape = x.shape[0], tuple(x.shape[1:])
    soft = [c for c in dict.fromkeys(candidates) if c.map != "argmax"]
    per_chunk = max(1, min(n, batch_size // g))
    counts = torch.zeros(g, num_classes, dtype=torch.int64, device=x.device)
    moments = StreamingMoments()
    done = 0
    while done < n:
        m = min(per_chunk, n - done)
        noise = torch.randn((g, m, *shape), generator=generator, device=x.device, dtype=x.dtype)
        rows = (x.unsqueeze(1) + sigma * noise).reshape(g * m, *shape)
        logits = forward(rows)
        votes = logits.argmax(dim=-1).reshape(g, m)
        counts += torch.nn.functional.one_hot(votes, num_classes).sum(dim=1)
        if soft:
            scores = apply_maps(logits, soft)  # (M, g m, K)
            moments.update(scores.reshape(len(soft), g, m, num_classes), dim=2)
        done += m
    if not soft:
        return SampleStats(n, counts, soft)
    assert moments.mean is not None
    var = moments.variance if n >= 2 else torch.zeros_like(moments.mean)
    return SampleStats(n, counts, soft, moments.mean.transpose(0, 1), var.transpose(0, 1))
