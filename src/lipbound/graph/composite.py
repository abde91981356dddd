"""Exact rebuilds, from registry ops, of the operators that have no registry entry of their own.

Both importers (:mod:`lipbound.graph.onnx_import`, :mod:`lipbound.graph.torchscript`) dispatch every torch call on
a traced tensor through the converters of :data:`~lipbound.ops.registry.REGISTRY` (:func:`call`), so each operator
keeps one set of forward/interval/relaxation/Jacobian rules. The operators below are rewritten into registry ops
with the same values everywhere (no relaxation is involved). Shapes are per sample (the batch dimension is kept
apart), ``vec`` flattens the per-sample features in row-major order and ``n = numel(x)``:

* :func:`select` (slices, gathers, ``select``, squeezes of a traced tensor): ``y = S vec(x)`` with the 0/1
  selection matrix ``S[k, index[k]] = 1``, stored as its index vector (:class:`~lipbound.ops.indexing.Gather`);
* :func:`permute` (transposes): :func:`select` with ``index = permute(arange(n).reshape(shape))``;
* :func:`concat`: ``y = sum_i E_i vec(x_i)`` with embedding maps ``E_i`` (``E_i[p, j] = 1`` where feature
  ``j`` of ``x_i`` lands at position ``p`` of the output), each a :class:`~lipbound.ops.indexing.Gather`;
* :func:`maximum` / :func:`minimum` of two traced tensors of the same shape: ``max(a, b) = b + relu(a - b)``,
  ``min(a, b) = a - relu(a - b)``; when both are taken of the same pair they share the node ``relu(a - b)``;
* :func:`sort_last` (a full sort along the last axis, of size ``g``): ``GroupSort`` with groups of ``g``
  consecutive features on ``vec(x)``, which are exactly the rows being sorted, giving the descending sort;
  ascending is ``-sort_desc(-x)``. Its index output has no rules and is represented by :class:`SortIndices`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lipbound.errors import ShapeMismatchError, UnsupportedOperatorError
from lipbound.graph.builder import GraphBuilder
from lipbound.graph.ir import BATCH, Node
from lipbound.nn.activations import GroupSort
from lipbound.ops.catalog import REGISTRY
from lipbound.ops.indexing import concat_node, feature_index, select_node


def call(fn: Any, b: GraphBuilder, *args: Any, **kwargs: Any) -> Any:
    """Dispatch the torch call ``fn(*args, **kwargs)`` through its registry converter."""
    conv = REGISTRY.functions.get(fn)
    if conv is None:  # pragma: no cover - a registry entry the importers rely on is missing
        raise UnsupportedOperatorError(getattr(fn, "__name__", str(fn)), b.origin, REGISTRY.supported())
    return conv(b, None, args, kwargs)


def reshape(b: GraphBuilder, x: Node, shape: tuple[int, ...]) -> Node:
    """Reshape the per-sample part of ``x`` (batch dimension kept)."""
    if tuple(shape) == x.shape:
        return x
    return call(torch.reshape, b, x, (BATCH, *shape))


def select(b: GraphBuilder, x: Node, index: Tensor) -> Node:
    """``y[k] = x.flat[index[k]]`` for a constant integer array ``index`` (per-sample output shape = its shape)."""
    return select_node(b, x, index)


def permute(b: GraphBuilder, x: Node, perm: list[int]) -> Node:
    """Permute the per-sample axes of ``x`` (``perm`` indexes per-sample axes): a :func:`select`."""
    return select(b, x, feature_index(x).permute(*perm))


def concat(b: GraphBuilder, xs: list[Node], axis: int) -> Node:
    """Concatenate traced tensors along per-sample ``axis``: ``y = sum_i E_i x_i`` (exact)."""
    return concat_node(b, xs, axis)


def maximum(b: GraphBuilder, x: Node, y: Node, cache: dict | None = None) -> Node:
    """``max(x, y) = y + relu(x - y)`` (exact; the Clarke derivative at ties covers both selections)."""
    return call(operator.add, b, y, _relu_diff(b, x, y, cache))


def minimum(b: GraphBuilder, x: Node, y: Node, cache: dict | None = None) -> Node:
    """``min(x, y) = x - relu(x - y)``."""
    return call(operator.sub, b, x, _relu_diff(b, x, y, cache))


def _relu_diff(b: GraphBuilder, x: Node, y: Node, cache: dict | None) -> Node:
    key = (id(x), id(y))
    if cache is not None and key in cache:
        return cache[key]
    if x.shape != y.shape:
        raise UnsupportedOperatorError("max/min with broadcasting", b.origin, hint=f"shapes {x.shape}, {y.shape}")
    r = call(torch.relu, b, call(operator.sub, b, x, y))
    if cache is not None:
        cache[key] = r
    return r


def sort_last(b: GraphBuilder, x: Node, descending: bool = True) -> Node:
    """Sort along the last per-sample axis: ``GroupSort`` with groups of that size on the flattened features."""
    if not x.shape:
        raise ShapeMismatchError(f"sort at {b.origin!r} needs a per-sample axis")
    g = x.shape[-1]
    if g == 1:
        return x
    src = x if descending else call(operator.neg, b, x)
    flat = reshape(b, src, (x.numel,))
    y = REGISTRY.modules[GroupSort](b, GroupSort(g, "consecutive"), (flat,), {})
    y = reshape(b, y, x.shape)
    return y if descending else call(operator.neg, b, y)


class SortIndices:
    """Stands for the index output of a sort (``TopK``, ``aten::sort``); it has no bound rules."""

    def __init__(self, where: str) -> None:
        self.where = where


def registrar(table: dict[str, Any]) -> Callable[..., Callable[[Any], Any]]:
    """``@register("A", "B")`` decorator factory that files a handler under several op names in ``table``
    (the importers' translation tables)."""

    def register(*names: str) -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            for n in names:
                table[n] = fn
            return fn

        return deco

    return register
