"""Lipschitz-regularised value functions for model-based RL (Zheng et al., ICLR 2023).

Regularisers: :func:`adversarial_value_penalty` (adversarial state noise on the critic) and :class:`SpectralCritic`
(a critic on lipbound's certified spectral parametrisation, certified Lip_2(s -> Q) <= scale). Agent:
:func:`train_mbpo` with :class:`MBPOConfig` / :class:`SACConfig` (SAC on branched rollouts of one Gaussian
dynamics model or an ensemble, :class:`GaussianDynamics`). Measurement: :func:`critic_lipschitz_probe` (certified
local and global Lipschitz bounds of s -> Q(s, a) via lipbound.local_lipschitz / lipbound.global_lipschitz).
"""

from lipbound.rl.agent import MBPOConfig, TrainResult, train_mbpo
from lipbound.rl.critic import SpectralCritic
from lipbound.rl.dynamics import GaussianDynamics
from lipbound.rl.networks import MLPCritic, TanhGaussianPolicy
from lipbound.rl.penalty import adversarial_value_penalty
from lipbound.rl.probe import critic_lipschitz_probe
from lipbound.rl.sac import SAC, SACConfig

__all__ = [
    "SAC",
    "GaussianDynamics",
    "MBPOConfig",
    "MLPCritic",
    "SACConfig",
    "SpectralCritic",
    "TanhGaussianPolicy",
    "TrainResult",
    "adversarial_value_penalty",
    "critic_lipschitz_probe",
    "train_mbpo",
]
