"""Weight Standardization, Batch-Channel Normalization and PowerNorm layers (lipbound.nn), against independent
references (closed forms, F.batch_norm, numpy re-implementations of the papers' algorithms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipbound
from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError
from lipbound.nn import BatchChannelNorm2d, PowerNorm, WSConv2d, WSLinear, standardize_weight

D = torch.float64


# ----------------------------------------------------------------------------------------------- Weight Standardization
def _ws_numpy(w: np.ndarray, eps: float, unbiased: bool = False, inside: bool = True) -> np.ndarray:
    r = w.reshape(w.shape[0], -1)
    c = r - r.mean(axis=1, keepdims=True)
    var = (c**2).sum(axis=1, keepdims=True) / (r.shape[1] - (1 if unbiased else 0))
    s = np.sqrt(var + eps) if inside else np.sqrt(var) + eps
    return (c / s).reshape(w.shape)


def test_ws_rows_mean_zero_variance_one():
    torch.manual_seed(0)
    m = WSConv2d(3, 5, 3, eps=1e-5).to(D)
    w = m.weight.detach().reshape(5, -1)
    v = w.var(dim=1, unbiased=False)
    wh = m.standardized_weight().detach().reshape(5, -1)
    assert torch.allclose(wh.mean(dim=1), torch.zeros(5, dtype=D), atol=1e-14)
    assert torch.allclose(wh.var(dim=1, unbiased=False), v / (v + 1e-5), atol=1e-13)
    wh0 = standardize_weight(m.weight.detach(), eps=0.0).reshape(5, -1)
    assert torch.allclose(wh0.var(dim=1, unbiased=False), torch.ones(5, dtype=D), atol=1e-13)


@pytest.mark.parametrize("unbiased,inside", [(False, True), (True, True), (True, False), (False, False)])
def test_ws_conventions_match_numpy(unbiased, inside):
    torch.manual_seed(1)
    w = torch.randn(4, 2, 3, 3, dtype=D)
    got = standardize_weight(w, 1e-3, unbiased=unbiased, eps_inside=inside).numpy()
    assert np.allclose(got, _ws_numpy(w.numpy(), 1e-3, unbiased, inside), atol=1e-13)


def test_ws_equals_batch_norm_on_weights():
    torch.manual_seed(2)
    m = WSConv2d(3, 6, 3, eps=1e-6).to(D)
    w = m.weight.detach()
    ref = F.batch_norm(w.reshape(1, 6, -1), None, None, training=True, momentum=0.0, eps=1e-6).reshape_as(w)
    assert torch.allclose(m.standardized_weight(), ref, atol=1e-13)
    x = torch.randn(2, 3, 7, 7, dtype=D)
    assert torch.allclose(m(x), F.conv2d(x, ref, m.bias), atol=1e-12)
    lin = WSLinear(5, 4).to(D)
    z = torch.randn(3, 5, dtype=D)
    ref_l = F.batch_norm(lin.weight.detach().reshape(1, 4, -1), None, None, training=True, eps=1e-5).reshape(4, 5)
    assert torch.allclose(lin(z), F.linear(z, ref_l, lin.bias), atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_ws_gradient_identity_and_finite_differences(eps):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 2, 2, 2, dtype=D, generator=gen, requires_grad=True)
    g = torch.randn(3, 2, 2, 2, dtype=D, generator=gen)
    (grad,) = torch.autograd.grad((standardize_weight(w, eps) * g).sum(), w)
    # closed form: (1/sigma) (g - mean(g) - <W_hat, g> W_hat / I)
    wn, gn = w.detach().reshape(3, -1), g.reshape(3, -1)
    n = wn.shape[1]
    c = wn - wn.mean(1, keepdim=True)
    sigma = torch.sqrt((c**2).mean(1, keepdim=True) + eps)
    wh = c / sigma
    closed = (gn - gn.mean(1, keepdim=True) - (wh * gn).sum(1, keepdim=True) * wh / n) / sigma
    assert torch.allclose(grad.reshape(3, -1), closed, atol=1e-12)
    assert torch.allclose(grad.reshape(3, -1).sum(1), torch.zeros(3, dtype=D), atol=1e-12)
    if eps == 0:
        assert torch.allclose((grad.reshape(3, -1) * wh).sum(1), torch.zeros(3, dtype=D), atol=1e-12)
    # central finite differences on every entry (the loss is smooth)
    h = 1e-6
    fd = torch.zeros(w.numel(), dtype=D)
    base = w.detach().reshape(-1)
    for k in range(w.numel()):
        e = torch.zeros_like(base)
        e[k] = h
        fp = (standardize_weight((base + e).reshape(w.shape), eps) * g).sum()
        fm = (standardize_weight((base - e).reshape(w.shape), eps) * g).sum()
        fd[k] = (fp - fm) / (2 * h)
    assert torch.allclose(fd, grad.reshape(-1), atol=1e-7)


def test_ws_bad_input():
    with pytest.raises(InvalidModelError, match="zero variance"):
        standardize_weight(torch.ones(2, 3, dtype=D), eps=0.0)
    with pytest.raises(InvalidInputError, match="eps"):
        WSLinear(3, 2, eps=-1.0)


def _ws_net() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(
        WSConv2d(1, 3, 3, padding=1, eps=1e-4),
        nn.ReLU(),
        nn.Flatten(),
        WSLinear(3 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    ).to(D)


def _plain_copy(net: nn.Module) -> nn.Module:
    ws_c, ws_l = net[0], net[3]
    conv = nn.Conv2d(1, 3, 3, padding=1).to(D)
    lin = nn.Linear(48, 5).to(D)
    with torch.no_grad():
        conv.weight.copy_(ws_c.standardized_weight())
        conv.bias.copy_(ws_c.bias)
        lin.weight.copy_(ws_l.standardized_weight())
        lin.bias.copy_(ws_l.bias)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin, nn.ReLU(), net[5]).to(D)


def test_ws_bounds_equal_plain_conv_with_standardized_weight():
    net = _ws_net().eval()
    plain = _plain_copy(net).eval()
    x0 = torch.randn(3, 1, 4, 4, dtype=D, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(net(x0), plain(x0), atol=1e-12)
    a = lipbound.local_lipschitz(net, x0, eps=0.05, lower=False)
    b = lipbound.local_lipschitz(plain, x0, eps=0.05, lower=False)
    assert torch.allclose(a.upper, b.upper, rtol=1e-9)
    # the raw weights give a different (wrong) bound: the engine must not see them
    raw = _plain_copy(net)
    with torch.no_grad():
        raw[0].weight.copy_(net[0].weight)
    assert not torch.allclose(lipbound.local_lipschitz(raw, x0, eps=0.05, lower=False).upper, a.upper, rtol=1e-3)
    ga = lipbound.global_lipschitz(net, input_shape=(1, 4, 4), method="product")
    gb = lipbound.global_lipschitz(plain, input_shape=(1, 4, 4), method="product")
    assert ga.upper == pytest.approx(gb.upper, rel=1e-9)


# ------------------------------------------------------------------------------------------ Batch-Channel Normalization
def test_bcn_estimates_converge_to_large_batch_statistics():
    gen = torch.Generator().manual_seed(6)
    mu = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D)
    sd = torch.tensor([0.5, 2.0, 1.0, 0.1], dtype=D)

    def draw(n):
        return mu.view(1, 4, 1, 1) + sd.view(1, 4, 1, 1) * torch.randn(n, 4, 3, 3, dtype=D, generator=gen)

    big = draw(4000)
    big_mean, big_var = big.mean(dim=(0, 2, 3)), big.var(dim=(0, 2, 3), unbiased=False)
    m = BatchChannelNorm2d(4, num_groups=2, momentum=0.02).to(D).train()
    for _ in range(1500):
        m(draw(1))  # micro-batch of one sample
    assert torch.allclose(m.running_mean, big_mean, atol=0.1 * sd.max().item() / 2)
    assert torch.allclose(m.running_var, big_var, rtol=0.15)


def test_bcn_no_gradient_through_estimates_and_eval_map():
    gen = torch.Generator().manual_seed(7)
    m = BatchChannelNorm2d(6, num_groups=3, momentum=0.3).to(D)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, dtype=D, generator=gen))
    x = torch.randn(2, 6, 3, 3, dtype=D, generator=gen, requires_grad=True)
    y = m.train()(x)
    g = torch.randn(y.shape, dtype=D, generator=gen)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    m.eval()
    x2 = x.detach().clone().requires_grad_(True)
    y2 = m(x2)  # the same map with the updated estimates held fixed
    assert torch.allclose(y, y2, atol=1e-12)
    (gx2,) = torch.autograd.grad((y2 * g).sum(), x2)
    assert torch.allclose(gx, gx2, atol=1e-12)
    # eval mode = stated map: per-channel affine a x + b, then per-sample group normalization, per-group affine
    a = m.weight / torch.sqrt(m.running_var + m.eps)
    b = m.bias - m.running_mean * a
    xh = (a.view(1, 6, 1, 1) * x + b.view(1, 6, 1, 1)).detach().numpy().reshape(2, 3, -1)
    mg, vg = xh.mean(axis=2, keepdims=True), xh.var(axis=2, keepdims=True)
    ref = m.group_weight.detach().numpy().reshape(1, 3, 1) * (xh - mg) / np.sqrt(vg + m.eps)
    ref = ref + m.group_bias.detach().numpy().reshape(1, 3, 1)
    assert np.allclose(y2.detach().numpy().reshape(2, 3, -1), ref, atol=1e-12)
    sa, sb = m.batch_affine()
    assert torch.allclose(sa, a) and torch.allclose(sb, b)


def test_bcn_bad_input():
    with pytest.raises(InvalidInputError, match="divide"):
        BatchChannelNorm2d(6, num_groups=4)
    with pytest.raises(ShapeMismatchError, match="expects"):
        BatchChannelNorm2d(4, num_groups=2)(torch.zeros(1, 3, 2, 2))
    m = BatchChannelNorm2d(4, num_groups=2, eps=0.0).eval()
    with pytest.raises(InvalidInputError, match="zero variance"):
        m(torch.ones(1, 4, 2, 2))


# ------------------------------------------------------------------------------------------------------------ PowerNorm
class _NumpyPowerNorm:
    """The paper's Algorithm (forward, approximate backward, warm-up as documented), written with numpy."""

    def __init__(self, c, alpha_f, alpha_b, eps, warmup, gamma, beta, code_form=False):
        self.phi, self.nu, self.ema_gz = np.ones(c), np.zeros(c), np.zeros(c)
        self.af, self.ab, self.eps, self.warmup, self.t = alpha_f, alpha_b, eps, warmup, 0
        self.gamma, self.beta, self.code_form = gamma, beta, code_form

    def step(self, x, valid, dy):
        """One training step on (M, C) rows; returns y, dL/dx, dL/dgamma, dL/dbeta for L = sum(dy * y)."""
        xv = x[valid]
        gh = self.gamma * dy
        if self.t < self.warmup:
            s = np.sqrt((xv**2).mean(axis=0) + self.eps)
            xhat = x / s
            dx = gh / s
            corr = (gh * xhat).sum(axis=0) / len(xv)  # d s / d x_j = x_j / (B s), valid j only
            dx[valid] -= xhat[valid] * corr / s
            self.phi = self.phi + ((xv**2).mean(axis=0) - self.phi) / (self.t + 1)
        else:
            s = np.sqrt(self.phi + self.eps)
            xhat = x / s
            hv, gv = xhat[valid], gh[valid]
            if self.code_form:  # ema_gz form: g~ = g - (1 - a) ema z, ema += mean(g~ z)
                dx = (gh - (1 - self.ab) * self.ema_gz * xhat) / s
                self.ema_gz = self.ema_gz + ((gv - (1 - self.ab) * self.ema_gz * hv) * hv).mean(axis=0)
            else:
                dx = (gh - self.nu * xhat) / s
                big_gamma, big_lambda = (hv**2).mean(axis=0), (hv * gv).mean(axis=0)
                self.nu = self.nu * (1 - (1 - self.ab) * big_gamma) + (1 - self.ab) * big_lambda
            self.phi = self.af * self.phi + (1 - self.af) * (xv**2).mean(axis=0)
        self.t += 1
        return self.gamma * xhat + self.beta, dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


