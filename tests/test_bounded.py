"""``lipbound.Bounded``: traced once, the same numbers as the one-call API, validation at construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipbound
import lipbound.bounded as bounded_module
import lipbound.problem as problem
from lipbound import Bounded
from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError


def _mlp() -> nn.Module:
    """A float32 ReLU MLP (bounded in float64: the cast happens once, at construction)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


X0 = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
EPS = 0.15


@pytest.fixture
def trace_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every call of the torch.fx tracer behind every one-call function (lipbound.problem.trace)."""
    calls: list[tuple] = []
    real = problem.trace

    def counting(model, input_shape, **kwargs):
        calls.append(tuple(input_shape))
        return real(model, input_shape, **kwargs)

    monkeypatch.setattr(problem, "trace", counting)
    return calls


def test_same_numbers_as_the_one_call_api_and_traced_once(trace_calls: list[tuple]) -> None:
    model = _mlp()
    b = Bounded(model, (4,))
    assert len(trace_calls) == 1 and b.graph.input_shape == (4,) and b.dtype == torch.float64
    c = torch.tensor([1.0, -1.0, 0.0])

    got = b.local(X0, EPS)
    ref = lipbound.local_lipschitz(model, X0, EPS)
    assert torch.equal(got.upper, ref.upper) and torch.equal(got.lower, ref.lower)
    assert got.upper.shape == (2, 3) and bool((got.lower <= got.upper).all()) and float(got.lower.min()) > 0

    got2 = b.local(X0, EPS, norm=2, c=c, method="interval")
    ref2 = lipbound.local_lipschitz(model, X0, EPS, norm=2, c=c, method="interval")
    assert torch.equal(got2.upper, ref2.upper) and torch.equal(got2.lower, ref2.lower)

    lo, hi = b.jacobian(X0, EPS, c=c)
    rlo, rhi = lipbound.jacobian_bounds(model, X0, EPS, c=c)
    assert torch.equal(lo, rlo) and torch.equal(hi, rhi) and bool((lo <= hi).all())

    kw = {"time_budget": 60.0, "max_domains": 8}
    gb = b.bab(X0[:1], EPS, c=c, **kw)
    rb = lipbound.local_lipschitz_bab(model, X0[:1], EPS, c=c, **kw)
    assert torch.equal(gb.upper, rb.upper) and torch.equal(gb.lower, rb.lower)

    ge = b.exact(X0[:1], EPS, time_limit=30)
    re = lipbound.exact_lipschitz(model, X0[:1], EPS, time_limit=30)
    assert ge.status == re.status == "optimal"
    assert ge.value == re.value and ge.upper == re.upper and ge.lower == re.lower
    # the exact constant sits between the certified local bound and its attained lower bound
    assert float(got.lower_max[0]) <= ge.value + 1e-9 and ge.value <= float(got.upper_max[0]) + 1e-9

    gm = b.monotonicity(X0, EPS, bisections=1)
    rm = lipbound.certify_monotonicity(model, X0, EPS, bisections=1)
    for name in ("increasing", "decreasing", "violated_increasing", "violated_decreasing", "lower", "upper"):
        assert torch.equal(getattr(gm, name), getattr(rm, name)), name

    assert len(trace_calls) == 1 + 6  # the six one-call references traced; Bounded did not trace again


def test_global_bounds_extracted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bounded_module.extract

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bounded_module, "extract", counting)
    model = _mlp()
    b = Bounded(model, (4,))
    for method, norm in (("product", 2), ("eclipse-fast", 2), ("product", "inf")):
        got = b.global_lipschitz(norm=norm, method=method)
        ref = lipbound.global_lipschitz(model, norm=norm, method=method)
        assert got.upper == ref.upper and got.method == ref.method == method and math.isfinite(got.upper)
    assert len(calls) == 1
    # a global bound is never below a local one on the same norm
    assert b.global_lipschitz(norm="inf", method="product").upper >= float(b.local(X0, EPS).upper_max.max()) - 1e-9


def test_other_dtype_keeps_the_model_and_traces_float64_once_for_exact(trace_calls: list[tuple]) -> None:
    model = _mlp()
    b = Bounded(model, (4,), dtype=None)  # keep the model's float32
    assert b.dtype == torch.float32 and len(trace_calls) == 1
    r = b.local(X0, EPS)
    assert r.upper.dtype == torch.float32
    ref = lipbound.local_lipschitz(model, X0, EPS, dtype=None)
    assert torch.equal(r.upper, ref.upper)
    first = b.exact(X0[:1], EPS)
    second = b.exact(X0[1:], EPS)
    assert len(trace_calls) == 1 + 1 + 1  # the reference, and one float64 trace shared by both exact calls
    assert first.value == lipbound.exact_lipschitz(model, X0[:1], EPS).value and second.status == "optimal"


def test_a_graph_needs_no_input_shape_and_validation_happens_at_construction() -> None:
    model = _mlp()
    graph = lipbound.trace(model.double(), (4,))
    b = Bounded(graph)
    assert b.input_shape == (4,)
    assert torch.equal(b.local(X0, EPS).upper, lipbound.local_lipschitz(graph, X0, EPS).upper)
    with pytest.raises(ShapeMismatchError, match="does not match the graph's input shape"):
        Bounded(graph, (5,))
    with pytest.raises(InvalidInputError, match="input_shape is required"):
        Bounded(model)
    with pytest.raises(InvalidInputError, match="positive integers"):
        Bounded(model, (0,))
    with pytest.raises(InvalidModelError, match=r"nn\.Module or a lipbound Graph"):
        Bounded("model.onnx", (4,))
    broken = _mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(InvalidModelError):
        Bounded(broken, (4,))
