"""Independent plain-torch RecurJac / Fast-Lip bounds on the Jacobian of a ReLU MLP (the ``interval`` baseline).

Network (``L`` affine layers): ``z_i = W_i h_{i-1} + b_i``, ``h_i = relu(z_i)`` (``i = 1..L-1``), ``f = W_L h_{L-1}``.
For an output direction ``c`` the gradient runs backwards: ``u_{L-1} = W_L^T c``, ``v_i = s_i u_i`` with the gate
``s_i`` in ``{1}`` (``l_z > 0``), ``{0}`` (``u_z < 0``) or ``[0, 1]`` (unstable), ``u_{i-1} = W_i^T v_i``, and
``grad c^T f = u_0 = W_1^T v_1``.

RecurJac (Zhang, Zhang & Hsieh 2019) bounds ``u_i`` layer by layer, from the output towards the input. For layer
``i`` it expands ``lam^T u_{i-1}`` recursively through the layers above, where ``lam`` is a row of the identity:
at a gate ``v_j = s_j u_j`` with coefficient ``mu_j`` on ``v_j`` (upper bound; the lower bound mirrors it with
``-mu``),

* fixed gate ``s``:                 ``mu_j v_j = mu_j s u_j``                  (exact, passed on to ``u_j``);
* unstable, ``l_u >= 0`` (``u_j >= 0``): ``mu_j v_j <= [mu_j]_+ u_j``           (``0 <= v_j <= u_j``);
* unstable, ``u_u <= 0`` (``u_j <= 0``): ``mu_j v_j <= [mu_j]_- u_j``           (``u_j <= v_j <= 0``);
* unstable, sign-changing ``u_j``:  ``mu_j v_j <= [mu_j]_+ max(0, u_u) + [mu_j]_- min(0, l_u)`` (a constant).

The expansion ends at the constant ``u_{L-1} = W_L^T c``. The bounds ``[l_u, u_u]`` used at layer ``j`` are the ones
computed before for that layer. For the ``l_inf`` input norm the bound is ``sum_k max(|L_k|, |U_k|)`` over the
bounds ``[L, U]`` of ``grad c^T f``. The forward pre-activation bounds ``[l_z, u_z]`` are an input (the same for
every backward method). No rounding control: this is a reference to compare against to ~1e-9, not a certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _gate_kind(lz: Tensor, uz: Tensor) -> tuple[Tensor, Tensor]:
    """(fixed gate value or nan, unstable mask) per neuron."""
    fixed = torch.where(lz > 0, 1.0, torch.where(uz < 0, 0.0, float("nan"))).to(lz.dtype)
    return fixed, fixed.isnan()


def _expand_upper(
    mu: Tensor, layer: int, weights: Sequence[Tensor], pre: Sequence[tuple[Tensor, Tensor]], ub: list, c: Tensor
) -> Tensor:
    """Upper bound of ``mu^T v_layer`` (rows of ``mu``: several objectives at once) by the RecurJac expansion."""
    const = torch.zeros(mu.shape[0], dtype=mu.dtype)
    n_hidden = len(weights) - 1
    for j in range(layer, n_hidden + 1):  # v_j -> u_j -> v_{j+1} -> ... -> u_{L-1} = W_L^T c
        lz, uz = pre[j - 1]
        s, unstable = _gate_kind(lz, uz)
        lu, uu = ub[j - 1]
        pos, neg = mu.clamp(min=0), mu.clamp(max=0)
        plus, minus = (lu >= 0) & unstable, (uu <= 0) & unstable
        mixed = unstable & ~plus & ~minus
        coef = torch.where(unstable, 0.0, torch.nan_to_num(s) * mu)
        coef = coef + torch.where(plus, pos, 0.0) + torch.where(minus, neg, 0.0)
        const = const + torch.where(mixed, pos * uu.clamp(min=0) + neg * lu.clamp(max=0), 0.0).sum(1)
        # coefficient on u_j; u_j = W_{j+1}^T v_{j+1} (or W_L^T c at the top)
        if j == n_hidden:
            return const + coef @ (weights[-1].T @ c)
        mu = coef @ weights[j].T
    raise AssertionError("unreachable")


def recurjac_bounds(
    weights: Sequence[Tensor], pre: Sequence[tuple[Tensor, Tensor]], c: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]:
    """RecurJac bounds of every upstream gradient ``u_i`` (``i = 1..L-1``) and of ``grad c^T f``.

    ``weights``: ``W_1..W_L`` (``W_i`` of shape ``(n_i, n_{i-1})``); ``pre``: forward bounds ``(l_z, u_z)`` of
    the hidden pre-activations; ``c``: output direction ``(n_L,)``.
    """
    n_hidden = len(weights) - 1
    ub: list = [None] * n_hidden
    top = weights[-1].T @ c
    ub[n_hidden - 1] = (top, top)
    for i in range(n_hidden - 1, -1, -1):  # bound u_{i} = W_{i+1}^T v_{i+1} (u_0 is the input gradient)
        rows = weights[i].T  # row k: the coefficients of (u_i)_k = sum_m (W_{i+1})_{mk} (v_{i+1})_m on v_{i+1}
        up = _expand_upper(rows, i + 1, weights, pre, ub, c)
        lo = -_expand_upper(-rows, i + 1, weights, pre, ub, c)
        if i == 0:
            return ub, (lo, up)
        ub[i - 1] = (lo, up)
    raise AssertionError("unreachable")


def recurjac_linf(weights: Sequence[Tensor], pre: Sequence[tuple[Tensor, Tensor]], c: Tensor) -> float:
    """The RecurJac local Lipschitz bound for the ``l_inf`` input norm: ``sum_k max(|L_k|, |U_k|)``."""
    _, (lo, up) = recurjac_bounds(weights, pre, c)
    return float(torch.maximum(lo.abs(), up.abs()).sum())
