"""Lipschitz-regularised value functions for model-based RL (Zheng et al., ICLR 2023).

Building blocks: :func:`adversarial_value_penalty` (the adversarial-noise regulariser of the critic) and
:class:`SpectralCritic` (a critic on lipbound's certified spectral parametrisation, with a certified Lipschitz
constant in the state).
"""

from lipbound.rl.critic import SpectralCritic
from lipbound.rl.penalty import adversarial_value_penalty
from lipbound.rl.probe import critic_lipschitz_probe

__all__ = ["SpectralCritic", "adversarial_value_penalty", "critic_lipschitz_probe"]
