"""Small networks for SAC: a plain MLP critic Q(s, a) and a tanh-squashed Gaussian policy.

The critic exposes the same ``state_network(action)`` as :class:`lipbound.rl.SpectralCritic`, so the certified
probe (:func:`lipbound.rl.critic_lipschitz_probe`) treats both alike.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError


def _check_dims(state_dim: int, action_dim: int) -> None:
    if state_dim < 1 or action_dim < 1:
        raise InvalidInputError(f"state_dim and action_dim must be >= 1, got {state_dim}, {action_dim}")


def state_restriction(
    linears: list[nn.Linear], state_dim: int, action: Tensor | None, scale: float = 1.0, augment: float | None = None
) -> nn.Sequential:
    """A plain ``nn.Sequential`` of Linear/ReLU layers computing the critic with the action taken out of the input.

    ``augment=None``: input s, the fixed ``action`` (default zeros) folded into the first bias, so
    s -> Q(s, a) exactly (the global Lipschitz constant does not depend on the bias, hence on a).
    ``augment=K``: input (s, b) with b = K a and first-layer action columns W_0[:, d_s:] / K, i.e.
    h(s, b) = Q(s, b / K); then ||grad h||_q = ||(grad_s Q, grad_a Q / K)||_q >= ||grad_s Q||_q, so any certified
    bound of h over a box that is degenerate in b is a certified bound of s -> Q(s, a) for that box's action.
    """
    w_full = linears[0].weight.detach()
    action_dim = w_full.shape[1] - state_dim
    mods: list[nn.Module] = []
    for i, layer in enumerate(linears):
        w = layer.weight.detach().clone()
        bias = layer.bias.detach().clone()
        if i == 0:
            if augment is None:
                a = torch.zeros(action_dim, dtype=w.dtype) if action is None else action.detach().reshape(-1)
                if a.numel() != action_dim:
                    raise InvalidInputError(f"action must have {action_dim} entries, got {a.numel()}")
                bias = bias + w[:, state_dim:] @ a.to(w)
                w = w[:, :state_dim]
            else:
                w = torch.cat([w[:, :state_dim], w[:, state_dim:] / float(augment)], dim=1)
        if i == len(linears) - 1:
            w, bias = w * scale, bias * scale
        plain = nn.Linear(w.shape[1], w.shape[0]).to(w.dtype)
        with torch.no_grad():
            plain.weight.copy_(w)
            plain.bias.copy_(bias)
        mods.append(plain)
        if i < len(linears) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class MLPCritic(nn.Module):
    """Q(s, a) = MLP(concat(s, a)) with ReLU hidden layers (no constraint on its Lipschitz constant)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        _check_dims(state_dim, action_dim)
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        sizes = (self.state_dim + self.action_dim, *hidden, 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, states: Tensor, actions: Tensor) -> Tensor:
        x = torch.cat([states, actions], dim=-1)
        for layer in self.linears[:-1]:
            x = torch.relu(layer(x))
        return self.linears[-1](x).squeeze(-1)

    def state_network(self, action: Tensor | None = None, augment: float | None = None) -> nn.Sequential:
        """s -> Q(s, a) as a plain network (see :func:`state_restriction`)."""
        return state_restriction(list(self.linears), self.state_dim, action, 1.0, augment)


class TanhGaussianPolicy(nn.Module):
    """pi(a|s): u ~ N(mu(s), sigma(s)^2), a = c + h tanh(u), with c, h the centre and half-width of the action box.

    log pi(a|s) = log N(u; mu, sigma) - sum_j log(h_j (1 - tanh(u_j)^2)), the tanh term computed stably as
    2 (log 2 - u - softplus(-2u)).
    """

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(
        self, state_dim: int, action_dim: int, low: Tensor, high: Tensor, hidden: tuple[int, ...] = (128, 128)
    ):
        super().__init__()
        _check_dims(state_dim, action_dim)
        sizes = (state_dim, *hidden)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], 2 * action_dim)
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        self.register_buffer("centre", (high + low) / 2)
        self.register_buffer("half_width", (high - low) / 2)

    def _dist(self, states: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.head(self.trunk(states)).chunk(2, dim=-1)
        return mu, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, states: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparametrised sample a ~ pi(.|s) and log pi(a|s), shapes (B, d_a) and (B,)."""
        mu, log_std = self._dist(states)
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu").to(mu.device)
        u = mu + log_std.exp() * noise
        log_gauss = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_jac = (2 * (math.log(2) - u - nn.functional.softplus(-2 * u)) + self.half_width.log()).sum(-1)
        return self.centre + self.half_width * torch.tanh(u), log_gauss - log_jac

    def mean_action(self, states: Tensor) -> Tensor:
        """The deterministic action c + h tanh(mu(s)) used for evaluation."""
        return self.centre + self.half_width * torch.tanh(self._dist(states)[0])
