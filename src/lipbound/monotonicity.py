"""Certified monotonicity: ``c_k^T f`` is non-decreasing (non-increasing) in feature ``j`` on a box iff
``d(c_k^T f)/dx_j >= 0`` (``<= 0``) for every Clarke Jacobian at every point of the box.

The elementwise Jacobian bounds of :func:`lipbound.jacobian_bounds` decide it: ``lo_kj >= 0`` certifies
non-decreasing, ``hi_kj <= 0`` non-increasing. Where neither holds, optional *bisection* of the box (the box is the
union of its parts, so a property certified on every part holds on the box) tightens the bounds; all parts of all
inputs are bounded in one batch. A feature is reported as *violated* when a sampled point has a partial
derivative of the wrong sign (then monotonicity is false, not merely unproven).

The Jacobian bounds are rigorous (rounding included), so the tests are exact: ``lo >= 0`` and ``hi <= 0`` with no
tolerance. A tolerance would certify a derivative of -1e-8 as non-decreasing (seen in the fuzz campaign on float32
LeakyReLU nets). A feature the output does not depend on (a zero weight column) gets bounds
``[-1e-13, 1e-13]`` (the engine's absolute outward pad) and is reported as neither certified nor violated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipbound.graph.ir import Graph
from lipbound.local import jacobian_bounds
from lipbound.lower import gradients
from lipbound.problem import make_problem


@dataclass
class MonotonicityResult:
    """Per input ``b``, direction ``k`` and feature ``j`` (shapes ``(B, K, *input_shape)``)."""

    increasing: Tensor  # certified non-decreasing
    decreasing: Tensor  # certified non-increasing
    violated_increasing: Tensor  # a sampled partial derivative < 0: NOT non-decreasing
    violated_decreasing: Tensor  # a sampled partial derivative > 0: NOT non-increasing
    lower: Tensor  # Jacobian bounds over the box (the min / max over the bisected parts)
    upper: Tensor
    parts: int  # sub-boxes per input after bisection


def _bisect(xl: Tensor, xu: Tensor, times: int) -> tuple[Tensor, Tensor]:
    """Split every box ``times`` times along its widest coordinate: ``(B * 2**times, *in)``."""
    for _ in range(times):
        b = xl.shape[0]
        width = (xu - xl).reshape(b, -1)
        j = width.argmax(1)
        mid = ((xl + xu) / 2).reshape(b, -1).gather(1, j[:, None])[:, 0]
        lo_u, hi_l = xu.reshape(b, -1).clone(), xl.reshape(b, -1).clone()
        lo_u[torch.arange(b), j] = mid
        hi_l[torch.arange(b), j] = mid
        xl = torch.stack([xl.reshape(b, -1), hi_l], 1).reshape(2 * b, *xl.shape[1:])
        xu = torch.stack([lo_u, xu.reshape(b, -1)], 1).reshape(2 * b, *xu.shape[1:])
    return xl, xu


def certify_monotonicity(
    model: nn.Module | Graph,
    x0: Tensor | None = None,
    eps: float | Tensor | None = None,
    c: Tensor | None = None,
    *,
    x_lower: Tensor | None = None,
    x_upper: Tensor | None = None,
    bisections: int = 0,
    optimize: bool = False,
    samples: int = 256,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> MonotonicityResult:
    """Certify monotonicity of every output direction in every input feature over the box.

    Arguments as in :func:`lipbound.local_lipschitz`; ``bisections``: split each box that many times along its
    widest coordinate (``2**bisections`` parts per input, bounded together). ``samples`` random points per input
    look for counterexamples (violations).
    """
    pr = make_problem(model, x0, eps, x_lower, x_upper, c, dtype)
    b, k = pr.c.shape[0], pr.c.shape[1]
    in_shape = tuple(pr.xl.shape[1:])
    parts = 2**bisections
    xl, xu = _bisect(pr.xl, pr.xu, bisections)
    cc = pr.c.repeat_interleave(parts, 0)
    lo, hi = jacobian_bounds(pr.graph, x_lower=xl, x_upper=xu, c=cc, optimize=optimize, dtype=dtype)
    lo = lo.reshape(b, parts, k, *in_shape).amin(1)
    hi = hi.reshape(b, parts, k, *in_shape).amax(1)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(samples, b, *in_shape, generator=gen, dtype=dtype).to(pr.xl.device)
    pts = (pr.xl + u * (pr.xu - pr.xl)).reshape(samples * b, *in_shape)
    neg = torch.zeros(b, k, *in_shape, dtype=torch.bool, device=pr.xl.device)
    pos = torch.zeros_like(neg)
    for j in range(k):
        cj = pr.c[:, j].repeat(samples, *([1] * (pr.c.dim() - 2)))
        g = gradients(pr.graph, pts, cj).reshape(samples, b, *in_shape)
        neg[:, j] = (g < 0).any(0)
        pos[:, j] = (g > 0).any(0)
    return MonotonicityResult(
        increasing=lo >= 0,
        decreasing=hi <= 0,
        violated_increasing=neg,
        violated_decreasing=pos,
        lower=lo,
        upper=hi,
        parts=parts,
    )
