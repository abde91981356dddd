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

from lipbound.engine import patches as P
from lipbound.engine import rounding
from lipbound.engine.patches import Patches
from lipbound.engine.rounding import ACC, magnitudes, node_error_factor, round_down, round_up
from lipbound.graph.ir import Graph, Node
from lipbound.ops.base import Bounds, ConstOp, ElementwiseOp, InputOp, LinearOp

#: alphas for one back-substitution: ``{id(node): alpha}`` for the upper-bound and lower-bound passes
Alphas = dict[int, tuple[Tensor | None, Tensor | None]]
#: per-input lower slopes, lower intercept, per-input upper slopes, upper intercept (None: no dependence)
Relaxation = tuple[list[Tensor | None], Tensor, list[Tensor | None], Tensor]


def _sum_trailing(t: Tensor, k: int) -> Tensor:
    return t.sum(dim=tuple(range(t.dim() - k, t.dim()))) if k else t


def _acc(store: dict, key: int, value) -> None:
    store[key] = value if key not in store else P.add(store[key], value)


def _numel(lam: Tensor | Patches) -> int:
    return lam.numel()


def _abs_dot(lam: Tensor | Patches, t: Tensor, k: int) -> Tensor:
    """``<|lam|, t>`` in float64."""
    if isinstance(lam, Patches):
        return P.dot(lam.with_data(lam.data.abs()), t, k, ACC)
    return _sum64(lam.abs() * t, k)


def _linear_step(op: LinearOp, lam):
    """``M_i^T lam`` for every input: windows kept through convolutions, dense otherwise."""
    from lipbound.engine.jacobian import TransposedLinear
    from lipbound.ops.conv import Conv2dLayer
    from lipbound.ops.linear import LinearLayer
    from lipbound.ops.shape import Reshape

    if isinstance(lam, Patches):
        inner = op.op if isinstance(op, TransposedLinear) else None
        if not lam.flat:
            if isinstance(op, Conv2dLayer):
                return (lam.conv_transpose(op),)
            if isinstance(inner, Conv2dLayer):
                return (lam.conv(inner),)
        # reshapes between (C, H, W) and (C*H*W,): the windows are kept, the node is marked flat (or not)
        n = lam.shape[0] * lam.shape[1] * lam.shape[2]
        for m, src, dst in ((op, "out_shape", "in_shape"), (inner, "in_shape", "out_shape")):
            if isinstance(m, Reshape):
                a, b = tuple(getattr(m, src)), tuple(getattr(m, dst))
                if not lam.flat and a == lam.shape and b == (n,):
                    return (lam.reshaped(True),)
                if lam.flat and a == (n,) and b == lam.shape:
                    return (lam.reshaped(False),)
        if lam.flat and isinstance(inner, LinearLayer):
            return (P.linear_rows([lam], inner.weight)[0],)
        lam = lam.to_dense()
    return op.apply_transpose(lam)


def _linear_pair(op: LinearOp, au, al):
    """Both passes at once where they share work: windows on a flattened node into a Linear (the weight is read
    at the windows once). None otherwise."""
    from lipbound.engine.jacobian import TransposedLinear
    from lipbound.ops.linear import LinearLayer

    if not (isinstance(op, TransposedLinear) and isinstance(op.op, LinearLayer)):
        return None
    if not (isinstance(au, Patches) and isinstance(al, Patches) and au.flat and al.flat):
        return None
    if au.data.shape != al.data.shape or not torch.equal(au.anchor, al.anchor):
        return None
    tu, tl = P.linear_rows([au, al], op.op.weight)
    return (tu,), (tl,)


def _bias_term(op: LinearOp, lam, shape, acc) -> Tensor:
    if isinstance(lam, Patches):
        if op.bias is None:
            return lam.data.new_zeros(lam.data.shape[:2], dtype=acc)
        return P.dot(lam, op.bias, len(shape), acc)
    return op.bias_term(lam, shape, acc)


def _gathered(lam: Patches, t: Tensor, memo: dict) -> Tensor:
    """``lam.gather(t)``, memoised for the upper and lower passes (same windows) of one node."""
    hit = memo.get(id(t))
    if hit is not None and hit[1] is t and (hit[0] is lam.anchor or torch.equal(hit[0], lam.anchor)):
        return hit[2]
    out = lam.gather(t)
    memo[id(t)] = (lam.anchor, t, out)
    return out


