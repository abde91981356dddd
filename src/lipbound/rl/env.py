"""Environment construction with checks: a gymnasium id with a continuous (Box) action space, seeded."""

from __future__ import annotations

from lipbound.errors import InvalidInputError


def make_continuous_env(env_id: str, seed: int = 0):
    """``gymnasium.make(env_id)`` reset with ``seed``; raises InvalidInputError for an unknown id or a
    non-Box (e.g. discrete) action space, since SAC needs continuous actions."""
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise InvalidInputError(f"unknown or unavailable gymnasium env id {env_id!r}: {err}") from err
    if not isinstance(env.action_space, gym.spaces.Box):
        kind = type(env.action_space).__name__
        env.close()
        raise InvalidInputError(f"env {env_id!r} has a {kind} action space; SAC needs a continuous Box action space")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        env.close()
        raise InvalidInputError(f"env {env_id!r} needs a flat Box observation space")
    env.reset(seed=int(seed))
    env.action_space.seed(int(seed))
    return env
