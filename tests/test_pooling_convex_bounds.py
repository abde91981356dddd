"""Certified local bounds through MaxPool2d, Hardtanh / ReLU6 / clamp (exact ReLU lowerings) and Softplus / ELU.

The lowered graph must compute the model exactly (forward values and autograd Jacobians at random points), the
bounds must dominate sampled gradient norms (l_inf and l2, plain and optimised), and an exact lowering must give
a bound equal to the attained one on a box where every ReLU of the lowering is stable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lipbound
from lipbound.engine.jacobian import build_jacobian_graph
from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.problem import as_graph

D = torch.float64


class FunctionalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(3 * 3 * 3, 2)

    def forward(self, x):
        y = F.max_pool2d(torch.tanh(self.conv(x)), (2, 3), stride=(2, 2), padding=(1, 1))
        return self.fc(y.flatten(1))


class Clamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        h = torch.cat([h[:, :2].clamp(min=-0.2), torch.clamp(h[:, 2:4], max=0.3), F.relu6(3 * h[:, 4:])], 1)
        return self.b(F.hardtanh(h, -0.5, 0.8))


class Layout(nn.Module):
    """Slices (steps, Ellipsis, ints, index tensors), permute / transpose, stack, squeeze / unsqueeze, cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2)
        self.fc = nn.Linear(29, 2)

    def forward(self, x):
        h = torch.tanh(self.conv(x))  # (3, 4, 5)
        a = h[:, :, ::2, 1:4]  # (3, 2, 3)
        b = h.permute(0, 2, 3, 1)[..., 0]  # (4, 5)
        c = torch.stack([b[:, 1], b[:, 3]], dim=-1)  # (5, 2)
        d = h.transpose(1, 3)[:, torch.tensor([4, 0, 2])].unsqueeze(1).squeeze(1)  # (3, 4, 3)
        e = torch.cat([a.flatten(1), c.flatten(1), d.flatten(1)[:, :1]], dim=1)  # 18 + 10 + 1
        return self.fc(e)


class BadClamp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x).clamp(1.0, 0.0)


def _nets() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "maxpool2": (
            nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 2)),
            (1, 8, 8),
        ),
        "maxpool3 s2 p1 ceil": (
            nn.Sequential(
                nn.Conv2d(1, 2, 3),
                nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                nn.Flatten(),
                nn.Linear(2 * 3 * 3, 2),
            ),
            (1, 7, 7),
        ),
        "maxpool overlapping 3x3 s1": (
            nn.Sequential(nn.Conv2d(1, 2, 2), nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(2 * 2 * 2, 1)),
            (1, 5, 5),
        ),
        "functional pool (2,3)": (FunctionalPool(), (2, 5, 6)),
        "hardtanh": (nn.Sequential(nn.Linear(3, 5), nn.Hardtanh(-0.5, 0.7), nn.Linear(5, 2)), (3,)),
        "relu6": (nn.Sequential(nn.Linear(3, 5), nn.ReLU6(), nn.Linear(5, 2)), (3,)),
        "clamp family": (Clamps(), (3,)),
        "layout": (Layout(), (2, 5, 6)),
        "softplus": (nn.Sequential(nn.Linear(3, 5), nn.Softplus(2.0), nn.Linear(5, 2)), (3,)),
        "softplus switch": (nn.Sequential(nn.Linear(3, 5), nn.Softplus(1.0, threshold=0.5), nn.Linear(5, 2)), (3,)),
        "elu": (nn.Sequential(nn.Linear(3, 5), nn.ELU(0.7), nn.Linear(5, 4), nn.ELU(), nn.Linear(4, 2)), (3,)),
    }


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    model, shape = _nets()[name]
    return model.double().eval(), shape


@pytest.mark.parametrize("name", list(_nets()))
def test_lowered_graph_computes_the_model_and_its_jacobian(name: str) -> None:
    model, shape = _model(name)
    graph = as_graph(model, shape, D, "cpu")
    x = torch.randn(5, *shape, dtype=D, generator=torch.Generator().manual_seed(2)) * 2
    torch.testing.assert_close(graph(x).reshape(5, -1), model(x).reshape(5, -1), rtol=1e-12, atol=1e-12)
    c = torch.randn(5, graph.output.numel, dtype=D)
    back, g_x = build_jacobian_graph(graph, c)
    mine = back.forward(x)[id(g_x)]
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((model(xr).reshape(5, -1) * c).sum(), xr)
    torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


