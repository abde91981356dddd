"""Tests of the MBPO agent of lipbound.rl: components against references, determinism, learning, CLI, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lipbound.errors import InvalidInputError
from lipbound.rl.agent import MBPOConfig, _random_transitions, train_mbpo
from lipbound.rl.buffer import Batch, ReplayBuffer
from lipbound.rl.dynamics import GaussianDynamics
from lipbound.rl.networks import MLPCritic, TanhGaussianPolicy
from lipbound.rl.probe import critic_lipschitz_probe
from lipbound.rl.sac import SACConfig
from lipbound.rl.termination import termination_fn

torch.set_num_threads(1)


def _tiny(**kw) -> MBPOConfig:
    base = dict(
        steps=60,
        init_steps=30,
        model_train_freq=30,
        rollout_batch=64,
        updates_per_step=1,
        eval_interval=30,
        eval_episodes=1,
        probe_states=8,
        model_hidden=(16,),
        model_max_epochs=2,
        validation_transitions=50,
        sac=SACConfig(hidden=(16,), batch_size=32),
    )
    base.update(kw)
    return MBPOConfig(**base)


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    pol = TanhGaussianPolicy(3, 2, torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), hidden=(8,))
    s = torch.randn(5, 3)
    a, logp = pol.sample(s, torch.Generator().manual_seed(1))
    mu, log_std = pol._dist(s)
    centre, half = pol.centre, pol.half_width
    u = torch.atanh((a - centre) / half)
    ref = torch.distributions.Normal(mu, log_std.exp()).log_prob(u).sum(-1)
    ref = ref - torch.log(half * (1 - torch.tanh(u) ** 2)).sum(-1)
    assert torch.allclose(logp, ref, atol=1e-3)
    assert bool(((a >= torch.tensor([-2.0, 0.0])) & (a <= torch.tensor([2.0, 1.0]))).all())


def test_replay_buffer_ring_order_and_capacity():
    buf = ReplayBuffer(4, 1, 1)
    for k in range(6):
        x = torch.tensor([[float(k)]])
        buf.add(Batch(x, x, x[0], x, torch.zeros(1)))
    assert len(buf) == 4
    assert sorted(buf.all().states.flatten().tolist()) == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(InvalidInputError, match="empty"):
        ReplayBuffer(2, 1, 1).sample(3)


def test_dynamics_one_step_error_falls_with_training():
    data = _random_transitions("Pendulum-v1", 600, seed=3)
    val = _random_transitions("Pendulum-v1", 300, seed=4)
    model = GaussianDynamics(3, 1, n_members=3, n_elites=2, hidden=(32, 32), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.fit(data, opt, gen, max_epochs=1)
    first = float(model.holdout_mse(val)[model.elites].mean())
    model.fit(data, opt, gen, max_epochs=30, patience=30)
    last = float(model.holdout_mse(val)[model.elites].mean())
    # predicting zero change is the naive reference: training must beat it and improve on its own start
    naive = float(torch.cat([val.next_states - val.states, val.rewards[:, None]], -1).pow(2).mean())
    assert last < 0.5 * first and last < 0.1 * naive
    s2, r = model.sample(val.states[:10], val.actions[:10], gen)
    assert s2.shape == (10, 3) and r.shape == (10,)
    assert int(model.elites.numel()) == 2


def test_termination_rules():
    done = termination_fn("InvertedPendulum-v5")
    s = torch.tensor([[0.0, 0.1, 0.0, 0.0], [0.0, -0.3, 0.0, 0.0], [float("nan"), 0.0, 0.0, 0.0]])
    assert done(s).tolist() == [False, True, True]
    assert termination_fn("Pendulum-v1")(s).tolist() == [False, False, False]


def test_probe_with_per_state_actions_is_sound_and_matches_fixed_action():
    torch.manual_seed(5)
    critic = MLPCritic(3, 1, hidden=(16, 16))
    s, a = torch.randn(6, 3), torch.randn(6, 1)
    out = critic_lipschitz_probe(critic, s, eps=0.1, actions=a)
    # attained state gradients at random points of each box never exceed the certified bound
    pts = (s[None] + 0.1 * (2 * torch.rand(50, 6, 3) - 1)).reshape(-1, 3).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(pts, a.repeat(50, 1)).sum(), pts)
    assert float(g.norm(dim=-1).max()) <= out["local_upper"] * (1 + 1e-6)
    assert out["local_lower"] <= out["local_upper"] * (1 + 1e-9) <= out["global_upper"] * (1 + 1e-6)
    # a single state with its own action = the fixed-action network at that action
    one = critic_lipschitz_probe(critic, s[:1], action=a[0], eps=0.1)
    both = critic_lipschitz_probe(critic, s[:1], eps=0.1, actions=a[:1])
    assert both["local_upper"] == pytest.approx(one["local_upper"], rel=1e-6)


def test_short_run_is_deterministic():
    r1 = train_mbpo(_tiny(seed=7))
    r2 = train_mbpo(_tiny(seed=7))
    assert [e["return"] for e in r1.evaluations] == [e["return"] for e in r2.evaluations]
    assert [e["critic_lipschitz"] for e in r1.evaluations] == [e["critic_lipschitz"] for e in r2.evaluations]
    assert r1.episode_returns == r2.episode_returns
    r3 = train_mbpo(_tiny(seed=8))
    assert [e["return"] for e in r3.evaluations] != [e["return"] for e in r1.evaluations]
    for e in r1.evaluations:
        assert e["critic_local_lower"] <= e["critic_lipschitz"] * (1 + 1e-9) <= e["critic_global_upper"] * (1 + 1e-6)


@pytest.mark.parametrize("reg", ["adversarial", "spectral"])
def test_regularised_variants_run_and_spectral_is_certified(reg):
    res = train_mbpo(
        _tiny(
            model="ensemble",
            n_members=3,
            n_elites=2,
            sac=SACConfig(hidden=(16,), batch_size=32, reg=reg, spectral_scale=5.0),
        )
    )
    last = res.evaluations[-1]
    assert math.isfinite(last["return"])
    if reg == "spectral":  # Lip_2(s -> Q) <= scale, certified, whatever was learnt
        assert last["critic_global_upper"] <= 5.0 * (1 + 1e-6)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(InvalidInputError, match="eps must be >= 0"):
        train_mbpo(_tiny(sac=SACConfig(reg="adversarial", adv_eps=-0.1)))
    with pytest.raises(InvalidInputError, match="unknown or unavailable gymnasium env"):
        train_mbpo(_tiny(env_id="NoSuchEnv-v0"))
    with pytest.raises(InvalidInputError, match="Discrete action space"):
        train_mbpo(_tiny(env_id="CartPole-v1"))
    with pytest.raises(InvalidInputError, match="unknown critic regulariser"):
        train_mbpo(_tiny(sac=SACConfig(reg="dropout")))
    with pytest.raises(InvalidInputError, match="unknown dynamics model"):
        train_mbpo(_tiny(model="gp"))


def test_cli_train_writes_json_and_plot(tmp_path):
    from lipbound.cli import app

    out, png = tmp_path / "run.json", tmp_path / "run.png"
    args = ["rl", "train", "--steps", "40", "--init-steps", "20", "--model-train-freq", "20", "--eval-interval", "20"]
    args += ["--updates-per-step", "1", "--hidden", "8", "--eval-episodes", "1", "--probe-states", "4"]
    res = CliRunner().invoke(app, [*args, "--reg", "spectral", "--json", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    rows = payload["evaluations"]
    assert [r["step"] for r in rows] == [20, 40]
    assert all(np.isfinite(r["return"]) and r["critic_lipschitz"] > 0 for r in rows)
    assert png.stat().st_size > 1000
    bad = CliRunner().invoke(app, ["rl", "train", "--env", "CartPole-v1", "--steps", "10"])
    assert bad.exit_code == 2
    assert "Discrete" in bad.output and "Traceback" not in bad.output
    neg = CliRunner().invoke(app, ["rl", "train", "--reg", "adversarial", "--adv-eps", "-1", "--steps", "10"])
    assert neg.exit_code == 2 and "eps" in neg.output


def test_short_run_improves_over_random_on_inverted_pendulum():
    # Pendulum-v1 needs ~1.5-2k steps before its swing-up appears (measured), too slow for a unit test; the
    # smallest honest learning check is InvertedPendulum-v5 (MuJoCo): 500 steps, 5 SAC updates per step, 32 units
    # (seeds 0, 1, 2 measured: 40, 29, 55 against random 4.6, 6.2, 8.0)
    cfg = MBPOConfig(
        env_id="InvertedPendulum-v5",
        steps=500,
        init_steps=100,
        model_train_freq=100,
        rollout_batch=1000,
        updates_per_step=5,
        eval_interval=500,
        eval_episodes=5,
        probe_states=16,
        model_hidden=(64, 64),
        sac=SACConfig(hidden=(32, 32), batch_size=128),
    )
    res = train_mbpo(cfg)
    final = res.evaluations[-1]["return"]
    assert final > 3 * res.random_return and final > res.random_return + 15
    # the model's one-step error on fixed random-policy transitions falls from the first fit to the last
    assert res.model_fits[-1]["validation_mse"] < res.model_fits[0]["validation_mse"]