def _elementwise_step(lam, relax: Relaxation, upper: bool, k: int, acc, memo: dict):
    """One relaxed node: ``(constant, [coefficient per input or None])`` for the upper (or lower) pass."""
    lws, lb, uws, ub = relax
    if isinstance(lam, Patches):
        pos, neg = lam.data.clamp(min=0), lam.data.clamp(max=0)

        def g(t):
            return _gathered(lam, t, memo)

        hi_b, lo_b = g(ub), g(lb)
        const = pos.to(acc) * (hi_b if upper else lo_b).to(acc) + neg.to(acc) * (lo_b if upper else hi_b).to(acc)
        const = const.sum(dim=(2, 3, 4))
        outs = []
        for lw, uw in zip(lws, uws, strict=True):
            if uw is None:
                outs.append(None)
                continue
            a, b = (uw, lw) if upper else (lw, uw)
            outs.append(lam.with_data(pos * g(a) + neg * g(b)))
        return const, outs
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    const = _sum64(pos * ub + neg * lb, k, acc) if upper else _sum64(pos * lb + neg * ub, k, acc)
    outs = []
    for lw, uw in zip(lws, uws, strict=True):
        if uw is None:
            outs.append(None)
        else:
            outs.append(pos * uw + neg * lw if upper else pos * lw + neg * uw)
    return const, outs


