"""Linear bound propagation (CROWN back-substitution) over any lipbound :class:`~lipbound.graph.ir.Graph`.

For a target node ``t`` and a coefficient tensor ``Lambda`` (shape ``(B, S, *t.shape)``, ``S`` specification
rows) we compute, for every row ``s``, numbers ``lo_s <= <Lambda_s, t(x)> <= up_s`` valid for all inputs ``x`` in the
box ``[x_l, x_u]``. Two coefficient tensors travel backwards from ``t`` to the input: ``Lambda^U`` (for the upper
bound) and ``Lambda^L`` (for the lower bound), with constant terms ``c^U``, ``c^L``:

* linear node ``v = M(w_1..w_k) + b``: ``Lambda_{w_i} += M_i^T Lambda_v``; ``c += <Lambda_v, b>``;
* relaxed node ``v = sigma(w_1..w_k)`` with ``sum_i lw_i w_i + lb <= v <= sum_i uw_i w_i + ub`` on the bounds of
  its inputs (elementwise activations have ``k = 1``; Jacobian gates ``v = sigma'(z) g`` have ``k = 2``):
  ``Lambda^U_{w_i} += [Lambda^U]_+ uw_i + [Lambda^U]_- lw_i``, ``c^U += [Lambda^U]_+ ub + [Lambda^U]_- lb``
  (mirror for L);
* input leaf: ``max_{x in box} <Lambda, x> = <Lambda, x_c> + <|Lambda|, x_r>`` (centre/radius of the box).

The same routine bounds forward pre-activations and the nodes of backward (Jacobian) graphs: it only uses the op
interfaces of :mod:`lipbound.ops.base`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lipbound.graph.ir import Graph, Node
from lipbound.ops.base import Bounds, ConstOp, ElementwiseOp, InputOp, LinearOp

#: alphas for one back-substitution: ``{id(node): alpha}`` for the upper-bound and lower-bound passes
Alphas = dict[int, tuple[Tensor | None, Tensor | None]]
#: per-input lower slopes, lower intercept, per-input upper slopes, upper intercept (None: no dependence)
Relaxation = tuple[list[Tensor | None], Tensor, list[Tensor | None], Tensor]


def _sum_trailing(t: Tensor, k: int) -> Tensor:
    return t.sum(dim=tuple(range(t.dim() - k, t.dim()))) if k else t


def _acc(store: dict[int, Tensor], key: int, value: Tensor) -> None:
    store[key] = value if key not in store else store[key] + value


def backsubstitute(
    graph: Graph,
    target: Node,
    lam: Tensor,
    bounds: dict[int, Bounds],
    input_box: Bounds,
    alphas: Alphas | None = None,
    relax_cache: dict[int, Relaxation] | None = None,
    linear: dict[str, Tensor] | None = None,
) -> Bounds:
    """Bounds ``(lo, up)`` of ``<lam_s, target>`` for every row ``s``; shapes ``(B, S)``.

    ``bounds`` must hold bounds of every input of an elementwise op that ``target`` depends on. ``alphas`` gives
    free lower-relaxation slopes per elementwise node (shape broadcastable to ``(B, S, *shape)``).
    ``relax_cache`` memoises alpha-free relaxations across calls. If ``linear`` is a dict, it receives the bounds
    as linear functions of the input before concretisation: ``A_l x + c_l <= <lam, target> <= A_u x + c_u`` for x
    in the box (keys ``A_l``, ``c_l``, ``A_u``, ``c_u``; ``A`` of shape ``(B, S, *input_shape)``).
    """
    b, s = lam.shape[0], lam.shape[1]
    lam_u: dict[int, Tensor] = {id(target): lam}
    lam_l: dict[int, Tensor] = {id(target): lam}
    const_u = lam.new_zeros(b, s)
    const_l = lam.new_zeros(b, s)
    for node in reversed(graph.ancestors(target)):
        key = id(node)
        if key not in lam_u:
            continue
        au, al = lam_u.pop(key), lam_l.pop(key)
        op, k = node.op, len(node.shape)
        if isinstance(op, InputOp):
            if linear is not None:
                linear.update(A_l=al, A_u=au)
                input_node = node
                continue
            const_u, const_l = _concretise(input_box, au, al, const_u, const_l, k)
        elif isinstance(op, ConstOp):
            v = op.value.unsqueeze(1)
            const_u = const_u + _sum_trailing(au * v, k)
            const_l = const_l + _sum_trailing(al * v, k)
        elif isinstance(op, LinearOp):
            const_u = const_u + op.bias_term(au, node.shape)
            const_l = const_l + op.bias_term(al, node.shape)
            for inp, tu, tl in zip(node.inputs, op.apply_transpose(au), op.apply_transpose(al), strict=True):
                _acc(lam_u, id(inp), tu)
                _acc(lam_l, id(inp), tl)
        elif isinstance(op, ElementwiseOp):
            alpha_u, alpha_l = (alphas or {}).get(key, (None, None))
            ru = rl = _relaxation(node, bounds, alpha_u, relax_cache)
            if alpha_l is not alpha_u:
                rl = _relaxation(node, bounds, alpha_l, relax_cache)
            lws_u, lb_u, uws_u, ub_u = ru
            lws_l, lb_l, uws_l, ub_l = rl
            pos_u, neg_u = au.clamp(min=0), au.clamp(max=0)
            pos_l, neg_l = al.clamp(min=0), al.clamp(max=0)
            const_u = const_u + _sum_trailing(pos_u * ub_u + neg_u * lb_u, k)
            const_l = const_l + _sum_trailing(pos_l * lb_l + neg_l * ub_l, k)
            for i, inp in enumerate(node.inputs):
                if uws_u[i] is not None:
                    _acc(lam_u, id(inp), pos_u * uws_u[i] + neg_u * lws_u[i])
                if uws_l[i] is not None:
                    _acc(lam_l, id(inp), pos_l * lws_l[i] + neg_l * uws_l[i])
        else:  # pragma: no cover - every op is one of the kinds above
            raise TypeError(f"no bound propagation rule for {op.describe()}")
    if linear is not None:
        linear.update(c_l=const_l, c_u=const_u)
        if "A_u" in linear:
            const_u, const_l = _concretise(
                input_box, linear["A_u"], linear["A_l"], const_u, const_l, len(input_node.shape)
            )
    return const_l, const_u


def _concretise(input_box: Bounds, au: Tensor, al: Tensor, const_u: Tensor, const_l: Tensor, k: int):
    """Add ``max / min over the box`` of ``<A, x>``: ``<A, x_c> +- <|A|, x_r>`` (centre/radius of the box)."""
    xl, xu = input_box
    centre, radius = ((xl + xu) / 2).unsqueeze(1), ((xu - xl) / 2).unsqueeze(1)
    return (
        const_u + _sum_trailing(au * centre + au.abs() * radius, k),
        const_l + _sum_trailing(al * centre - al.abs() * radius, k),
    )


def _relaxation(
    node: Node,
    bounds: dict[int, Bounds],
    alpha: Tensor | None,
    cache: dict[int, Relaxation] | None,
) -> Relaxation:
    """Relaxation of ``node``'s op on the bounds of its inputs, with a spec dimension inserted at dim 1."""
    if alpha is None and cache is not None and id(node) in cache:
        return cache[id(node)]
    in_bounds = [(bounds[id(i)][0].unsqueeze(1), bounds[id(i)][1].unsqueeze(1)) for i in node.inputs]
    r = node.op.relax_inputs(in_bounds, alpha)
    if alpha is None and cache is not None:
        cache[id(node)] = r
    return r


def identity_spec(node: Node, batch: int, like: Tensor) -> Tensor:
    """``Lambda = I``: one specification row per element of ``node``; shape ``(B, n, *node.shape)``."""
    n = node.numel
    eye = torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, *node.shape)
    return eye.unsqueeze(0).expand(batch, *eye.shape)