@pytest.mark.parametrize("warmup,code_form", [(0, False), (4, False), (0, True)])
def test_powernorm_matches_numpy_reference_over_many_steps(warmup, code_form):
    rng = np.random.default_rng(8)
    c = 5
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    pn = PowerNorm(c, alpha_fwd=0.8, alpha_bkw=0.7, eps=1e-3, warmup_iters=warmup).to(D).train()
    with torch.no_grad():
        pn.weight.copy_(torch.from_numpy(gamma))
        pn.bias.copy_(torch.from_numpy(beta))
    ref = _NumpyPowerNorm(c, 0.8, 0.7, 1e-3, warmup, gamma, beta, code_form)
    for _ in range(30):
        t, b = 4, 3
        x = rng.normal(size=(t, b, c)) * rng.uniform(0.5, 3.0, size=c)
        mask = rng.uniform(size=(t, b)) < 0.3
        mask[0, 0] = False
        dy = rng.normal(size=(t, b, c))
        xt = torch.from_numpy(x).requires_grad_(True)
        pn.zero_grad()
        y = pn(xt, torch.from_numpy(mask))
        (y * torch.from_numpy(dy)).sum().backward()
        valid = ~mask.reshape(-1)
        ry, rdx, rdg, rdb = ref.step(x.reshape(-1, c), valid, dy.reshape(-1, c))
        assert np.allclose(y.detach().numpy().reshape(-1, c), ry, atol=1e-11)
        assert np.allclose(xt.grad.numpy().reshape(-1, c), rdx, atol=1e-11)
        assert np.allclose(pn.weight.grad.numpy(), rdg, atol=1e-10)
        assert np.allclose(pn.bias.grad.numpy(), rdb, atol=1e-10)
        assert np.allclose(pn.running_phi.numpy(), ref.phi, atol=1e-12)
        nu_ref = (1 - 0.7) * ref.ema_gz if code_form else ref.nu
        if ref.t > warmup:
            assert np.allclose(pn.running_nu.numpy(), nu_ref, atol=1e-12)
    pn.eval()
    x = rng.normal(size=(6, c))
    y = pn(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(y, gamma * x / np.sqrt(ref.phi + 1e-3) + beta, atol=1e-12)


@pytest.mark.parametrize("warmup", [0, 5])
def test_powernorm_padding_changes_nothing(warmup):
    gen = torch.Generator().manual_seed(9)
    a = PowerNorm(4, warmup_iters=warmup, scaling_groups=2).to(D).train()
    b = PowerNorm(4, warmup_iters=warmup, scaling_groups=2).to(D).train()
    for _ in range(8):
        x = torch.randn(5, 2, 4, dtype=D, generator=gen)
        mask = torch.rand(5, 2, generator=gen) < 0.4
        mask[0] = False
        x2 = torch.where(mask[..., None], 100 * torch.randn(5, 2, 4, dtype=D, generator=gen), x)
        xa, xb = x.clone().requires_grad_(True), x2.clone().requires_grad_(True)
        ya, yb = a(xa, mask), b(xb, mask)
        keep = (~mask)[..., None].to(D)
        (ya * keep).sum().backward()
        (yb * keep).sum().backward()
        assert torch.allclose(ya * keep, yb * keep, atol=1e-12)
        assert torch.allclose(xa.grad * keep, xb.grad * keep, atol=1e-12)
        assert torch.allclose(a.running_phi, b.running_phi, atol=1e-12)
        assert torch.allclose(a.running_nu, b.running_nu, atol=1e-12)


def test_powernorm_bad_input_and_bound_is_affine():
    pn = PowerNorm(4)
    with pytest.raises(ShapeMismatchError, match="mask shape"):
        pn(torch.zeros(3, 2, 4), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="bool"):
        pn(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ShapeMismatchError, match="expects"):
        pn(torch.zeros(3, 5))
    with pytest.raises(InvalidInputError, match="divide"):
        PowerNorm(6, scaling_groups=4)
    with pytest.raises(InvalidInputError, match="eps=0"):
        PowerNorm(3, eps=0.0, warmup_iters=1).train()(torch.zeros(4, 3))
    with pytest.raises(InvalidInputError, match="every token"):
        pn.train()(torch.zeros(2, 4), torch.ones(2, dtype=torch.bool))
    # eval-mode PowerNorm is the affine map gamma/sqrt(phi+eps) x + beta: the bound of Linear -> PN -> Linear
    torch.manual_seed(10)
    net = nn.Sequential(nn.Linear(3, 4), PowerNorm(4), nn.Linear(4, 1)).to(D)
    with torch.no_grad():
        net[1].running_phi.copy_(torch.tensor([0.5, 2.0, 1.0, 4.0]))
        net[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    net.eval()
    w = (net[2].weight * net[1].inference_scale()) @ net[0].weight
    r = lipbound.local_lipschitz(net, torch.zeros(1, 3, dtype=D), eps=0.1, lower=False)
    assert r.upper.item() == pytest.approx(w.abs().sum().item(), rel=1e-9)  # l_inf input -> l_1 gradient norm


def test_bcn_bound_equals_batchnorm_then_groupnorm_model():
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    bcn = BatchChannelNorm2d(4, num_groups=2).to(D)
    with torch.no_grad():
        for t in (*bcn.parameters(), bcn.running_mean):
            t.copy_(torch.randn(t.shape, dtype=D, generator=gen))
        bcn.running_var.copy_(torch.rand(4, dtype=D, generator=gen) + 0.5)
    conv, head = nn.Conv2d(1, 4, 3, padding=1).to(D), nn.Linear(4 * 4, 1).to(D)
    net = nn.Sequential(conv, bcn, nn.ReLU(), nn.Flatten(), head).eval()
    bn, gn = nn.BatchNorm2d(4).to(D), nn.GroupNorm(2, 4).to(D)
    with torch.no_grad():
        for a, b in (("weight", "weight"), ("bias", "bias"), ("running_mean", "running_mean")):
            getattr(bn, a).copy_(getattr(bcn, b))
        bn.running_var.copy_(bcn.running_var)
        gn.weight.copy_(bcn.group_weight.repeat_interleave(2))
        gn.bias.copy_(bcn.group_bias.repeat_interleave(2))
    ref = nn.Sequential(conv, bn, gn, nn.ReLU(), nn.Flatten(), head).eval()
    x0 = torch.randn(1, 1, 2, 2, dtype=D, generator=gen)
    assert torch.allclose(net(x0), ref(x0), atol=1e-12)
    a = lipbound.local_lipschitz(net, x0, eps=0.01, lower=False)
    b = lipbound.local_lipschitz(ref, x0, eps=0.01, lower=False)
    assert torch.allclose(a.upper, b.upper, rtol=1e-9)
    with pytest.raises(InvalidModelError, match="training mode"):
        lipbound.local_lipschitz(net.train(), x0, eps=0.01, lower=False)


def test_powernorm_group_scaling_bound_is_sound():
    gen = torch.Generator().manual_seed(12)
    torch.manual_seed(12)
    pn = PowerNorm(4, scaling_groups=2).to(D)
    with torch.no_grad():
        pn.running_phi.copy_(torch.rand(4, dtype=D, generator=gen) + 0.5)
        pn.weight.copy_(torch.randn(4, dtype=D, generator=gen))
    net = nn.Sequential(nn.Linear(3, 4), pn, nn.Tanh(), nn.Linear(4, 1)).to(D).eval()
    x0 = torch.randn(2, 3, dtype=D, generator=gen)
    r = lipbound.local_lipschitz(net, x0, eps=0.05)
    xs = (x0[:, None] + 0.05 * (2 * torch.rand(2, 500, 3, dtype=D, generator=gen) - 1)).requires_grad_(True)
    (g,) = torch.autograd.grad(net(xs).sum(), xs)
    sampled = g.abs().sum(-1).amax(1)  # l_inf input: l_1 norm of the gradient
    assert bool((sampled <= r.upper.reshape(-1) * (1 + 1e-9)).all())
    assert bool((r.lower.reshape(-1) <= r.upper.reshape(-1)).all())


def test_global_bounds_powernorm_as_affine_and_refusals():
    torch.manual_seed(13)
    pn = PowerNorm(4).to(D)
    bn = nn.BatchNorm1d(4, eps=pn.eps).to(D)
    with torch.no_grad():
        pn.running_phi.copy_(torch.tensor([0.5, 2.0, 1.0, 4.0]))
        pn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        pn.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.0]))
        bn.running_mean.zero_()
        bn.running_var.copy_(pn.running_phi)
        bn.weight.copy_(pn.weight)
        bn.bias.copy_(pn.bias)
    l1, l2 = nn.Linear(3, 4).to(D), nn.Linear(4, 2).to(D)
    net = nn.Sequential(l1, pn, nn.ReLU(), l2).eval()
    ref = nn.Sequential(l1, bn, nn.ReLU(), l2).eval()
    x = torch.randn(5, 3, dtype=D)
    assert torch.allclose(net(x), ref(x), atol=1e-12)
    a = lipbound.global_lipschitz(net, method="product")
    b = lipbound.global_lipschitz(ref, method="product")
    assert a.upper == pytest.approx(b.upper, rel=1e-9)
    gs = nn.Sequential(nn.Linear(3, 4), PowerNorm(4, scaling_groups=2), nn.ReLU(), nn.Linear(4, 1)).to(D).eval()
    with pytest.raises(lipbound.errors.UnsupportedOperatorError, match="GroupScaling"):
        lipbound.global_lipschitz(gs)
    bcn = nn.Sequential(nn.Conv2d(1, 4, 3), BatchChannelNorm2d(4, 2), nn.Flatten(), nn.Linear(16, 1)).to(D).eval()
    with pytest.raises(lipbound.errors.UnsupportedOperatorError, match="not globally Lipschitz"):
        lipbound.global_lipschitz(bcn, input_shape=(1, 4, 4))
