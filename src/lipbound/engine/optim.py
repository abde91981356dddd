"""A minimal projected Adam for the relaxation parameters (alphas live in [0, 1]).

Kept local (instead of ``torch.optim.Adam``) because it is ~20 lines and avoids importing torch's compiler stack,
which costs seconds on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ProjectedAdam:
    """Adam steps on ``params`` followed by projection onto the box ``[lo, hi]``."""

    def __init__(self, params: list[Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8, lo=0.0, hi=1.0):
        self.params, self.lr, self.betas, self.eps, self.lo, self.hi = params, lr, betas, eps, lo, hi
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.sub_(self.lr * (m / c1) / ((v / c2).sqrt() + self.eps))
            p.clamp_(self.lo, self.hi)
