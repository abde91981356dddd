"""The automatically built Jacobian graph computes exactly the autograd gradient, for every supported op."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbound.engine.jacobian import build_jacobian_graph
from lipbound.graph import trace
from lipbound.nn import GroupSort, MaxMin


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        h = h + 0.5 * self.conv1(x) - h / 4
        h = self.pool(torch.tanh(self.conv2(h)))
        return self.fc(h.view(h.size(0), -1))


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(5, 12),
        nn.LeakyReLU(0.1),
        nn.Linear(12, 12),
        nn.Sigmoid(),
        nn.Linear(12, 8),
        MaxMin(),
        nn.Linear(8, 8),
        GroupSort(4),
        nn.Linear(8, 6),
        MaxMin("halves"),
        nn.Tanh(),
        nn.Linear(6, 3),
        nn.ReLU(),
        nn.Linear(3, 2),
    )
    res = _Residual()
    res.bn.running_mean.uniform_(-1, 1)
    res.bn.running_var.uniform_(0.5, 2)
    return [(mlp.double().eval(), (5,)), (res.double().eval(), (2, 8, 8))]


@pytest.mark.parametrize("case", range(2))
def test_jacobian_graph_matches_autograd(case: int) -> None:
    model, shape = _models()[case]
    graph = trace(model, shape)
    x = torch.randn(7, *shape, dtype=torch.float64)
    out_dim = model(x).shape[1]
    c = torch.randn(7, out_dim, dtype=torch.float64)
    back, g_x = build_jacobian_graph(graph, c)
    got = back.forward(x)[id(g_x)]
    xr = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((model(xr) * c).sum(), xr)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
