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

from lipbound.engine import rounding
from lipbound.engine.rounding import ACC, magnitudes, node_error_factor, round_down, round_up
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
    ``relax_cache`` memoises alpha-free relaxations (and the rounding magnitudes) across calls. The result bounds
    the exact real-number value, rounding included (:mod:`lipbound.engine.rounding`).
    If ``linear`` is a dict, it receives the bounds as linear functions of the input before concretisation:
    ``A_l x + c_l <= <lam, target> <= A_u x + c_u`` for x in the box (keys ``A_l``, ``c_l``, ``A_u``, ``c_u``;
    ``A`` of shape ``(B, S, *input_shape)``).
    """
    b, s = lam.shape[0], lam.shape[1]
    dtype = lam.dtype
    lam_u: dict[int, Tensor] = {id(target): lam}
    lam_l: dict[int, Tensor] = {id(target): lam}
    # constants and rounding-error terms accumulate in float64 (lipbound.engine.rounding)
    rigorous = rounding.RIGOROUS
    acc = ACC if rigorous else dtype
    const_u = lam.new_zeros(b, s, dtype=acc)
    const_l = lam.new_zeros(b, s, dtype=acc)
    nodes = graph.ancestors(target)
    mags = magnitudes(nodes, input_box, bounds, relax_cache) if rigorous else {}
    err_u = lam.new_zeros(b, s, dtype=acc)  # sum_v c_v <|Lambda_v|, T_v>
    err_l = lam.new_zeros(b, s, dtype=acc)
    for node in reversed(nodes):
        key = id(node)
        if key not in lam_u:
            continue
        au, al = lam_u.pop(key), lam_l.pop(key)
        op, k = node.op, len(node.shape)
        if rigorous:
            with torch.no_grad():
                cv = node_error_factor(node, len(nodes), dtype)
                tv = mags[key].unsqueeze(1)
                err_u = err_u + cv * _sum64(au.abs() * tv, k)
                err_l = err_l + cv * _sum64(al.abs() * tv, k)
        if isinstance(op, InputOp):
            if linear is not None:
                linear.update(A_l=al, A_u=au)
                input_node = node
                continue
            const_u, const_l = _concretise(input_box, au, al, const_u, const_l, k)
        elif isinstance(op, ConstOp):
            v = op.value.unsqueeze(1)
            const_u = const_u + _sum64(au * v, k, acc)
            const_l = const_l + _sum64(al * v, k, acc)
        elif isinstance(op, LinearOp):
            const_u = const_u + op.bias_term(au, node.shape, acc)
            const_l = const_l + op.bias_term(al, node.shape, acc)
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
            const_u = const_u + _sum64(pos_u * ub_u + neg_u * lb_u, k, acc)
            const_l = const_l + _sum64(pos_l * lb_l + neg_l * ub_l, k, acc)
            if rigorous:
                with torch.no_grad():  # rounding of the relaxation lines and of their use
                    err_u = err_u + cv * _sum64(au.abs() * _relaxation_scale(node, ru, mags), k)
                    err_l = err_l + cv * _sum64(al.abs() * _relaxation_scale(node, rl, mags), k)
            for i, inp in enumerate(node.inputs):
                if uws_u[i] is not None:
                    _acc(lam_u, id(inp), pos_u * uws_u[i] + neg_u * lws_u[i])
                if uws_l[i] is not None:
                    _acc(lam_l, id(inp), pos_l * lws_l[i] + neg_l * uws_l[i])
        else:  # pragma: no cover - every op is one of the kinds above
            raise TypeError(f"no bound propagation rule for {op.describe()}")
    const_u, const_l = const_u + err_u, const_l - err_l
    if linear is not None:
        linear.update(c_l=round_down(const_l, dtype), c_u=round_up(const_u, dtype))
        if "A_u" in linear:
            const_u, const_l = _concretise(
                input_box, linear["A_u"], linear["A_l"], const_u, const_l, len(input_node.shape)
            )
    return round_down(const_l, dtype), round_up(const_u, dtype)


def _sum64(t: Tensor, k: int, acc: torch.dtype = ACC) -> Tensor:
    """Sum over the ``k`` trailing dims in float64 (:data:`lipbound.engine.rounding.ACC`)."""
    return _sum_trailing(t.to(acc), k)


def _relaxation_scale(node: Node, relax: Relaxation, mags: dict[int, Tensor]) -> Tensor:
    """``sum_i (|lw_i| + |uw_i|) T_{w_i} + |lb| + |ub|``: magnitude of the relaxation terms at ``node``."""
    lws, lb, uws, ub = relax
    scale = lb.abs() + ub.abs()
    for inp, lw, uw in zip(node.inputs, lws, uws, strict=True):
        t = mags[id(inp)].unsqueeze(1)
        for w in (lw, uw):
            if w is not None:
                scale = scale + w.abs() * t
    return scale


def _concretise(input_box: Bounds, au: Tensor, al: Tensor, const_u: Tensor, const_l: Tensor, k: int):
    """Add ``max / min over the box`` of ``<A, x>``: ``<A, x_c> +- <|A|, x_r>`` (centre/radius of the box).

    Evaluated in float64 (the rounding is covered by the input leaf's term ``c_x <|A|, max(|x_l|, |x_u|)>``)."""
    acc = const_u.dtype
    xl, xu = (t.to(acc) for t in input_box)
    centre, radius = ((xl + xu) / 2).unsqueeze(1), ((xu - xl) / 2).unsqueeze(1)
    au, al = au.to(acc), al.to(acc)
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
