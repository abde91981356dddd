"""The public local API: result shapes, semantics of c, and specific errors for bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lipbound
from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError, UnsupportedOperatorError


def _mlp(out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out)).double().eval()


def test_result_shapes_and_row_semantics():
    model, x0 = _mlp(), torch.rand(5, 4, dtype=torch.float64)
    every = lipbound.local_lipschitz(model, x0, 0.1)
    assert every.upper.shape == (5, 3) and every.lower.shape == (5, 3)
    assert torch.equal(every.upper_max, every.upper.amax(1))
    one = lipbound.local_lipschitz(model, x0, 0.1, c=torch.tensor([0.0, 1.0, 0.0]))
    assert one.upper.shape == (5,)
    torch.testing.assert_close(one.upper, every.upper[:, 1])
    rows = lipbound.local_lipschitz(model, x0, 0.1, c=torch.eye(3)[:2])
    torch.testing.assert_close(rows.upper, every.upper[:, :2])
    d = every.to_dict()
    assert d["method"] == "crown" and d["norm"] == "inf" and len(d["upper"]) == 5
    assert (every.lower <= every.upper).all() and every.seconds > 0


def test_scalar_output_gives_gradient_norm_of_a_linear_model():
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    model = nn.Linear(4, 1).double()
    model.weight.data = w
    x0 = torch.zeros(2, 4, dtype=torch.float64)
    for norm, exact in (("inf", 6.5), (2, float(w.norm())), (1, 3.0)):
        r = lipbound.local_lipschitz(model, x0, 0.3, norm=norm)
        assert r.upper.shape == (2,)
        torch.testing.assert_close(r.upper, torch.full((2,), exact, dtype=torch.float64), rtol=1e-8, atol=0)
        torch.testing.assert_close(r.lower, torch.full((2,), exact, dtype=torch.float64), rtol=1e-12, atol=0)


def test_zero_eps_gives_the_gradient_at_the_point():
    model, x0 = _mlp(1), torch.rand(3, 4, dtype=torch.float64)
    r = lipbound.local_lipschitz(model, x0, 0.0)
    torch.testing.assert_close(r.upper, r.lower, rtol=1e-8, atol=1e-12)


def test_monotonicity_from_jacobian_bounds():
    # f(x) = relu(x0) + 2 x1 is non-decreasing in both features everywhere
    class F(nn.Module):
        def forward(self, x):
            return torch.relu(x[:, :1].reshape(x.shape[0], 1)) + 2 * x[:, 1:].reshape(x.shape[0], 1)

    lin = nn.Linear(2, 2).double()
    lin.weight.data = torch.eye(2, dtype=torch.float64)
    lin.bias.data.zero_()
    head = nn.Linear(2, 1).double()
    head.weight.data = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    head.bias.data.zero_()
    model = nn.Sequential(lin, nn.ReLU(), head).eval()
    lo, hi = lipbound.jacobian_bounds(model, torch.tensor([[0.0, 1.0]], dtype=torch.float64), 0.5)
    assert lo.shape == (1, 1, 2)
    assert (lo >= -1e-9).all()  # exact 0, widened outward by the float64 rounding margin
    torch.testing.assert_close(hi[0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, InvalidInputError, "eps must be >= 0"),
        ({"eps": float("nan")}, InvalidInputError, "eps must be finite"),
        ({"eps": 0.1, "norm": 3}, InvalidInputError, "norm must be"),
        ({"eps": 0.1, "method": "magic"}, InvalidInputError, "method must be one of"),
        ({"eps": 0.1, "c": torch.ones(5)}, ShapeMismatchError, "c has 5 entries, the model has 3 outputs"),
        ({"eps": torch.ones(7)}, ShapeMismatchError, "eps of shape"),
    ],
)
def test_bad_arguments_have_specific_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        lipbound.local_lipschitz(_mlp(), torch.rand(2, 4, dtype=torch.float64), **kwargs)


def test_bad_inputs_and_models():
    model = _mlp()
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        lipbound.local_lipschitz(model, torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), 0.1)
    with pytest.raises(ShapeMismatchError, match="expects 4 input features"):
        lipbound.local_lipschitz(model, torch.rand(2, 5), 0.1)
    with pytest.raises(InvalidInputError, match="x_lower must be <= x_upper"):
        lipbound.local_lipschitz(model, x_lower=torch.ones(1, 4), x_upper=torch.zeros(1, 4))
    bad = _mlp()
    bad[0].weight.data[0, 0] = float("nan")
    with pytest.raises(InvalidModelError, match="non-finite"):
        lipbound.local_lipschitz(bad, torch.rand(1, 4), 0.1)
    with pytest.raises(UnsupportedOperatorError, match="LogSigmoid"):
        lipbound.local_lipschitz(nn.Sequential(nn.Linear(4, 4), nn.LogSigmoid()), torch.rand(1, 4), 0.1)
