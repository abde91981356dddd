"""Batched training of many small MLPs d-w-w-2 at once (the base model and the retrained "changed" models).

E models are trained in one ensemble: weights are stacked ``(E, in, out)`` and applied with batched matmuls. The
loss is the sum of the E per-model mean cross-entropies, so each model's gradient is its own, and Adam acts
elementwise: the result is exactly E independent Adam runs (each with its own initialisation, minibatch order and,
optionally, bootstrap resample), at the cost of one. Initialisation follows ``nn.Linear``'s default
(U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases). Protocol defaults as in the paper's code: Adam
lr 1e-3, 50 epochs, batch 256.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from lipbound.models import SimpleMLP


def _init(e: int, fan_in: int, fan_out: int, gens: list[torch.Generator]) -> tuple[Tensor, Tensor]:
    bound = 1.0 / math.sqrt(fan_in)
    w = torch.stack([(torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound for g in gens])
    b = torch.stack([(torch.rand(fan_out, generator=g) * 2 - 1) * bound for g in gens])
    return w.requires_grad_(True), b.requires_grad_(True)


def _forward(params: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
    h = x
    for i, (w, b) in enumerate(params):
        h = torch.baddbmm(b.unsqueeze(1), h, w)
        if i < len(params) - 1:
            h = torch.relu(h)
    return h


def train_mlps(
    x: Tensor,
    y: Tensor,
    seeds: list[int],
    width: int = 128,
    epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    bootstrap: bool = False,
) -> list[nn.Module]:
    """Train one d-``width``-``width``-2 MLP per seed on (x, y); returns eval-mode float32 ``SimpleMLP`` modules.

    ``bootstrap``: each model trains on its own resample (with replacement) of the rows, drawn from its seed.
    """
    e, (n, d) = len(seeds), x.shape
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    dims = [d, width, width, 2]
    params = [_init(e, a, b, gens) for a, b in itertools.pairwise(dims)]
    opt = torch.optim.Adam([p for wb in params for p in wb], lr=lr)
    xf, yl = x.float(), y.long()
    rows = torch.stack([torch.randint(0, n, (n,), generator=g) for g in gens]) if bootstrap else None
    for _ in range(epochs):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens])  # (E, n)
        order = torch.gather(rows, 1, perm) if rows is not None else perm
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            logits = _forward(params, xf[idx])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 2), yl[idx].reshape(-1), reduction="none")
            loss = loss.reshape(e, -1).mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    models = []
    for j in range(e):
        m = SimpleMLP(d, width, 2)
        with torch.no_grad():
            for layer, (w, b) in zip([m[0], m[2], m[4]], params, strict=True):
                layer.weight.copy_(w[j].T)
                layer.bias.copy_(b[j])
        models.append(m.eval())
    return models
