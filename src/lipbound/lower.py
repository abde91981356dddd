"""Certified LOWER bounds on the local Lipschitz constant: gradient norms found at points of the box.

For any ``x`` in the box, ``||grad c^T f(x)||_*`` (``*`` the dual of the input norm) is attained by the network,
so the maximum over the points we try is a valid lower bound on
``L = sup_{x in box} sup_{J in Clarke(x)} ||J^T c||_*``. We try:

1. the box centre, uniform samples and random vertices;
2. projected gradient ascent on the gradient norm of a *smoothed* network (ReLU -> softplus with a sharpening
   temperature; the exact network's gradient norm is piecewise constant, so it has no useful ascent direction),
   evaluating the exact network's gradient norm at every iterate.

Only exact gradient norms (autograd on the exact network) enter the returned value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipbound.graph.ir import Graph
from lipbound.ops.base import ConstOp, InputOp
from lipbound.ops.leaky_relu import LeakyReLU
from lipbound.ops.relu import ReLU


def dual_norm(g: Tensor, norm: str) -> Tensor:
    """``||g||_*`` over all per-sample dims: l1 for input norm inf, l2 for 2, l_inf for 1."""
    flat = g.reshape(g.shape[0], -1)
    if norm == "inf":
        return flat.abs().sum(1)
    if norm == "2":
        return flat.norm(dim=1)
    return flat.abs().amax(1)


def _evaluate(graph: Graph, x: Tensor, beta: float | None) -> Tensor:
    """Network output; with ``beta`` the piecewise-linear activations are replaced by softplus surrogates."""
    vals: dict[int, Tensor] = {}
    for n in graph.nodes:
        if isinstance(n.op, InputOp):
            v = x
        elif isinstance(n.op, ConstOp):
            v = n.op.value
        else:
            args = [vals[id(i)] for i in n.inputs]
            if beta is not None and isinstance(n.op, ReLU):
                v = F.softplus(args[0], beta=beta)
            elif beta is not None and isinstance(n.op, LeakyReLU):
                a = n.op.a
                v = a * args[0] + (1 - a) * F.softplus(args[0], beta=beta)
            else:
                v = n.op.forward(*args)
        vals[id(n)] = v
    return vals[id(graph.output)]


def gradients(graph: Graph, x: Tensor, c: Tensor, beta: float | None = None, create_graph: bool = False) -> Tensor:
    """``grad_x <c_i, f(x_i)>`` for each row ``i`` (``x``: ``(N, *in)``, ``c``: ``(N, *out)``)."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        y = _evaluate(graph, x, beta)
        (g,) = torch.autograd.grad((y * c).sum(), x, create_graph=create_graph)
    return g


def lower_bound(
    graph: Graph,
    x_lower: Tensor,
    x_upper: Tensor,
    c: Tensor,
    norm: str,
    samples: int = 64,
    restarts: int = 4,
    steps: int = 20,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Best gradient norm found in the box, per input and direction.

    ``x_lower``, ``x_upper``: ``(B, *in)``; ``c``: ``(B, K, *out)``. Returns ``(values (B, K), points (B, K, *in))``.
    """
    b, k = c.shape[0], c.shape[1]
    in_shape = x_lower.shape[1:]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lo = x_lower.unsqueeze(1).expand(b, k, *in_shape)
    hi = x_upper.unsqueeze(1).expand(b, k, *in_shape)

    def rand(shape) -> Tensor:
        return torch.rand(shape, generator=gen, dtype=x_lower.dtype).to(x_lower.device)

    best = torch.full((b, k), -1.0, dtype=x_lower.dtype, device=x_lower.device)
    best_x = ((lo + hi) / 2).clone()

    def consider(points: Tensor) -> None:
        """points: (R, B, K, *in) -> update best with exact gradient norms."""
        r = points.shape[0]
        flat = points.reshape(r * b * k, *in_shape)
        cc = c.unsqueeze(0).expand(r, *c.shape).reshape(r * b * k, *c.shape[2:])
        vals = dual_norm(gradients(graph, flat, cc), norm).reshape(r, b, k)
        v, idx = vals.max(0)
        better = v > best
        best.copy_(torch.where(better, v, best))
        pick = points.gather(0, idx.reshape(1, b, k, *([1] * len(in_shape))).expand(1, b, k, *in_shape))[0]
        best_x.copy_(torch.where(better.reshape(b, k, *([1] * len(in_shape))), pick, best_x))

    width = hi - lo
    consider(((lo + hi) / 2).unsqueeze(0))
    if samples > 0:
        u = rand((samples, b, k, *in_shape))
        consider(lo + u * width)
        v = (rand((samples, b, k, *in_shape)) > 0.5).to(x_lower.dtype)
        consider(lo + v * width)
    if steps > 0 and restarts > 0:
        x = lo + rand((restarts, b, k, *in_shape)) * width
        x[0] = best_x
        scale = width.abs().reshape(b, k, -1).amax(-1).clamp(min=1e-12)
        cc = c.unsqueeze(0).expand(restarts, *c.shape).reshape(restarts * b * k, *c.shape[2:])
        for t in range(steps):
            beta = 4.0 / float(scale.mean()) * (1.0 + t)  # sharpen the surrogate as we go
            with torch.enable_grad():
                xf = x.reshape(restarts * b * k, *in_shape).detach().requires_grad_(True)
                gnorm = dual_norm(gradients(graph, xf, cc, beta=beta, create_graph=True), norm)
                (step,) = torch.autograd.grad(gnorm.sum(), xf)
            step = step.reshape(x.shape)
            size = 0.25 * width * (1 - t / steps)
            x = torch.minimum(torch.maximum(x.detach() + size * torch.sign(step), lo), hi)
            consider(x)
    return best.clamp(min=0), best_x
