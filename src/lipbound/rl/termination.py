"""Known termination rules done(s') of gymnasium tasks, batched, for model rollouts (the model predicts s' and r
only). Tasks not listed never terminate in the model (correct for Pendulum; for other tasks it lets imagined
rollouts continue past a fall, a known approximation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _never(next_states: Tensor) -> Tensor:
    return torch.zeros(next_states.shape[0], dtype=torch.bool)


def _inverted_pendulum(next_states: Tensor) -> Tensor:
    # gymnasium InvertedPendulum: terminated = not (finite(obs) and |obs[1]| <= 0.2)
    return ~torch.isfinite(next_states).all(-1) | (next_states[:, 1].abs() > 0.2)


def _mountain_car(next_states: Tensor) -> Tensor:
    # gymnasium MountainCarContinuous: position >= 0.45 and velocity >= 0
    return (next_states[:, 0] >= 0.45) & (next_states[:, 1] >= 0)


def _hopper(next_states: Tensor) -> Tensor:
    # gymnasium Hopper (default healthy ranges): z > 0.7, |angle| < 0.2, |state[1:]| < 100
    z, angle = next_states[:, 0], next_states[:, 1]
    healthy = (z > 0.7) & (angle.abs() < 0.2) & (next_states[:, 1:].abs() < 100).all(-1)
    return ~(healthy & torch.isfinite(next_states).all(-1))


_RULES: dict[str, Callable[[Tensor], Tensor]] = {
    "InvertedPendulum": _inverted_pendulum,
    "MountainCarContinuous": _mountain_car,
    "Hopper": _hopper,
}


def termination_fn(env_id: str) -> Callable[[Tensor], Tensor]:
    """done(s') for ``env_id`` (its name before the version suffix), never-terminating if unknown."""
    return _RULES.get(env_id.split("-v")[0], _never)
