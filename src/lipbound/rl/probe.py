"""Certified critic-Lipschitz probe: how smooth is s -> Q(s, a) around replay states, and globally.

    local:  L_b = sup_{s in [s_b - eps, s_b + eps]} ||grad_s Q(s, a_b)||_q,  q the dual of ``norm``
            upper: lipbound.local_lipschitz (certified); lower: ||grad_s Q|| attained at points of the box
    global: lipbound.global_lipschitz of the state network s -> Q(s, a) (valid for every action, since a enters
            only through the first bias)

With per-sample actions the bound is computed on h(s, b) = Q(s, b / K), b = K a_b held fixed (a degenerate box in
b): ||grad h||_q >= ||grad_s Q||_q, so the certified upper bound of h is one of s -> Q(s, a_b). K = 1e6 makes the
action term negligible without changing soundness.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.errors import InvalidInputError
from lipbound.global_bounds import global_lipschitz
from lipbound.local import local_lipschitz

ACTION_AUGMENT = 1e6


def _state_gradient_norm(net, states: Tensor, actions: Tensor | None, norm) -> Tensor:
    """||grad_s Q(s, a)||_q at each row (q dual of ``norm``), via the augmented network if actions are given."""
    s = states.detach().clone().requires_grad_(True)
    x = s if actions is None else torch.cat([s, ACTION_AUGMENT * actions.detach()], dim=-1)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(net(x.to(next(net.parameters()).dtype)).sum(), s)
    dual = {"inf": 1, "2": 2, "1": float("inf")}[str(norm)]
    return torch.linalg.vector_norm(g, ord=dual, dim=-1)


def critic_lipschitz_probe(
    critic,
    states: Tensor,
    action: Tensor | None = None,
    eps: float = 0.05,
    norm: str | int = 2,
    global_method: str = "product",
    actions: Tensor | None = None,
    samples: int = 8,
) -> dict:
    """Probe a critic exposing ``state_network(action, augment)`` (:class:`lipbound.rl.SpectralCritic`,
    :class:`lipbound.rl.networks.MLPCritic`) over the replay ``states`` (B, d_s) in eps boxes, at the fixed
    ``action`` or at per-state ``actions`` (B, d_a). Returns floats local_upper (max over the batch),
    local_upper_mean, local_lower (max over the batch; attained at the centre or one of ``samples`` random
    points of each box) and global_upper:
    local_lower <= true local constant <= local_upper <= global_upper (gradients in the dual of ``norm``)."""
    if not hasattr(critic, "state_network"):
        raise InvalidInputError("critic must expose state_network(action) -> nn.Module (s -> Q(s, a))")
    if not isinstance(states, Tensor) or states.dim() != 2:
        raise InvalidInputError(f"states must be a (batch, state_dim) tensor, got {getattr(states, 'shape', states)}")
    if not float(eps) > 0:
        raise InvalidInputError(f"eps must be > 0, got {eps}")
    if actions is not None and (actions.dim() != 2 or actions.shape[0] != states.shape[0]):
        raise InvalidInputError(f"actions must be (batch={states.shape[0]}, action_dim), got {tuple(actions.shape)}")
    norm = "inf" if str(norm).lower() in ("inf", "linf") else str(int(norm))
    p: str | int = "inf" if norm == "inf" else int(norm)
    states = states.detach().double()
    if actions is None:
        net = critic.state_network(action).double()
        x0, radius = states, float(eps)
        lower_actions = None
    else:
        net = critic.state_network(augment=ACTION_AUGMENT).double()
        actions = actions.detach().double()
        x0 = torch.cat([states, ACTION_AUGMENT * actions], dim=-1)
        radius = torch.cat([torch.full_like(states, float(eps)), torch.zeros_like(actions)], dim=-1)
        lower_actions = actions
    local = local_lipschitz(net, x0, eps=radius, norm=p, lower=False)
    # attained lower bound: the state-gradient norm at the centre and at ``samples`` uniform points of each box
    gen = torch.Generator().manual_seed(0)
    b, d = states.shape
    offsets = (2 * torch.rand(samples, b, d, generator=gen, dtype=states.dtype) - 1) * float(eps)
    points = torch.cat([states[None], states[None] + offsets]).reshape(-1, d)
    acts = None if lower_actions is None else lower_actions.repeat(samples + 1, 1)
    lower = _state_gradient_norm(net, points, acts, norm).reshape(samples + 1, b).amax(0)
    glob = global_lipschitz(critic.state_network(action).double(), norm=p, method=global_method)
    return {
        "local_upper": float(local.upper_max.max()),
        "local_upper_mean": float(local.upper_max.mean()),
        "local_lower": float(lower.max()),
        "global_upper": float(glob.upper),
        "global_method": glob.method,
    }
