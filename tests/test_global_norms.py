"""Certified matrix and convolution operator norms against exact dense references and power iteration."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipbound.errors import InvalidInputError, ShapeMismatchError, UnsupportedOperatorError
from lipbound.global_bounds.norms import (
    conv_dense_matrices,
    conv_operator_norm_upper,
    conv_spec,
    gram_sigma_upper,
    matrix_norm_upper,
    power_iteration_norm,
)


def exact_sigma(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.to(torch.float64), 2))


# ----------------------------------------------------------------------------------------------------- matrices


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), scale=st.sampled_from([1e-3, 1.0, 1e4]), seed=st.integers(0, 99))
def test_gram_bound_is_sound_and_tight(m, n, scale, seed):
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    exact = exact_sigma(w)
    ub = matrix_norm_upper(w, 2)
    assert ub >= exact
    assert ub <= exact * (1 + 1e-8)


def test_gram_bound_decreases_with_iterations():
    w = torch.randn(200, 120, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = exact_sigma(w)
    bounds = [matrix_norm_upper(w, 2, max_iter=t) for t in (0, 1, 2, 4, 8, 30)]
    assert all(b >= exact for b in bounds)
    assert all(a >= b for a, b in itertools.pairwise(bounds))
    assert bounds[0] == pytest.approx(float(torch.linalg.matrix_norm(w, "fro")), rel=1e-9)  # t = 0: Frobenius
    assert bounds[-1] <= exact * (1 + 1e-9)


def test_gram_bound_with_clustered_top_singular_values():
    gen = torch.Generator().manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(48, 48, generator=gen, dtype=torch.float64))
    s = torch.linspace(0.1, 1.0, 48, dtype=torch.float64)
    s[-1], s[-2], s[-3] = 1.0, 1.0 - 1e-7, 1.0 - 1e-7  # nearly degenerate maximum
    w = u[:, :48] @ torch.diag(s) @ v.T
    ub = matrix_norm_upper(w, 2)
    assert 1.0 <= ub <= 1.0 + 1e-6


def test_gram_batched_complex_matches_exact():
    gen = torch.Generator().manual_seed(3)
    z = torch.complex(torch.randn(7, 5, 9, generator=gen), torch.randn(7, 5, 9, generator=gen)).to(torch.complex128)
    exact = torch.linalg.matrix_norm(z, 2)
    ub = gram_sigma_upper(z)
    assert ub.shape == (7,)
    assert (ub >= exact).all() and (ub <= exact * (1 + 1e-8)).all()
    top = gram_sigma_upper(z, reduce_max=True)
    assert float(exact.max()) <= float(top) <= float(exact.max()) * (1 + 1e-8)


def test_inf_norm_exact_and_zero_matrix():
    w = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 0.5, 0.0]])
    assert matrix_norm_upper(w, "inf") == pytest.approx(6.0, rel=1e-14)
    assert matrix_norm_upper(w, "inf") >= 6.0
    assert matrix_norm_upper(torch.zeros(3, 4), 2) == 0.0
    with pytest.raises(InvalidInputError):
        matrix_norm_upper(w, 1)
    with pytest.raises(InvalidInputError):
        matrix_norm_upper(torch.tensor([[float("nan")]]), 2)


# ------------------------------------------------------------------------------------------------ convolutions

CONV_CASES = [
    # c_in, c_out, k, n, stride, padding, dilation, groups
    (3, 4, 3, 6, 1, 1, 1, 1),
    (4, 4, 3, 7, 2, 1, 1, 1),
    (4, 6, 3, 6, 1, 0, 1, 2),
    (4, 4, 2, 8, 2, 0, 1, 4),
    (2, 3, 3, 9, 1, 2, 2, 1),
    (3, 5, 5, 8, 2, 2, 1, 1),
    (6, 6, 1, 5, 1, 0, 1, 3),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_bounds_dominate_exact_dense_norm(case):
    ci, co, k, n, s, p, d, g = case
    gen = torch.Generator().manual_seed(sum(case))
    w = torch.randn(co, ci // g, k, k, generator=gen, dtype=torch.float64)
    kw = {"in_shape": (ci, n, n), "stride": s, "padding": p, "dilation": d, "groups": g}
    # independent dense reference: the conv applied to the identity basis
    eye = torch.eye(ci * n * n, dtype=torch.float64).reshape(-1, ci, n, n)
    dense = F.conv2d(eye, w, None, s, p, d, g).reshape(ci * n * n, -1).T
    exact = exact_sigma(dense)
    spec = conv_spec(w, **kw)
    assembled = torch.block_diag(*conv_dense_matrices(spec))
    # the assembled per-group matrices are the operator up to the ordering of rows/cols by group
    assert exact_sigma(assembled) == pytest.approx(exact, rel=1e-12)
    fft = conv_operator_norm_upper(w, **kw, method="fft")
    auto = conv_operator_norm_upper(w, **kw)
    pw = power_iteration_norm(w, **kw, n_iter=300)
    assert fft >= exact and auto >= exact
    assert auto <= exact * (1 + 1e-8)  # small input: the dense Gram bound is used
    assert pw <= exact * (1 + 1e-12)


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 1, 1), (1, 0, 2), (2, 0, 4)])
def test_fft_conv_bound_within_one_percent_of_power_iteration(stride, padding, groups):
    gen = torch.Generator().manual_seed(stride * 10 + padding + groups)
    c, n = 16, 20
    w = torch.randn(c, c // groups, 3, 3, generator=gen, dtype=torch.float64)
    kw = {"in_shape": (c, n, n), "stride": stride, "padding": padding, "groups": groups}
    fft = conv_operator_norm_upper(w, **kw, method="fft")
    pw = power_iteration_norm(w, **kw, n_iter=600)
    assert pw <= fft <= pw * 1.01


def test_circular_conv_norm_is_exact():
    gen = torch.Generator().manual_seed(5)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
    n = 8
    eye = torch.eye(3 * n * n, dtype=torch.float64).reshape(-1, 3, n, n)
    with torch.no_grad():
        dense = conv(eye).reshape(3 * n * n, -1).T
    exact = exact_sigma(dense)
    fft = conv_operator_norm_upper(conv, (3, n, n), method="fft")
    assert exact <= fft <= exact * (1 + 1e-8)
    assert power_iteration_norm(conv, (3, n, n), n_iter=300) <= fft


def test_conv2dlayer_and_module_inputs_agree():
    from lipbound.ops.conv import Conv2dLayer

    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1).double()
    op = Conv2dLayer(conv.weight, conv.bias, (4, 10, 10), 2, 1)
    a = conv_operator_norm_upper(op)
    b = conv_operator_norm_upper(conv, (10, 10))
    assert a == pytest.approx(b, rel=1e-12)


def test_conv_norm_errors():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(InvalidInputError, match="in_shape"):
        conv_operator_norm_upper(w)
    with pytest.raises(ShapeMismatchError, match="channels"):
        conv_operator_norm_upper(w, (5, 8, 8))
    with pytest.raises(UnsupportedOperatorError, match="reflect"):
        conv_operator_norm_upper(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (3, 8, 8))
    with pytest.raises(ShapeMismatchError, match="no output"):
        conv_operator_norm_upper(w, (3, 2, 2))
