"""Windowed (patch) coefficients through convolutions equal the dense reference: the window rules against torch's
own convolutions, and whole bounds / Jacobian bounds with ``PATCHES`` on and off, for stride, padding, dilation
and groups; at ``eps = 0`` the Jacobian bounds equal the autograd Jacobian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lipbound
from lipbound.engine import forward, memory, patches
from lipbound.engine.patches import Patches, linear_rows
from lipbound.ops.conv import Conv2dLayer

CONVS = [  # (C_in, C_out, k, stride, padding, dilation, groups, H)
    (2, 4, 3, 1, 0, 1, 1, 7),
    (2, 4, 3, 2, 1, 1, 1, 8),
    (4, 6, 3, 2, 2, 2, 2, 9),
    (3, 3, 2, 3, 1, 1, 3, 10),
    (2, 2, 4, 1, 3, 1, 1, 5),
]


def _op(cfg, gen) -> Conv2dLayer:
    ci, co, k, s, p, d, g, h = cfg
    w = torch.randn(co, ci // g, k, k, generator=gen, dtype=torch.float64)
    return Conv2dLayer(w, None, (ci, h, h), s, p, d, g)


def _random_patches(shape, s_rows, window, gen, batch=2) -> Patches:
    """Random windows, anchors partly outside the node; entries outside the node zeroed (the invariant)."""
    c, h, w = shape
    data = torch.randn(batch, s_rows, c, *window, generator=gen, dtype=torch.float64)
    ay = torch.randint(-window[0] + 1, h, (s_rows,), generator=gen)
    ax = torch.randint(-window[1] + 1, w, (s_rows,), generator=gen)
    return Patches(data, torch.stack((ay, ax), 1), shape).masked()


@pytest.mark.parametrize("matrix_bytes", [1 << 25, 0])  # window matrices, and conv2d on the windows
@pytest.mark.parametrize("cfg", CONVS)
def test_window_rules_equal_dense_convolutions(cfg, matrix_bytes, monkeypatch) -> None:
    monkeypatch.setattr(patches, "MATRIX_BYTES", matrix_bytes)
    gen = torch.Generator().manual_seed(3)
    op = _op(cfg, gen)
    # back through a forward conv: conv^T of windows on the conv's output
    lam = _random_patches(op.out_shape, 6, (2, 3), gen)
    got = lam.conv_transpose(op).to_dense()
    want = op.apply_transpose(lam.to_dense())[0]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # back through the Jacobian rule g_w = conv^T g_v: conv of windows on the conv's input
    lam = _random_patches(op.in_shape, 7, (3, 2), gen)
    got = lam.conv(op).to_dense()
    want = op.apply(lam.to_dense())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gather_dense_and_linear_rows() -> None:
    gen = torch.Generator().manual_seed(4)
    shape = (3, 5, 6)
    lam = _random_patches(shape, 9, (3, 4), gen)
    dense = lam.to_dense()
    t = torch.randn(2, 1, *shape, generator=gen, dtype=torch.float64)
    # <lam, t> over the window equals the dense sum
    got = (lam.data * lam.gather(t)).sum((2, 3, 4))
    torch.testing.assert_close(got, (dense * t).sum((2, 3, 4)), rtol=1e-12, atol=1e-12)
    w = torch.randn(4, 90, generator=gen, dtype=torch.float64)
    flat = lam.reshaped(True)
    torch.testing.assert_close(flat.to_dense(), dense.reshape(2, 9, 90))
    for got in linear_rows([flat, flat], w, chunk_bytes=1) + linear_rows([flat], w):
        torch.testing.assert_close(got, dense.reshape(2, 9, 90) @ w.T)


class _Net(nn.Module):
    """conv -> ReLU -> conv -> conv (no activation between the last two) -> ReLU -> flatten -> linear -> ReLU ->
    linear, with every conv option."""

    def __init__(self, cfg) -> None:
        super().__init__()
        ci, co, k, s, p, d, g, h = cfg
        self.c1 = nn.Conv2d(ci, co, k, stride=s, padding=p, dilation=d, groups=g)
        self.c2 = nn.Conv2d(co, co, 2, padding=1, groups=g)
        self.c3 = nn.Conv2d(co, 2, 2, stride=1 + (s > 1))
        with torch.no_grad():
            n = self.c3(self.c2(self.c1(torch.zeros(1, ci, h, h)))).numel()
        self.fc1, self.fc2 = nn.Linear(n, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.c3(self.c2(torch.relu(self.c1(x)))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def _both(fn):
    old = forward.PATCHES
    try:
        forward.PATCHES = True
        a = fn()
        forward.PATCHES = False
        b = fn()
    finally:
        forward.PATCHES = old
    return a, b


@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("optimize", [False, True])
def test_bounds_equal_dense_path(cfg, optimize) -> None:
    torch.manual_seed(sum(cfg))
    model = _Net(cfg).double()
    x0 = torch.rand(2, cfg[0], cfg[7], cfg[7], dtype=torch.float64)
    kw = dict(lower=False, use_global=False, optimize=optimize, optimize_steps=3)
    a, b = _both(lambda: lipbound.local_lipschitz(model, x0, 0.05, **kw).upper)
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    (la, ua), (lb, ub) = _both(lambda: lipbound.jacobian_bounds(model, x0, 0.05))
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ua, ub, rtol=1e-9, atol=1e-12)


def test_jacobian_bounds_at_a_point_equal_autograd() -> None:
    cfg = CONVS[2]
    torch.manual_seed(1)
    model = _Net(cfg).double()
    x0 = torch.rand(1, cfg[0], cfg[7], cfg[7], dtype=torch.float64)
    lo, hi = lipbound.jacobian_bounds(model, x0, 0.0)
    jac = torch.autograd.functional.jacobian(lambda x: model(x)[0], x0)[:, 0]  # (3, C, H, W)
    torch.testing.assert_close(lo[0], jac, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(hi[0], jac, rtol=1e-8, atol=1e-10)


def test_memory_cap_forces_chunks_and_keeps_the_bound() -> None:
    cfg = CONVS[1]
    torch.manual_seed(2)
    model = _Net(cfg).double()
    x0 = torch.rand(2, cfg[0], cfg[7], cfg[7], dtype=torch.float64)
    kw = dict(lower=False, use_global=False)
    free = lipbound.local_lipschitz(model, x0, 0.05, **kw)
    capped = lipbound.local_lipschitz(model, x0, 0.05, max_memory=20_000, **kw)
    assert capped.details["chunks"] > 2 * free.details["chunks"]  # rows really were split
    torch.testing.assert_close(capped.upper, free.upper, rtol=1e-12, atol=0)
    roomy = lipbound.local_lipschitz(model, x0, 0.05, max_memory="1GB", **kw)
    assert roomy.details["chunks"] <= 2 * free.details["chunks"]  # at most a probe chunk per node
    torch.testing.assert_close(roomy.upper, free.upper, rtol=1e-12, atol=0)


def test_memory_cap_bounds_measured_working_memory() -> None:
    """The coefficient working set (largest live coefficients, as the probe measures it) stays under the cap."""
    from lipbound.engine import crown

    cfg = CONVS[0]
    torch.manual_seed(5)
    model = _Net(cfg).double()
    x0 = torch.rand(1, cfg[0], cfg[7], cfg[7], dtype=torch.float64)
    calls = []
    orig = crown.backsubstitute

    def spy(graph, target, lam, *a, **k):
        out = orig(graph, target, lam, *a, **k)
        calls.append((id(target), out[0].shape[1], k["stats"]["peak_elements"]))
        return out

    cap = 50_000
    try:
        forward.backsubstitute = spy
        lipbound.local_lipschitz(model, x0, 0.05, lower=False, use_global=False, max_memory=cap)
    finally:
        forward.backsubstitute = orig
    seen, checked = set(), 0
    for target, rows, peak in calls:
        if target in seen and rows > 1:  # after the probe chunk of each node: chunks sized to the cap
            assert peak * 8 * memory.WORKING_FACTOR <= cap
            checked += 1
        seen.add(target)
    assert checked > 0


@pytest.mark.parametrize("bad", ["lots", -1, 0, "2XB", True])
def test_max_memory_rejects_bad_values(bad) -> None:
    model = _Net(CONVS[0]).double()
    with pytest.raises(lipbound.errors.InvalidInputError, match="max_memory"):
        lipbound.local_lipschitz(model, torch.zeros(1, 2, 7, 7), 0.1, max_memory=bad, lower=False)


def test_progress_reports_every_stage() -> None:
    model = _Net(CONVS[0]).double()
    seen = []
    lipbound.local_lipschitz(
        model, torch.rand(1, 2, 7, 7), 0.1, lower=False, progress=lambda *a: seen.append(a), use_global=False
    )
    stages = {s for s, _, _ in seen}
    assert stages == {"forward", "jacobian"}
    assert all(0 < d <= t for _, d, t in seen) and any(d == t for _, d, t in seen)


def test_model_dtype_float32_conv_bound_is_sound_and_close() -> None:
    cfg = CONVS[2]
    torch.manual_seed(7)
    model = _Net(cfg).float()
    x0 = torch.rand(1, cfg[0], cfg[7], cfg[7])
    r32 = lipbound.local_lipschitz(model, x0, 0.05, dtype=None, use_global=False, lower_samples=16, lower_steps=5)
    r64 = lipbound.local_lipschitz(model, x0, 0.05, use_global=False, lower=False)
    assert r32.upper.dtype == torch.float32
    assert (r32.upper >= r32.lower).all()
    assert (r32.upper.double() >= r64.upper * (1 - 1e-6)).all()  # float32 pays its rounding bound, never less
    torch.testing.assert_close(r32.upper.double(), r64.upper, rtol=1e-3, atol=1e-6)
