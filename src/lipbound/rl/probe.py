"""Certified critic-Lipschitz probe: how smooth is s -> Q(s, a) around replay states, and globally.

    local:  max_b  L_local(B_eps(s_b))  from lipbound.local_lipschitz (certified upper, attained lower)
    global: lipbound.global_lipschitz of the state network (a certified upper bound valid everywhere)
Local constants are measured with gradients in the dual of ``norm``; the global one in ``norm`` -> |.|.
"""

from __future__ import annotations

from torch import Tensor

import lipbound
from lipbound.errors import InvalidInputError


def critic_lipschitz_probe(
    critic,
    states: Tensor,
    action: Tensor | None = None,
    eps: float = 0.05,
    norm: str | int = 2,
    global_method: str = "product",
) -> dict:
    """Probe a critic exposing ``state_network(action)`` (e.g. :class:`lipbound.rl.SpectralCritic`) over the
    replay ``states`` (B, d_s) in eps boxes. Returns local_upper, local_lower (max over the batch) and
    global_upper (floats): local_lower <= true local constant <= local_upper <= global_upper (same norm)."""
    if not hasattr(critic, "state_network"):
        raise InvalidInputError("critic must expose state_network(action) -> nn.Module (s -> Q(s, a))")
    if not isinstance(states, Tensor) or states.dim() != 2:
        raise InvalidInputError(f"states must be a (batch, state_dim) tensor, got {getattr(states, 'shape', states)}")
    if not float(eps) > 0:
        raise InvalidInputError(f"eps must be > 0, got {eps}")
    net = critic.state_network(action)
    local = lipbound.local_lipschitz(net, states.detach(), eps=float(eps), norm=norm)
    glob = lipbound.global_lipschitz(net, norm=norm, method=global_method)
    return {
        "local_upper": float(local.upper_max.max()),
        "local_lower": float(local.lower_max.max()),
        "global_upper": float(glob.upper),
        "global_method": glob.method,
    }
