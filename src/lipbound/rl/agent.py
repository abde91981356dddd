"""A compact MBPO-style agent (Janner et al. 2019) with one dynamics model or an ensemble, and a switchable
Lipschitz regulariser of the critic (Zheng et al. 2023).

Loop, per real environment step t:
  1. act (uniformly random for the first ``init_steps`` steps, then a ~ pi(.|s)), store (s, a, r, s', done) in D_env;
  2. every ``model_train_freq`` steps from ``init_steps`` on: fit the Gaussian dynamics model on D_env, then start
     ``rollout_batch`` branched rollouts of length ``rollout_length`` from states of D_env under the current policy
     and store them in D_model (keeps the last ``model_retain`` rounds);
  3. ``updates_per_step`` SAC updates on batches mixing a fraction ``real_ratio`` from D_env and the rest from D_model;
  4. every ``eval_interval`` steps: mean return of the deterministic policy over ``eval_episodes`` fixed-seed episodes,
     the certified Lipschitz constants of the critics in the state over replay states (probe), and the model's
     one-step error on a fixed validation set of random-policy transitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from lipbound.errors import InvalidInputError
from lipbound.rl.buffer import Batch, ReplayBuffer, cat_batches
from lipbound.rl.dynamics import GaussianDynamics
from lipbound.rl.env import make_continuous_env
from lipbound.rl.probe import critic_lipschitz_probe
from lipbound.rl.sac import SAC, SACConfig
from lipbound.rl.termination import termination_fn

MODELS = ("single", "ensemble")
EVAL_SEED_OFFSET = 10_000  # evaluation episodes use seeds seed + EVAL_SEED_OFFSET + k, the same at every evaluation


@dataclass
class MBPOConfig:
    env_id: str = "Pendulum-v1"
    model: str = "single"  # "single": one Gaussian network; "ensemble": n_members with n_elites
    steps: int = 3000
    seed: int = 0
    sac: SACConfig = field(default_factory=SACConfig)
    n_members: int = 5
    n_elites: int = 3
    model_hidden: tuple[int, ...] = (200, 200)
    model_lr: float = 1e-3
    model_weight_decay: float = 5e-5
    model_max_epochs: int = 20
    init_steps: int = 250
    model_train_freq: int = 250
    rollout_batch: int = 5000
    rollout_length: int = 1
    model_retain: int = 4
    updates_per_step: int = 5
    real_ratio: float = 0.05
    eval_interval: int = 500
    eval_episodes: int = 3
    probe_states: int = 64
    probe_eps: float = 0.05
    probe_norm: str = "2"
    probe_global: str = "product"
    validation_transitions: int = 500

    def validate(self) -> None:
        if self.model not in MODELS:
            raise InvalidInputError(f"unknown dynamics model {self.model!r}; choose one of {MODELS}")
        names = (
            "steps",
            "model_train_freq",
            "rollout_batch",
            "rollout_length",
            "eval_interval",
            "validation_transitions",
        )
        for name in names:
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("updates_per_step", "eval_episodes", "probe_states", "model_retain", "model_max_epochs"):
            if int(getattr(self, name)) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.init_steps < 2:
            raise InvalidInputError(f"init_steps must be >= 2 (the model needs data), got {self.init_steps}")
        if not 0 <= self.real_ratio <= 1:
            raise InvalidInputError(f"real_ratio must be in [0, 1], got {self.real_ratio}")
        if not self.probe_eps > 0:
            raise InvalidInputError(f"probe eps must be > 0, got {self.probe_eps}")
        if self.model == "ensemble" and not 1 <= self.n_elites <= self.n_members:
            raise InvalidInputError(f"need 1 <= n_elites <= n_members, got {self.n_elites}, {self.n_members}")
        self.sac.validate()


@dataclass
class TrainResult:
    config: dict
    evaluations: list[dict]  # per evaluation point: step, return, critic_lipschitz (certified), ...
    episode_returns: list[tuple[int, float]]  # (step at episode end, return) of the training episodes
    model_fits: list[dict]  # per model fit: step, epochs, holdout/validation one-step MSE
    random_return: float  # mean return of uniformly random actions on the evaluation episodes
    wall_seconds: float
    train_seconds: float  # wall time minus evaluation and probing: the cost of learning

    def to_dict(self) -> dict:
        return asdict(self)


def _tensor(x, dtype=torch.float32) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _episode_return(env, seed: int, policy: Callable[[np.ndarray], np.ndarray]) -> float:
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, r, terminated, truncated, _ = env.step(policy(obs))
        total += float(r)
        done = terminated or truncated
    return total


def _evaluate(env, agent: SAC, seeds: list[int]) -> tuple[float, float]:
    act = lambda o: agent.act(_tensor(o).unsqueeze(0), deterministic=True)[0].numpy()  # noqa: E731
    returns = [_episode_return(env, s, act) for s in seeds]
    return float(np.mean(returns)), float(np.std(returns))


def _random_transitions(env_id: str, n: int, seed: int) -> Batch:
    env = make_continuous_env(env_id, seed)
    rows = []
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        a = env.action_space.sample()
        nxt, r, terminated, truncated, _ = env.step(a)
        rows.append((obs, a, r, nxt, float(terminated)))
        obs = env.reset()[0] if terminated or truncated else nxt
    env.close()
    s, a, r, s2, d = zip(*rows, strict=True)
    return Batch(_tensor(s), _tensor(a), _tensor(r), _tensor(s2), _tensor(d))


def _rollouts(
    model: GaussianDynamics, agent: SAC, starts: Tensor, length: int, done_fn, generator: torch.Generator
) -> Batch | None:
    """Branched rollouts of ``length`` model steps from ``starts`` under pi; terminated branches stop."""
    out: list[Batch] = []
    s = starts
    for _ in range(length):
        if s.shape[0] == 0:
            break
        a = agent.act(s, generator=generator)
        s2, r = model.sample(s, a, generator)
        done = done_fn(s2)
        out.append(Batch(s, a, r, s2, done.to(s.dtype)))
        s = s2[~done]
    if not out:
        return None
    return Batch(*(torch.cat(x) for x in zip(*out, strict=True)))


def _probe(agent: SAC, real: ReplayBuffer, cfg: MBPOConfig, generator: torch.Generator) -> dict:
    """Certified Lipschitz constants of s -> Q_j(s, a) over replay (s, a); max over the twin critics, which also
    bounds min(Q_1, Q_2)."""
    batch = real.sample(cfg.probe_states, generator)
    probes = [
        critic_lipschitz_probe(
            q,
            batch.states,
            eps=cfg.probe_eps,
            norm=cfg.probe_norm,
            global_method=cfg.probe_global,
            actions=batch.actions,
        )
        for q in agent.critics
    ]
    keys = ("local_upper", "local_upper_mean", "local_lower", "global_upper")
    return {k: max(p[k] for p in probes) for k in keys}


def train_mbpo(config: MBPOConfig, callback: Callable[[dict], None] | None = None) -> TrainResult:
    """Run MBPO with ``config``; ``callback`` receives dicts with ``type`` in {"step", "episode", "eval", "model"}."""
    config.validate()
    cfg = config
    emit = callback or (lambda _: None)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    probe_gen = torch.Generator().manual_seed(cfg.seed + 1)  # measurements never perturb the training stream
    env = make_continuous_env(cfg.env_id, cfg.seed)
    eval_env = make_continuous_env(cfg.env_id, cfg.seed + EVAL_SEED_OFFSET)
    eval_seeds = [cfg.seed + EVAL_SEED_OFFSET + k for k in range(cfg.eval_episodes)]
    d_s, d_a = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = _tensor(env.action_space.low), _tensor(env.action_space.high)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise InvalidInputError(f"env {cfg.env_id!r} has an unbounded action space; SAC needs a bounded Box")
    done_fn = termination_fn(cfg.env_id)

    agent = SAC(d_s, d_a, low, high, cfg.sac).float()  # float32 throughout, whatever the default dtype
    n_members, n_elites = (cfg.n_members, cfg.n_elites) if cfg.model == "ensemble" else (1, 1)
    model = GaussianDynamics(d_s, d_a, n_members, n_elites, cfg.model_hidden, seed=cfg.seed).float()
    model_opt = torch.optim.AdamW(model.parameters(), lr=cfg.model_lr, weight_decay=cfg.model_weight_decay)
    real = ReplayBuffer(cfg.steps, d_s, d_a)
    imagined = ReplayBuffer(cfg.rollout_batch * cfg.rollout_length * max(cfg.model_retain, 1), d_s, d_a)
    validation = _random_transitions(cfg.env_id, cfg.validation_transitions, cfg.seed + 2 * EVAL_SEED_OFFSET)

    rng = np.random.default_rng(cfg.seed)
    rand_act = lambda _o: rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)  # noqa: E731
    random_return = float(np.mean([_episode_return(eval_env, s, rand_act) for s in eval_seeds])) if eval_seeds else 0.0

    evaluations: list[dict] = []
    episodes: list[tuple[int, float]] = []
    fits: list[dict] = []
    measure_seconds = time.perf_counter() - t_start
    obs, _ = env.reset(seed=cfg.seed)
    ep_return, n_real = 0.0, max(round(cfg.sac.batch_size * cfg.real_ratio), 0)
    for t in range(cfg.steps):
        s = _tensor(obs)
        a = env.action_space.sample() if t < cfg.init_steps else agent.act(s.unsqueeze(0), generator=gen)[0].numpy()
        nxt, r, terminated, truncated, _ = env.step(a)
        real.add(Batch(s[None], _tensor(a)[None], _tensor([r]), _tensor(nxt)[None], _tensor([float(terminated)])))
        ep_return += float(r)
        obs = nxt
        if terminated or truncated:
            episodes.append((t + 1, ep_return))
            emit({"type": "episode", "step": t + 1, "return": ep_return})
            obs, _ = env.reset()
            ep_return = 0.0
        step = t + 1
        if step >= cfg.init_steps and (step - cfg.init_steps) % cfg.model_train_freq == 0:
            fit = model.fit(real.all(), model_opt, gen, max_epochs=cfg.model_max_epochs)
            val = float(model.holdout_mse(validation)[model.elites].mean())
            fits.append({"step": step, "epochs": fit.epochs, "holdout_mse": fit.elite_mse, "validation_mse": val})
            emit({"type": "model", **fits[-1]})
            new = _rollouts(model, agent, real.sample(cfg.rollout_batch, gen).states, cfg.rollout_length, done_fn, gen)
            if new is not None:
                imagined.add(new)
        if step >= cfg.init_steps and len(imagined) > 0:
            for _ in range(cfg.updates_per_step):
                batch = imagined.sample(cfg.sac.batch_size - n_real, gen)
                if n_real > 0:
                    batch = cat_batches(real.sample(n_real, gen), batch)
                agent.update(batch, gen)
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            t0 = time.perf_counter()
            ret, ret_std = _evaluate(eval_env, agent, eval_seeds) if eval_seeds else (float("nan"), 0.0)
            lip = _probe(agent, real, cfg, probe_gen) if cfg.probe_states > 0 else {}
            val = float(model.holdout_mse(validation)[model.elites].mean()) if fits else float("nan")
            measure_seconds += time.perf_counter() - t0
            row = {
                "step": step,
                "return": ret,
                "return_std": ret_std,
                "critic_lipschitz": lip.get("local_upper", float("nan")),
                "critic_local_upper_mean": lip.get("local_upper_mean", float("nan")),
                "critic_local_lower": lip.get("local_lower", float("nan")),
                "critic_global_upper": lip.get("global_upper", float("nan")),
                "model_validation_mse": val,
                "probe_seconds": time.perf_counter() - t0,
                "wall_seconds": time.perf_counter() - t_start,
            }
            evaluations.append(row)
            emit({"type": "eval", **row})
        emit({"type": "step", "step": step})
    env.close()
    eval_env.close()
    wall = time.perf_counter() - t_start
    return TrainResult(asdict(cfg), evaluations, episodes, fits, random_return, wall, wall - measure_seconds)
