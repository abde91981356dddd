"""Adversarial smoothness penalty on a critic Q(s, a), perturbing the state only.

    P(theta) = E_(s,a) [ max_{||delta|| <= eps} ( Q_theta(s + delta, a) - Q_theta(s, a) )^2 ]

The inner max is approximated by projected gradient ascent (PGD) from a random start inside the eps ball; the
maximiser delta* is detached, so the returned value is differentiable in theta only. For a linear critic
Q = w_s^T s + ... the exact value is (eps ||w_s||_*)^2 with ||.||_* the dual norm (l_1 for l_inf, l_2 for l_2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lipbound.errors import InvalidInputError

_NORMS = ("inf", "2")


def _parse_norm(norm) -> str:
    key = str(norm).lower()
    if key in ("inf", "linf", "float('inf')"):
        return "inf"
    if key in ("2", "l2", "2.0"):
        return "2"
    if isinstance(norm, float) and norm == float("inf"):
        return "inf"
    raise InvalidInputError(f"unknown norm {norm!r} for adversarial_value_penalty; choose one of {_NORMS}")


def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "inf":
        return delta.clamp(-eps, eps)
    length = delta.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return delta * (eps / length).clamp(max=1.0)


def _random_start(states: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    noise = torch.rand(states.shape, generator=generator, dtype=states.dtype, device="cpu").to(states.device)
    noise = 2.0 * noise - 1.0
    if norm == "inf":
        return eps * noise
    return _project(eps * noise, eps, norm)


def adversarial_value_penalty(
    q: Callable[[Tensor, Tensor], Tensor],
    states: Tensor,
    actions: Tensor,
    eps: float,
    steps: int = 5,
    norm: str | float = "inf",
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    return_delta: bool = False,
):
    """Mean over the batch of max_{||delta|| <= eps} (Q(s + delta, a) - Q(s, a))^2, inner max by ``steps`` PGD steps.

    ``q(states, actions)`` returns shape (B,) or (B, 1); ``states`` (B, d_s), ``actions`` (B, d_a). ``norm``: "inf"
    (sign-gradient steps, clamp) or 2 (normalised-gradient steps, radial projection). ``step_size`` defaults to
    2.5 eps / steps. The perturbation is detached: gradients flow to the critic's parameters only, not to delta.
    With ``return_delta`` the detached maximiser is returned too.
    """
    norm = _parse_norm(norm)
    if not isinstance(states, Tensor) or states.dim() != 2:
        raise InvalidInputError(f"states must be a (batch, state_dim) tensor, got {getattr(states, 'shape', states)}")
    if not isinstance(actions, Tensor) or actions.dim() != 2 or actions.shape[0] != states.shape[0]:
        raise InvalidInputError(
            f"actions must be a (batch, action_dim) tensor with batch {states.shape[0]}, "
            f"got {getattr(actions, 'shape', actions)}"
        )
    eps = float(eps)
    if not eps >= 0.0:
        raise InvalidInputError(f"eps must be >= 0, got {eps}")
    if int(steps) != steps or steps < 0:
        raise InvalidInputError(f"steps must be a non-negative integer, got {steps}")
    states, actions = states.detach(), actions.detach()
    base = q(states, actions).reshape(-1)
    if eps == 0.0:
        zero = (base - base).pow(2).mean()
        return (zero, torch.zeros_like(states)) if return_delta else zero
    alpha = 2.5 * eps / max(int(steps), 1) if step_size is None else float(step_size)
    base_ref = base.detach()
    delta = _random_start(states, eps, norm, generator)
    for _ in range(int(steps)):
        delta.requires_grad_(True)
        with torch.enable_grad():
            gap = (q(states + delta, actions).reshape(-1) - base_ref).pow(2).sum()
            (grad,) = torch.autograd.grad(gap, delta)
        with torch.no_grad():
            direction = grad.sign() if norm == "inf" else grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            delta = _project(delta + alpha * direction, eps, norm)
    delta = delta.detach()
    penalty = (q(states + delta, actions).reshape(-1) - base).pow(2).mean()
    return (penalty, delta) if return_delta else penalty