def _sampled_max(model: nn.Module, x0: torch.Tensor, eps: float, norm: str, n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    xs = (x0 + eps * (2 * torch.rand(n, *x0.shape[1:], generator=g, dtype=D) - 1)).requires_grad_(True)
    out = model(xs).reshape(n, -1)
    rows = []
    for k in range(out.shape[1]):
        (gr,) = torch.autograd.grad(out[:, k].sum(), xs, retain_graph=True)
        flat = gr.reshape(n, -1)
        rows.append(flat.abs().sum(1).max() if norm == "inf" else flat.norm(dim=1).max())
    return torch.stack(rows)


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_bounds_dominate_sampled_gradients(name: str, norm: str) -> None:
    model, shape = _model(name)
    x0 = torch.randn(1, *shape, dtype=D, generator=torch.Generator().manual_seed(1))
    for eps in (0.01, 0.3):
        r = lipbound.local_lipschitz(model, x0, eps=eps, norm=norm)
        assert (_sampled_max(model, x0, eps, norm) <= r.upper[0] * (1 + 1e-9)).all(), (eps, r.upper)
        assert (r.lower[0] <= r.upper[0]).all()
    opt = lipbound.local_lipschitz(model, x0, eps=0.3, norm=norm, optimize=True, lower=False)
    assert (_sampled_max(model, x0, 0.3, norm) <= opt.upper[0] * (1 + 1e-9)).all()


def test_maxpool_on_a_stable_box_is_exact() -> None:
    """Distinct window entries far apart: every tournament ReLU is stable, the bound equals the attained value."""
    pool = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).double()
    x0 = torch.arange(16, dtype=D).reshape(1, 1, 4, 4) * 0.1
    r = lipbound.local_lipschitz(pool, x0, eps=0.01, norm="inf")
    torch.testing.assert_close(r.upper[0], torch.ones(4, dtype=D), rtol=1e-9, atol=0)
    torch.testing.assert_close(r.lower[0], torch.ones(4, dtype=D), rtol=1e-9, atol=0)
    # ties inside the box: max(a, b) on a box around a == b has constant exactly 1 in l_inf (one entry moves it)
    tie = nn.Sequential(nn.MaxPool2d((1, 2)), nn.Flatten()).double()
    r = lipbound.local_lipschitz(tie, torch.zeros(1, 1, 1, 2, dtype=D), eps=0.1, norm="inf")
    assert 1 - 1e-9 <= float(r.lower[0]) <= 1 + 1e-9 and float(r.upper[0]) >= 1 - 1e-12  # one output: (batch,)


def test_clamp_outside_its_range_has_constant_zero() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Hardtanh(-1.0, 1.0)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2, dtype=D))
        model[0].bias.zero_()
    r = lipbound.local_lipschitz(model, torch.tensor([[3.0, -4.0]], dtype=D), eps=0.5)
    assert float(r.upper.max()) <= 1e-12 and float(r.lower.max()) == 0.0


@settings(max_examples=10, deadline=None)
@given(
    act=st.sampled_from(["softplus", "elu", "hardtanh", "relu6"]),
    pool=st.sampled_from([2, 3]),
    eps=st.sampled_from([0.05, 0.5]),
    seed=st.integers(0, 10_000),
)
def test_random_pool_nets_hypothesis(act, pool, eps, seed) -> None:
    torch.manual_seed(seed)
    layer = {"softplus": nn.Softplus(1.5), "elu": nn.ELU(0.5), "hardtanh": nn.Hardtanh(), "relu6": nn.ReLU6()}[act]
    side = 7 // pool
    model = (
        nn.Sequential(nn.Conv2d(1, 2, 2), layer, nn.MaxPool2d(pool), nn.Flatten(), nn.Linear(2 * side * side, 2))
        .double()
        .eval()
    )
    x0 = torch.randn(1, 1, 8, 8, dtype=D)
    r = lipbound.local_lipschitz(model, x0, eps=eps, norm="inf")
    assert (_sampled_max(model, x0, eps, "inf", n=128) <= r.upper[0] * (1 + 1e-9)).all()


def test_unsupported_variants_are_refused_by_name() -> None:
    x = torch.zeros(1, 1, 6, 6, dtype=D)
    with pytest.raises(UnsupportedOperatorError, match="dilation"):
        lipbound.local_lipschitz(nn.Sequential(nn.MaxPool2d(2, dilation=2), nn.Flatten()).double(), x, eps=0.1)
    with pytest.raises(UnsupportedOperatorError, match=r"ELU\(alpha=1.5\).*convex"):
        lipbound.local_lipschitz(nn.Sequential(nn.Linear(2, 2), nn.ELU(1.5)).double(), x[0, 0, 0, :2][None], eps=0.1)
    with pytest.raises(ShapeMismatchError, match=r"min 1\.0 > max 0\.0"):
        lipbound.local_lipschitz(BadClamp().double(), x[0, 0, 0, :2][None], eps=0.1)


class _Key(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda x: x[0], "over the batch dimension"),
        (lambda x: x[None], "over the batch dimension"),
        (lambda x: torch.cat([x, x], dim=0), "cat over the batch dimension"),
        (lambda x: x.permute(1, 0), "moves the batch dimension"),
        (lambda x: x.transpose(0, 1), "transpose over the batch dimension"),
    ],
)
def test_layout_over_the_batch_axis_is_refused(fn, match) -> None:
    with pytest.raises(UnsupportedOperatorError, match=match):
        lipbound.local_lipschitz(_Key(fn), torch.zeros(1, 4, dtype=D), eps=0.1)