def backsubstitute(
    graph: Graph,
    target: Node,
    lam: Tensor | Patches,
    bounds: dict[int, Bounds],
    input_box: Bounds,
    alphas: Alphas | None = None,
    relax_cache: dict[int, Relaxation] | None = None,
    linear: dict[str, Tensor] | None = None,
    stats: dict[str, int] | None = None,
) -> Bounds:
    """Bounds ``(lo, up)`` of ``<lam_s, target>`` for every row ``s``; shapes ``(B, S)``.

    ``bounds`` must hold bounds of every input of an elementwise op that ``target`` depends on. ``alphas`` gives
    free lower-relaxation slopes per elementwise node (shape broadcastable to ``(B, S, *shape)``).
    ``relax_cache`` memoises alpha-free relaxations (and the rounding magnitudes) across calls. The result bounds
    the exact real-number value, rounding included (:mod:`lipbound.engine.rounding`).
    If ``linear`` is a dict, it receives the bounds as linear functions of the input before concretisation:
    ``A_l x + c_l <= <lam, target> <= A_u x + c_u`` for x in the box (keys ``A_l``, ``c_l``, ``A_u``, ``c_u``;
    ``A`` of shape ``(B, S, *input_shape)``).
    ``lam`` may be dense ``(B, S, *target.shape)`` or windows (:class:`~lipbound.engine.patches.Patches`).
    If ``stats`` is a dict, ``stats["peak_elements"]`` receives the largest number of coefficient elements held
    at once (upper and lower passes), the basis of the memory estimate of :mod:`lipbound.engine.memory`.
    """
    ref = lam.data if isinstance(lam, Patches) else lam  # lam may be windows on a conv-shaped target
    b, s = ref.shape[0], ref.shape[1]
    dtype = ref.dtype
    lam_u: dict[int, Tensor | Patches] = {id(target): lam}
    lam_l: dict[int, Tensor | Patches] = {id(target): lam}
    # constants and rounding-error terms accumulate in float64 (lipbound.engine.rounding)
    rigorous = rounding.RIGOROUS
    acc = ACC if rigorous else dtype
    const_u = ref.new_zeros(b, s, dtype=acc)
    const_l = ref.new_zeros(b, s, dtype=acc)
    nodes = graph.ancestors(target)
    mags = magnitudes(nodes, input_box, bounds, relax_cache) if rigorous else {}
    err_u = ref.new_zeros(b, s, dtype=acc)  # sum_v c_v <|Lambda_v|, T_v>
    err_l = ref.new_zeros(b, s, dtype=acc)
    for node in reversed(nodes):
        key = id(node)
        if key not in lam_u:
            continue
        if stats is not None:
            live = sum(_numel(v) for v in (*lam_u.values(), *lam_l.values()))
            stats["peak_elements"] = max(stats.get("peak_elements", 0), live)
        au, al = lam_u.pop(key), lam_l.pop(key)
        op, k = node.op, len(node.shape)
        if rigorous:
            with torch.no_grad():
                cv = node_error_factor(node, len(nodes), dtype)
                tv = mags[key].unsqueeze(1)
                if not isinstance(op, ElementwiseOp):  # relaxed nodes add T_v to their relaxation scale below
                    err_u = err_u + cv * _abs_dot(au, tv, k)
                    err_l = err_l + cv * _abs_dot(al, tv, k)
        if isinstance(op, InputOp):
            if linear is not None:
                linear.update(A_l=P.dense(al), A_u=P.dense(au))
                input_node = node
                continue
            const_u, const_l = _concretise(input_box, au, al, const_u, const_l, k)
        elif isinstance(op, ConstOp):
            v = op.value.unsqueeze(1)
            const_u = const_u + _sum64(P.dense(au) * v, k, acc)
            const_l = const_l + _sum64(P.dense(al) * v, k, acc)
        elif isinstance(op, LinearOp):
            const_u = const_u + _bias_term(op, au, node.shape, acc)
            const_l = const_l + _bias_term(op, al, node.shape, acc)
            pair = _linear_pair(op, au, al)
            steps_u, steps_l = pair if pair is not None else (_linear_step(op, au), _linear_step(op, al))
            for inp, tu, tl in zip(node.inputs, steps_u, steps_l, strict=True):
                _acc(lam_u, id(inp), tu)
                _acc(lam_l, id(inp), tl)
        elif isinstance(op, ElementwiseOp):
            alpha_u, alpha_l = (alphas or {}).get(key, (None, None))
            ru = rl = _relaxation(node, bounds, alpha_u, relax_cache)
            if alpha_l is not alpha_u:
                rl = _relaxation(node, bounds, alpha_l, relax_cache)
            memo: dict = {}
            cu, outs_u = _elementwise_step(au, ru, True, k, acc, memo)
            cl, outs_l = _elementwise_step(al, rl, False, k, acc, memo)
            const_u, const_l = const_u + cu, const_l + cl
            if rigorous:
                with torch.no_grad():  # rounding of the relaxation lines and of their use
                    scale_u = tv + _relaxation_scale(node, ru, mags)
                    scale_l = scale_u if rl is ru else tv + _relaxation_scale(node, rl, mags)
                    err_u = err_u + cv * _abs_dot(au, scale_u, k)
                    err_l = err_l + cv * _abs_dot(al, scale_l, k)
            for inp, tu, tl in zip(node.inputs, outs_u, outs_l, strict=True):
                if tu is not None:
                    _acc(lam_u, id(inp), tu)
                if tl is not None:
                    _acc(lam_l, id(inp), tl)
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
    if isinstance(au, Patches) and isinstance(al, Patches):
        return (
            const_u + P.dot(au, centre, k, acc) + P.dot(au.with_data(au.data.abs()), radius, k, acc),
            const_l + P.dot(al, centre, k, acc) - P.dot(al.with_data(al.data.abs()), radius, k, acc),
        )
    au, al = P.dense(au).to(acc), P.dense(al).to(acc)
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


def identity_rows(node: Node, rows: Tensor, batch: int, like: Tensor) -> Tensor:
    """Rows ``e_j`` (``j`` in ``rows``, flat indices) of the identity on ``node``: ``(B, len(rows), *shape)``,
    built without the full ``n x n`` identity."""
    out = torch.zeros(len(rows), node.numel, dtype=like.dtype, device=like.device)
    out[torch.arange(len(rows), device=like.device), rows] = 1
    return out.reshape(1, len(rows), *node.shape).expand(batch, *out.shape[:1], *node.shape)


def identity_spec(node: Node, batch: int, like: Tensor) -> Tensor:
    """``Lambda = I``: one specification row per element of ``node``; shape ``(B, n, *node.shape)``."""
    n = node.numel
    eye = torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, *node.shape)
    return eye.unsqueeze(0).expand(batch, *eye.shape)
