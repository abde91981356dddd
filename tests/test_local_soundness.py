"""Soundness of the local Lipschitz engine on random architectures and boxes (float64, hypothesis).

For every case: ``upper >= sampled gradient norm`` (a true lower bound of the exact value), ``lower <= upper``,
``lower`` is attained (it is the gradient norm at a point of the box and never exceeds the global product bound),
``crown <= interval``, ``optimize=True`` is no looser and still sound, Jacobian and forward bounds contain sampled
values, and the API variants (K rows of c, per-input eps, explicit box, a traced Graph) agree with each other.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.reference.exact import (
    box_points,
    dual_norm,
    global_lipschitz_upper,
    gradients_at,
    output_rows,
    sampled_gradient_norm,
)
from tests.reference.nets import NetCase, net_cases

NORMS = ("inf", 2, 1)
REL = 1e-7  # relative tolerance of the soundness checks (float64; the engine widens bounds by ~1e-10)
SAMPLES = 96

small_cases = net_cases(max_width=24, batch=2)


def _ge(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> torch.Tensor:
    """Elementwise ``a >= b`` up to a relative tolerance."""
    return a >= b - rel * b.abs() - 1e-12


def _expected_shape(case: NetCase) -> tuple[int, ...]:
    b = case.x0.shape[0]
    return (b,) if case.out_dim == 1 else (b, case.out_dim)


def _check_attained(lip, case: NetCase, res, norm, c=None) -> None:
    """``lower`` is a gradient norm at a point of the box: recompute it at ``res.argmax`` when the engine gives it."""
    argmax = getattr(res, "argmax", None)
    if argmax is None:
        return
    b = case.x0.shape[0]
    lo, hi = case.x_lower.unsqueeze(1), case.x_upper.unsqueeze(1)
    assert (argmax >= lo - 1e-12).all() and (argmax <= hi + 1e-12).all(), f"argmax outside the box: {case.label}"
    with torch.no_grad():
        m = case.model(case.x0[:1]).reshape(1, -1).shape[1]
    rows, _ = output_rows(c, m, b, torch.float64, "cpu")
    k = rows.shape[1]
    pts = argmax.reshape(b * k, *case.input_shape)
    g = gradients_at(case.model, pts, rows.reshape(b * k, 1, m))  # row k of box b evaluated at its own argmax
    val = dual_norm(g.reshape(b, k, -1), norm)
    lower = res.lower.reshape(b, k)
    torch.testing.assert_close(
        lower, val, rtol=1e-7, atol=1e-10, msg=lambda s: f"lower not attained: {case.label}: {s}"
    )


@settings(max_examples=40)
@given(case=small_cases, norm=st.sampled_from(NORMS))
def test_upper_bounds_every_sampled_gradient(lip, case: NetCase, norm):
    res = lip.local_lipschitz(case.model, case.x0, case.eps, norm=norm)
    ref_lo = sampled_gradient_norm(case.model, case.x_lower, case.x_upper, None, norm, n=SAMPLES)
    glob = global_lipschitz_upper(case.model, case.input_shape, norm)
    assert tuple(res.upper.shape) == _expected_shape(case), case.label
    assert tuple(res.lower.shape) == _expected_shape(case), case.label
    assert torch.isfinite(res.upper).all(), case.label
    assert _ge(res.upper, ref_lo).all(), f"UNSOUND {case.label} norm={norm}: upper {res.upper} < sampled {ref_lo}"
    assert (res.lower <= res.upper).all(), case.label
    assert (res.lower >= 0).all() and _ge(glob * torch.ones_like(res.lower), res.lower, 1e-9).all(), case.label
    expected_max = res.upper if res.upper.dim() == 1 else res.upper.amax(dim=1)
    torch.testing.assert_close(res.upper_max, expected_max)
    _check_attained(lip, case, res, norm)

    ibp = lip.local_lipschitz(case.model, case.x0, case.eps, norm=norm, method="interval", lower=False)
    assert _ge(ibp.upper, ref_lo).all(), f"UNSOUND interval {case.label} norm={norm}"
    assert (res.upper <= ibp.upper * (1 + 1e-9) + 1e-9).all(), (
        f"crown looser than interval: {case.label} norm={norm}: {res.upper} > {ibp.upper}"
    )


@settings(max_examples=30)
@given(case=small_cases)
def test_jacobian_bounds_contain_sampled_jacobians(lip, case: NetCase):
    lo, hi = lip.jacobian_bounds(case.model, case.x0, case.eps)
    b = case.x0.shape[0]
    assert tuple(lo.shape) == (b, case.out_dim, *case.input_shape), case.label
    assert (lo <= hi).all(), case.label
    pts = box_points(case.x_lower, case.x_upper, n=SAMPLES, max_vertices=64)
    s = pts.shape[1]
    rows, _ = output_rows(None, case.out_dim, b * s, torch.float64, "cpu")
    jac = gradients_at(case.model, pts.reshape(b * s, *case.input_shape), rows).reshape(b, s, case.out_dim, -1)
    lo_f, hi_f = lo.reshape(b, 1, case.out_dim, -1), hi.reshape(b, 1, case.out_dim, -1)
    tol = 1e-9 * (1 + jac.abs())
    assert (jac >= lo_f - tol).all() and (jac <= hi_f + tol).all(), f"Jacobian outside its bounds: {case.label}"


def _forward_bounds(lip):
    from lipbound.engine import forward

    fn = getattr(forward, "forward_bounds", None)
    if fn is not None:
        return fn
    return forward.bound_nodes


@settings(max_examples=30)
@given(case=small_cases, method=st.sampled_from(["crown", "ibp"]))
def test_forward_bounds_contain_sampled_activations(lip, case: NetCase, method):
    graph = lip.trace(case.model, case.input_shape)
    bounds = _forward_bounds(lip)(graph, case.x_lower, case.x_upper, method=method)
    activation_inputs = {
        id(n.inputs[0]) for n in graph.nodes if type(n.op).__name__ in ("ReLU", "LeakyReLU", "Tanh", "Sigmoid")
    }
    assert activation_inputs <= set(bounds), f"missing bounds for activation inputs: {case.label}"
    pts = box_points(case.x_lower, case.x_upper, n=SAMPLES, max_vertices=64)
    b, s = pts.shape[:2]
    with torch.no_grad():
        vals = graph.forward(pts.reshape(b * s, *case.input_shape))
    for key, (l, u) in bounds.items():
        if key not in vals:
            continue
        v = vals[key].reshape(b, s, *l.shape[1:])
        tol = 1e-9 * (1 + v.abs())
        assert (v >= l.unsqueeze(1) - tol).all() and (v <= u.unsqueeze(1) + tol).all(), (
            f"{method} forward bounds miss sampled activations: {case.label}"
        )


@settings(max_examples=20)
@given(case=net_cases(kinds=("mlp", "resmlp", "cnn"), max_width=16, batch=1), norm=st.sampled_from(NORMS))
def test_optimize_is_tighter_and_sound(lip, case: NetCase, norm):
    base = lip.local_lipschitz(case.model, case.x0, case.eps, norm=norm, lower=False)
    opt = lip.local_lipschitz(case.model, case.x0, case.eps, norm=norm, optimize=True, lower=False)
    ref_lo = sampled_gradient_norm(case.model, case.x_lower, case.x_upper, None, norm, n=SAMPLES)
    assert _ge(opt.upper, ref_lo).all(), f"UNSOUND optimize=True {case.label} norm={norm}"
    assert (opt.upper <= base.upper * (1 + 1e-7) + 1e-9).all(), (
        f"optimize=True looser: {case.label} norm={norm}: {opt.upper} > {base.upper}"
    )


@settings(max_examples=20)
@given(case=net_cases(kinds=("mlp", "cnn", "resmlp"), max_width=16, max_out=4, batch=2), seed=st.integers(0, 99))
def test_c_rows_and_single_direction(lip, case: NetCase, seed):
    """K rows of c (margins and random directions): per-row soundness; a row alone gives the same bound."""
    m = case.out_dim
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randn(m, generator=gen, dtype=torch.float64)]
    if m >= 2:
        margin = torch.zeros(m, dtype=torch.float64)
        margin[0], margin[m - 1] = 1.0, -1.0
        rows.append(margin)
    c = torch.stack(rows)
    res = lip.local_lipschitz(case.model, case.x0, case.eps, c=c)
    assert tuple(res.upper.shape) == (case.x0.shape[0], len(rows)), case.label
    ref = sampled_gradient_norm(case.model, case.x_lower, case.x_upper, c, "inf", n=SAMPLES)
    assert _ge(res.upper, ref).all(), f"UNSOUND with c rows: {case.label}"
    _check_attained(lip, case, res, "inf", c)
    single = lip.local_lipschitz(case.model, case.x0, case.eps, c=c[-1], lower=False)
    assert single.upper.shape == (case.x0.shape[0],)
    torch.testing.assert_close(single.upper, res.upper[:, -1], rtol=1e-6, atol=1e-9)


@settings(max_examples=12)
@given(case=net_cases(kinds=("mlp", "resmlp"), max_width=16, max_out=1, batch=3), norm=st.sampled_from(NORMS))
def test_per_input_eps_and_explicit_box(lip, case: NetCase, norm):
    b = case.x0.shape[0]
    eps = case.eps * torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64)[:b]
    res = lip.local_lipschitz(case.model, case.x0, eps, norm=norm, lower=False)
    for i in range(b):
        one = lip.local_lipschitz(case.model, case.x0[i : i + 1], float(eps[i]), norm=norm, lower=False)
        torch.testing.assert_close(res.upper[i : i + 1], one.upper, rtol=1e-6, atol=1e-9)
    # an asymmetric box through x_lower / x_upper
    gen = torch.Generator().manual_seed(b)
    radius = eps.reshape(b, *([1] * len(case.input_shape)))
    xl = case.x0 - radius * torch.rand(case.x0.shape, generator=gen, dtype=torch.float64)
    xu = case.x0 + radius * torch.rand(case.x0.shape, generator=gen, dtype=torch.float64)
    box = lip.local_lipschitz(case.model, x_lower=xl, x_upper=xu, norm=norm)
    ref = sampled_gradient_norm(case.model, xl, xu, None, norm, n=SAMPLES)
    assert _ge(box.upper, ref).all(), f"UNSOUND on an explicit box: {case.label} norm={norm}"
    assert (box.lower <= box.upper).all()
    # the box lies inside the eps-ball of the same centre: a gradient attained in the box is attained in the ball
    assert (box.lower <= res.upper * (1 + 1e-9)).all(), f"{case.label}: {box.lower} > {res.upper}"


def test_traced_graph_gives_the_same_bound(lip):
    from tests.reference.nets import mlp, random_centres

    model = mlp(3, [8, 8], 2, "relu", seed=3)
    x0 = random_centres((3,), 2, 3)
    graph = lip.trace(model, (3,))
    a = lip.local_lipschitz(model, x0, 0.2, lower=False)
    b = lip.local_lipschitz(graph, x0, 0.2, lower=False)
    torch.testing.assert_close(a.upper, b.upper)


@pytest.mark.parametrize("norm", NORMS)
def test_float32_is_sound(lip, norm):
    from tests.reference.nets import cnn, random_centres

    model = cnn((1, 6, 6), (4,), 3, "relu", seed=5)
    x0 = random_centres((1, 6, 6), 2, 5)
    res = lip.local_lipschitz(model.float(), x0.float(), 0.05, norm=norm, dtype=torch.float32)
    model64 = model.double()
    ref = sampled_gradient_norm(model64, x0 - 0.05, x0 + 0.05, None, norm, n=SAMPLES)
    assert res.upper.dtype == torch.float32
    assert _ge(res.upper.double(), ref, 1e-5).all()
