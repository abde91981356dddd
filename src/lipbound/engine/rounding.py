"""Rigorous floating-point error terms for the bound engine (the bounds hold for the exact real-number network).

Standard model of floating-point arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): with
unit round-off ``u`` (2^-53 in float64, 2^-24 in float32), a sum or dot product of ``n`` terms satisfies

    |fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_n sum_i |a_i| |b_i|,      gamma_n = n u / (1 - n u).

The error is relative to the MAGNITUDES of the terms, not to the result: large cancelling weights (1e8 entries
whose product is small) make a result-relative margin useless. The engine therefore carries, for every node ``v``,
a magnitude ``T_v >= |terms that produce v|`` (elementwise, per input of the batch):

* input leaf: ``T = max(|x_l|, |x_u|)`` (covers the centre/radius rounding of the box too);
* constant: ``T = |value|``;
* linear node ``v = M(w) + b``: ``T_v = |M| T_w + |b|`` (also an upper bound of ``|v|``);
* elementwise / gated node: ``T_v = max(|l_v|, |u_v|)`` from its interval.

A back-substitution step at node ``v`` with coefficients ``Lambda_v`` computes ``M^T Lambda_v``, ``<Lambda_v, b>``
and the running constant; the computed coefficients are then used as they are, which is sound provided the error
``<delta, w>`` is added, with ``|delta| <= gamma |M^T| |Lambda_v|`` and ``|w| <= T_w``, i.e. at most
``gamma <|Lambda_v|, |M| T_w> <= gamma <|Lambda_v|, T_v>``. Relaxed nodes add ``gamma <|Lambda_v|, |slope| T_w +
|intercept|>`` (the rounding of the relaxation lines and of their use). Summing over the nodes:

    |computed bound - exact bound| <= sum_v c_v <|Lambda_v|, T_v>

with ``c_v`` from :func:`node_error_factor` (``gamma`` is doubled, to cover the rounding of the error terms
themselves). Reductions run in float64 whatever the computation dtype, so in float32 the error is governed by the
short sums (a layer's fan-in), not by the length of the reductions; the result is rounded outward to the dtype
(:func:`round_up`). ``gamma_{m_v + 8} T_v`` widens interval (IBP) bounds of linear nodes. Folded parameters (BatchNorm's
``gamma / sqrt(var + eps)``, three roundings) are within ``4 u`` of their exact values relative to themselves, which
the ``+ 8`` of every count covers. Elementwise functions (tanh, sigmoid: a few ulp)
keep the engine's relative margin (:func:`lipbound.engine.forward.outward`), which is far above their error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.graph.ir import Node
from lipbound.ops.base import ConstOp, InputOp, LinearOp


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2`` of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """``2 gamma_n`` (Higham's ``n u / (1 - n u)``, doubled to cover the rounding of the error terms themselves)."""
    nu = n * unit_roundoff(dtype)
    if nu >= 0.5:
        return float("inf")
    return 2 * nu / (1 - nu)


ACC = torch.float64  # dtype of every reduction (sums over a node's elements, running constants)
#: False only to MEASURE what rigour costs (benchmarks/rigour_bench.py): drops the error terms and the float64
#: accumulation, i.e. the engine's pre-rigour behaviour; certified numbers are then not guaranteed
RIGOROUS = True


def node_error_factor(node: Node, n_nodes: int, dtype: torch.dtype) -> float:
    """Coefficient ``c_v`` of ``<|Lambda_v|, T_v>`` in the error bound of one back-substitution step at ``node``.

    Products and the adjoint sums ``M^T Lambda`` run in ``dtype`` (at most ``max_terms`` products per entry, plus
    the additions of the coefficients arriving from several consumers); the reductions over the node's elements
    and the running constant run in float64 (:data:`ACC`). Hence
    ``c_v = gamma_{m_v + #nodes + 8}(dtype) + gamma_{|v| + |inputs| + #nodes + 8}(float64)``.
    """
    op = node.op
    in_numel = sum(i.numel for i in node.inputs)
    m = op.max_terms(in_numel, node.numel) if isinstance(op, LinearOp) else 2
    return gamma(m + n_nodes + 8, dtype) + gamma(node.numel + in_numel + n_nodes + 8, ACC)


def round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float64) as ``dtype``, rounded towards +inf (differentiable: the correction is a constant)."""
    y = x.to(dtype)
    if dtype == x.dtype:
        return y
    step = (torch.nextafter(y.detach(), torch.full_like(y, float("inf"))) - y.detach()) * (y.detach().to(x.dtype) < x)
    return y + step


def round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float64) as ``dtype``, rounded towards -inf."""
    return -round_up(-x, dtype)


def linear_magnitude(op: LinearOp, input_mags: list[Tensor]) -> Tensor:
    """``|M| T_w + |b|``: bounds ``|v|`` and the terms summed to compute ``v`` (batch-shaped like the inputs)."""
    t = op.abs().apply(*input_mags)
    return t if op.bias is None else t + op.bias.abs()


def magnitudes(
    nodes: list[Node],
    box: tuple[Tensor, Tensor],
    bounds: dict[int, tuple[Tensor, Tensor]],
    cache: dict | None = None,
) -> dict[int, Tensor]:
    """``T_v`` (module docstring) for every node of ``nodes`` (topological order, ancestors included).

    ``bounds`` must hold interval bounds of the inputs of every non-linear node (the relaxations need them anyway);
    a non-linear node whose own bounds are known uses them directly. ``cache`` (a dict shared by the calls of one
    bounding pass) keeps magnitudes already computed: they stay valid when bounds are later tightened.
    """
    xl, xu = box
    out: dict[int, Tensor] = {}
    with torch.no_grad():
        for n in nodes:
            if cache is not None and ("magnitude", id(n)) in cache:
                out[id(n)] = cache[("magnitude", id(n))]
                continue
            op = n.op
            if isinstance(op, InputOp):
                t = torch.maximum(xl.abs(), xu.abs())
            elif isinstance(op, ConstOp):
                t = op.value.abs()  # constants carry a batch-like leading dim
            elif isinstance(op, LinearOp):
                t = linear_magnitude(op, [out[id(i)] for i in n.inputs])
            elif id(n) in bounds:
                l, u = bounds[id(n)]
                t = torch.maximum(l.abs(), u.abs())
            else:
                l, u = op.interval(*(bounds[id(i)] for i in n.inputs))
                t = torch.maximum(l.abs(), u.abs())
            out[id(n)] = t.detach()
            if cache is not None:
                cache[("magnitude", id(n))] = out[id(n)]
    return out
