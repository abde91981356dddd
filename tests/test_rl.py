"""Tests of lipbound.rl: adversarial value penalty against closed forms; spectral critic certified constants."""

import pytest
import torch

import lipbound
from lipbound.errors import InvalidInputError
from lipbound.rl import SpectralCritic, adversarial_value_penalty


@pytest.fixture(autouse=True)
def _float64():
    """float64 for this module only (restored afterwards, so other test modules keep float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _linear_q(w):
    return lambda s, a: s @ w + a.sum(-1)


def test_penalty_zero_for_constant_critic():
    s, a = torch.randn(8, 3), torch.randn(8, 2)
    pen = adversarial_value_penalty(lambda s, a: torch.full((s.shape[0],), 4.0) + 0 * s.sum(-1), s, a, eps=0.3)
    assert float(pen) == 0.0


@pytest.mark.parametrize("norm,dual", [("inf", 1), (2, 2)])
def test_penalty_linear_closed_form_and_grows_with_slope(norm, dual):
    torch.manual_seed(0)
    s, a = torch.randn(16, 4), torch.randn(16, 1)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    eps = 0.1
    values = []
    for k in (1.0, 2.0, 4.0):
        pen, delta = adversarial_value_penalty(_linear_q(k * w), s, a, eps=eps, steps=10, norm=norm, return_delta=True)
        exact = (eps * torch.linalg.vector_norm(k * w, ord=dual)) ** 2
        # PGD is a lower bound on the inner max; l_inf sign steps reach the maximising corner exactly
        assert float(pen) <= float(exact) * (1 + 1e-9)
        assert float(pen) >= float(exact) * (1 - 1e-6 if norm == "inf" else 0.95)
        values.append(float(pen))
        n = delta.abs().amax(-1) if norm == "inf" else delta.norm(dim=-1)
        assert bool((n <= eps * (1 + 1e-9)).all())
    assert values[0] < values[1] < values[2]


def test_penalty_differentiable_in_theta_not_delta():
    torch.manual_seed(1)
    net = torch.nn.Linear(3, 1)
    s, a = torch.randn(5, 2), torch.randn(5, 1)
    pen = adversarial_value_penalty(lambda s, a: net(torch.cat([s, a], -1)), s, a, eps=0.2, steps=3)
    pen.backward()
    # d/dW of (w_s . delta)^2 averaged: state columns get gradient, the action column none
    assert net.weight.grad[0, :2].abs().sum() > 0
    assert float(net.weight.grad[0, 2]) == pytest.approx(0.0, abs=1e-12)


def test_penalty_bad_inputs():
    s, a = torch.randn(4, 2), torch.randn(4, 1)
    q = _linear_q(torch.ones(2))
    with pytest.raises(InvalidInputError, match="eps"):
        adversarial_value_penalty(q, s, a, eps=-0.1)
    with pytest.raises(InvalidInputError, match="norm"):
        adversarial_value_penalty(q, s, a, eps=0.1, norm=1)
    with pytest.raises(InvalidInputError, match="actions"):
        adversarial_value_penalty(q, s, torch.randn(3, 1), eps=0.1)


def test_spectral_critic_certified_constant_and_global_lipschitz():
    torch.manual_seed(2)
    critic = SpectralCritic(3, 1, hidden=(16, 16), scale=5.0)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    s, a = torch.randn(64, 3), torch.randn(64, 1)
    target = 20 * s[:, 0]
    for _ in range(20):
        critic.train()
        loss = (critic(s, a) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bounds = critic.layer_bounds()
    assert all(b <= 1 + 1e-9 for b in bounds)
    product = critic.state_lipschitz_product()
    assert product <= 5.0 * (1 + 1e-9)
    plain = critic.state_network(a[0])
    # the plain state network equals the critic at the fixed action
    with torch.no_grad():
        diff = critic(s, a[:1].expand(64, 1)) - plain(s).squeeze(-1)
    assert float(diff.abs().max()) < 1e-9
    res = lipbound.global_lipschitz(plain, norm=2, method="product")
    assert res.upper == pytest.approx(product, rel=1e-4)
    # attained lower bound: gradient norms never exceed the certified constant
    x = torch.randn(256, 3, requires_grad=True)
    (g,) = torch.autograd.grad(plain(x).sum(), x)
    assert float(g.norm(dim=-1).max()) <= product * (1 + 1e-9)


def test_probe_orders_lower_local_global():
    from lipbound.rl.probe import critic_lipschitz_probe

    torch.manual_seed(3)
    critic = SpectralCritic(3, 1, hidden=(8,), scale=3.0)
    out = critic_lipschitz_probe(critic, torch.randn(4, 3), eps=0.1, norm=2)
    assert 0 < out["local_lower"] <= out["local_upper"] * (1 + 1e-9)
    assert out["local_upper"] <= out["global_upper"] * (1 + 1e-6)
    assert out["global_upper"] == pytest.approx(critic.state_lipschitz_product(), rel=1e-4)
    with pytest.raises(InvalidInputError, match="eps"):
        critic_lipschitz_probe(critic, torch.randn(4, 3), eps=-1.0)


def test_env_checks():
    from lipbound.rl.env import make_continuous_env

    env = make_continuous_env("Pendulum-v1", seed=0)
    assert env.action_space.shape == (1,)
    env.close()
    with pytest.raises(InvalidInputError, match="unknown"):
        make_continuous_env("NoSuchEnv-v9")
    with pytest.raises(InvalidInputError, match="Discrete"):
        make_continuous_env("CartPole-v1")
