"""Householder activation (``lipbound.nn.Householder``) lowered to a ReLU network for the local engine.

Per pair ``(i, j)`` with ``v = (v_1, v_2)``: ``sigma_v(z) = z + 2 v relu(-v^T z)``. All pairs together are
``r = relu(D z)``, ``y = z + N r`` with ``D[k, i] = -v_1, D[k, j] = -v_2`` and ``N[i, k] = 2 v_1, N[j, k] = 2 v_2``
(constant matrices on the feature dimension, :class:`~lipbound.ops.sorting.FeatureMix`). The lowering is exact,
and Clarke derivatives are preserved (at ``v^T z = 0`` the ReLU gate ranges over [0, 1]).
"""

from __future__ import annotations

import torch

from lipbound.errors import ShapeMismatchError
from lipbound.nn.householder import Householder
from lipbound.ops.arith import WeightedSum
from lipbound.ops.registry import REGISTRY
from lipbound.ops.relu import ReLU
from lipbound.ops.sorting import FeatureMix


def householder_matrices(m: Householder, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, N)`` of the module docstring, shapes ``(C/2, C)`` and ``(C, C/2)``."""
    c = m.num_features
    i, j = m.pairs()
    v1, v2 = (t.detach().to(dtype=dtype, device=device) for t in m.unit_vectors())
    k = torch.arange(c // 2)
    d = torch.zeros(c // 2, c, dtype=dtype, device=device)
    n = torch.zeros(c, c // 2, dtype=dtype, device=device)
    d[k, i], d[k, j] = -v1, -v2
    n[i, k], n[j, k] = 2 * v1, 2 * v2
    return d, n


@REGISTRY.module(Householder, name="Householder")
def _convert(builder, m: Householder, args, kwargs):
    x = args[0]
    if not x.shape or x.shape[0] != m.num_features:
        raise ShapeMismatchError(
            f"Householder({m.num_features}) at {builder.origin!r} expects {m.num_features} features, got {x.shape}"
        )
    value = builder.value(x)
    d, n = householder_matrices(m, value.dtype, value.device)
    nd = len(x.shape)
    proj = builder.add(FeatureMix(d, nd), [x], name="hh_proj")
    r = builder.add(ReLU(), [proj], name="hh_relu")
    spread = builder.add(FeatureMix(n, nd), [r], name="hh_spread")
    out = builder.add(WeightedSum([1.0, 1.0]), [x, spread], name="hh_out")
    if hasattr(builder, "composite"):
        builder.composite(
            m, x, out, len(builder.nodes) - 4, "householder"
        )  # kept whole for global bounds (one activation)
    return out
