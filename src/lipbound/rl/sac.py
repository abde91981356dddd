"""Soft actor-critic (Haarnoja et al. 2018): twin critics, Polyak target critics, learned temperature, with the
critic's Lipschitz regulariser switchable (Zheng et al. 2023):

    y        = r + gamma_d (1 - done) ( min_j Qbar_j(s', a') - alpha log pi(a'|s') ),   a' ~ pi(.|s')
    L_Q      = sum_j E (Q_j(s, a) - y)^2  [+ lambda sum_j E max_{||delta|| <= eps} (Q_j(s + delta, a) - Q_j(s, a))^2
               for reg="adversarial"]
    L_pi     = E [ alpha log pi(a|s) - min_j Q_j(s, a) ],                               a ~ pi(.|s)
    L_alpha  = - E [ log alpha (log pi(a|s) + H_target) ],  H_target = -d_a

reg="spectral" replaces both critics by :class:`lipbound.rl.SpectralCritic` (every layer certified spectrally
normalised, Q = scale * f): Lip_2(s -> Q) <= scale by construction, no penalty term.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError
from lipbound.rl.buffer import Batch
from lipbound.rl.critic import SpectralCritic
from lipbound.rl.networks import MLPCritic, TanhGaussianPolicy
from lipbound.rl.penalty import adversarial_value_penalty

REGULARISERS = ("none", "adversarial", "spectral")


@dataclass
class SACConfig:
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    init_alpha: float = 0.1
    reg: str = "none"
    adv_eps: float = 0.05  # radius of the state perturbation, raw state units
    adv_lambda: float = 1.0
    adv_steps: int = 2
    adv_norm: str = "inf"
    spectral_scale: float = 100.0  # certified Lip_2(s -> Q) <= spectral_scale

    def validate(self) -> None:
        if self.reg not in REGULARISERS:
            raise InvalidInputError(f"unknown critic regulariser {self.reg!r}; choose one of {REGULARISERS}")
        if not self.adv_eps >= 0:
            raise InvalidInputError(f"adversarial eps must be >= 0, got {self.adv_eps}")
        if not self.adv_lambda >= 0:
            raise InvalidInputError(f"adversarial lambda must be >= 0, got {self.adv_lambda}")
        if not self.spectral_scale > 0:
            raise InvalidInputError(f"spectral scale must be > 0, got {self.spectral_scale}")
        if not 0 < self.gamma < 1 or not 0 < self.tau <= 1:
            raise InvalidInputError(f"need 0 < gamma < 1 and 0 < tau <= 1, got {self.gamma}, {self.tau}")


class SAC(nn.Module):
    """Actor, twin critics and their targets, log-temperature; :meth:`update` does one gradient step of each."""

    def __init__(self, state_dim: int, action_dim: int, low: Tensor, high: Tensor, config: SACConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.actor = TanhGaussianPolicy(state_dim, action_dim, low, high, config.hidden)
        if config.reg == "spectral":
            make = lambda: SpectralCritic(state_dim, action_dim, config.hidden, config.spectral_scale)  # noqa: E731
        else:
            make = lambda: MLPCritic(state_dim, action_dim, config.hidden)  # noqa: E731
        self.critics = nn.ModuleList([make(), make()])
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(float(config.init_alpha)).log())
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=config.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.lr)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, state: Tensor, deterministic: bool = False, generator: torch.Generator | None = None) -> Tensor:
        if deterministic:
            return self.actor.mean_action(state)
        return self.actor.sample(state, generator)[0]

    def q_min(self, critics: nn.ModuleList, states: Tensor, actions: Tensor) -> Tensor:
        return torch.minimum(critics[0](states, actions), critics[1](states, actions))

    def update(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, float]:
        """One SAC step on ``batch``; returns the losses (and the adversarial penalty, if any)."""
        cfg = self.config
        self.critics.train()
        self.targets.train()
        with torch.no_grad():
            next_a, next_logp = self.actor.sample(batch.next_states, generator)
            soft_v = self.q_min(self.targets, batch.next_states, next_a) - self.alpha * next_logp
            y = batch.rewards + cfg.gamma * (1.0 - batch.dones) * soft_v
        critic_loss = sum((q(batch.states, batch.actions) - y).pow(2).mean() for q in self.critics)
        penalty = torch.zeros(())
        if cfg.reg == "adversarial" and cfg.adv_lambda > 0 and cfg.adv_eps > 0:
            penalty = sum(
                adversarial_value_penalty(
                    q, batch.states, batch.actions, cfg.adv_eps, cfg.adv_steps, cfg.adv_norm, generator=generator
                )
                for q in self.critics
            )
            critic_loss = critic_loss + cfg.adv_lambda * penalty
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        self.critics.requires_grad_(False)
        a, logp = self.actor.sample(batch.states, generator)
        actor_loss = (self.alpha.detach() * logp - self.q_min(self.critics, batch.states, a)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.critics.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.critics.parameters(), self.targets.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        return {
            "critic_loss": float(critic_loss.detach()),
            "actor_loss": float(actor_loss.detach()),
            "alpha": float(self.alpha.detach()),
            "penalty": float(penalty.detach()),
        }
