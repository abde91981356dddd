"""Local l2 Lipschitz bounds by LipSDP-Neuron with per-neuron slope intervals, and cheap certified global bounds.

**Local SDP** (``local_lipschitz(..., norm=2, method="lipsdp")``). On a convex box ``X`` the l2 local constant of a
row ``c^T f`` is ``sup_{x in X} sup_{J in Clarke(f)(x)} ||J^T c||_2``, and every such ``J`` is
``W_L D_L W_{L-1} ... D_1 W_0`` with diagonal ``D_k`` whose entries lie in the slope interval ``[alpha_i, beta_i]``
of neuron ``i`` over its pre-activation bounds ``[l_i, u_i]`` on the box (our CROWN forward bounds):

* ReLU: ``[1, 1]`` if ``l_i > 0`` (stably active), ``[0, 0]`` if ``u_i < 0`` (stably inactive), else ``[0, 1]``;
* LeakyReLU(a): ``[1, 1]``, ``[a, a]`` or ``[min(a, 1), max(a, 1)]`` likewise;
* tanh, sigmoid: ``[min s'(z), max s'(z)]`` over ``z in [l_i, u_i]`` (``s'`` is unimodal with its peak at 0),
  widened outward by ``1e-12`` relative (plus the smallest normal number) to cover the float64 evaluation.

For any vector ``dx`` the chain ``dz_k = W_{k-1} dh_{k-1}``, ``dh_k = D_k dz_k`` meets the quadratic constraints
``(dh_i - alpha_i dz_i)(beta_i dz_i - dh_i) >= 0``, so the LipSDP-Neuron S-procedure (the LMI of
:mod:`lipbound.global_bounds.lipsdp` with per-neuron slopes, last layer ``c^T W_L``) proves
``||c^T J||_2 <= sqrt(rho)`` for every such ``J`` (as in ECLipsE-Gen-Local). Per neuron the local constraint
implies the global ``[0, 1]`` one on every 2x2 moment matrix, so the optimal local value is never above the
global LipSDP-Neuron value; it is tighter whenever stable neurons exist.

Reductions before solving, per (input, row) problem: stably inactive neurons (slope ``[0, 0]``) are dropped
(exact); trailing hidden layers whose slopes are all fixed (``alpha = beta``) are folded into the row
(``v <- (v * alpha) W_k``, with an entrywise bound ``e`` on the rounding of these vector-matrix products, whose
contribution ``sup_D ||e^T D ... W_0||_2`` is bounded by an absolute-value product and added); every layer is divided by
a power of two (exact). When every layer is fixed (small eps) the bound is ``||c^T W_L D_L ... W_0||_2`` itself
plus its rounding bound. Weights are the model's own Linear weights (one Linear per affine segment: composing
affine ops is not rounding-exact under cancellation). The solver's multipliers are certified in float64 by
:func:`lipbound.global_bounds.lipsdp.certify_rho`.

**Cheap global bounds** (:func:`cheap_global_rows`, used by ``local_lipschitz(use_global=True)``): for each row,

* ``||v||_q`` with ``v = kappa |c^T W_L| |W_{L-1}| ... |W_0|`` (``kappa = prod_k max|slope_k|``, computed with
  every rounding bounded upward): ``|c^T J| <= v`` entrywise for every ``J``, so ``||J^T c||_q <= ||v||_q``;
* l2/l1 (``q = 2``/``inf``): ``||c||_2`` times a certified global l2 bound (ECLipsE-Fast where it applies, else
  the product of spectral norms), since ``||J^T c||_inf <= ||J^T c||_2 <= ||c||_2 ||J||_2``;
* l_inf (``q = 1``): ``||c||_1`` times the global l_inf product bound (``||J^T c||_1 <= ||J||_{inf} ||c||_1``).

The whole-map global numbers and the layered weights are computed once per model (cached while its parameters
are unchanged).
"""

from __future__ import annotations

import itertools
import math
import time
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.engine.rounding import gamma
from lipbound.errors import LipboundError, UnsupportedOperatorError
from lipbound.global_bounds.certify import certified_product, certified_sqrt, round_up
from lipbound.graph.ir import Graph

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
#: dense entries of the layered weights above which the cheap global bound is skipped (memory/time of extraction)
MAX_GLOBAL_ENTRIES = 8_000_000
#: relative widenings of fixed slopes tried when the LMI with exactly fixed slopes cannot be certified
WIDEN_FIXED = (1e-3, 1e-2)
F64 = torch.float64


# ------------------------------------------------------------------------------------------- slope intervals


def slope_intervals(kind: str, l: Tensor, u: Tensor, param: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-neuron ``[alpha, beta]`` containing every Clarke derivative of the activation on ``[l, u]``.

    ``kind``: "relu", "leaky_relu" (``param`` = negative slope), "tanh" or "sigmoid". ``l``, ``u`` float64.
    """
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    if kind in ("relu", "leaky_relu"):
        neg = param if kind == "leaky_relu" else 0.0
        lo_s, hi_s = min(neg, 1.0), max(neg, 1.0)
        # strictly positive -> slope 1; strictly negative -> slope neg; touching 0 -> the Clarke interval
        alpha = torch.where(l > 0, one, torch.where(u < 0, one * neg, one * lo_s))
        beta = torch.where(l > 0, one, torch.where(u < 0, one * neg, one * hi_s))
        return alpha, beta
    if kind not in ("tanh", "sigmoid"):
        raise UnsupportedOperatorError(kind, "activation", list(ACTIVATIONS))
    top = 1.0 if kind == "tanh" else 0.25

    def deriv(z: Tensor) -> Tensor:  # accurate to a few ulps relative (no cancellation)
        return 1.0 / torch.cosh(z) ** 2 if kind == "tanh" else torch.sigmoid(z) * torch.sigmoid(-z)

    near = torch.where((l <= 0) & (u >= 0), zero, torch.where(l > 0, l, u))  # point of [l, u] closest to 0
    beta = torch.clamp(deriv(near) * (1 + 1e-12) + torch.finfo(F64).tiny, max=top)
    alpha = torch.clamp(torch.minimum(deriv(l), deriv(u)) * (1 - 1e-12), min=0.0)
    beta = torch.where(near == 0, torch.full_like(beta, top), beta)
    return alpha, beta


# ---------------------------------------------------------------------------------------- layered structure


def linear_chain(graph: Graph) -> tuple[list[Tensor], list[Any]]:
    """``([W_0, ..., W_L], activation nodes)`` of a chain ``Linear -> act -> ... -> Linear``, or raise.

    The weights are the graph's own (the model's, exactly): composing several affine ops into one matrix in
    floating point (as the layered form of :mod:`lipbound.global_bounds.network` does) is not rounding-exact under
    cancellation, so only chains with exactly one Linear per affine segment (reshapes allowed) are accepted.
    """
    from lipbound.ops.base import ElementwiseOp, InputOp
    from lipbound.ops.linear import LinearLayer
    from lipbound.ops.shape import Reshape

    def refuse(why: str):
        return UnsupportedOperatorError(
            "model",
            "local lipsdp / cheap global bound",
            hint="needs a chain Linear -> ReLU/LeakyReLU/tanh/sigmoid -> ... -> Linear with one Linear per affine "
            f"segment ({why})",
        )

    weights: list[Tensor] = []
    acts: list[Any] = []
    pending = False  # a Linear was seen since the last activation
    prev = None
    for n in graph.nodes:
        if isinstance(n.op, InputOp):
            prev = n
            continue
        if len(n.inputs) != 1 or n.inputs[0] is not prev:
            raise refuse(f"{n.op.describe()} at {n.origin or n.name} is not a plain chain step")
        if isinstance(n.op, LinearLayer):
            if pending:
                raise refuse(f"two affine ops in one segment at {n.origin or n.name}")
            weights.append(n.op.weight.detach().to(F64).cpu())
            pending = True
        elif isinstance(n.op, ElementwiseOp) and n.op.name in ACTIVATIONS:
            if not pending:
                raise refuse(f"activation without a Linear before it at {n.origin or n.name}")
            acts.append(n)
            pending = False
        elif not isinstance(n.op, Reshape):
            raise refuse(f"op {n.op.describe()} at {n.origin or n.name}")
        prev = n
    if not pending or prev is not graph.output:
        raise refuse("the output must be a Linear")
    for w0, w1 in itertools.pairwise(weights):
        if w1.shape[1] != w0.shape[0]:
            raise refuse("feature sizes do not chain")
    return weights, acts


# ------------------------------------------------------------------------------------------- one SDP problem


def _reduce(Ws: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]]):
    """Drop neurons with slope ``[0, 0]`` (or no incoming/outgoing weight): exact, no arithmetic."""
    Ws, slopes = list(Ws), list(slopes)
    changed = True
    while changed:
        changed = False
        for k in range(len(slopes)):
            a, b = slopes[k]
            keep = ~((a == 0) & (b == 0)) & np.any(Ws[k] != 0, axis=1) & np.any(Ws[k + 1] != 0, axis=0)
            if not keep.all():
                Ws[k], Ws[k + 1], slopes[k] = Ws[k][keep], Ws[k + 1][:, keep], (a[keep], b[keep])
                changed = True
            if Ws[k].shape[0] == 0:
                return None, None  # constant on the box
    return Ws, slopes


def _fold_fixed_tail(Ws: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]]):
    """Fold trailing layers whose slopes are all fixed into the row: ``v <- (v * alpha) W_k``.

    Returns ``(Ws, slopes, err)`` with ``err >= 0`` bounding ``|exact row - computed row|`` entrywise (each
    vector-matrix product has error at most ``gamma_{n+2} (|v| |alpha|) |W_k|``, propagated exactly).
    """
    Ws, slopes = list(Ws), list(slopes)
    v = Ws[-1][0]
    err = np.zeros_like(v)
    while slopes and np.array_equal(slopes[-1][0], slopes[-1][1]):
        a = slopes[-1][0]
        W = Ws[-2]
        g = gamma(W.shape[0] + 2, F64)
        va = v * a  # exact up to one rounding: covered by g
        err = ((err * np.abs(a)) @ np.abs(W) + g * (np.abs(va) @ np.abs(W))) * (1 + g)
        v = va @ W
        Ws = [*Ws[:-2], v[None, :]]
        slopes = slopes[:-1]
    return Ws, slopes, err


def _abs_chain_norm(e: np.ndarray, Ws: list[np.ndarray], slopes) -> float:
    """Upper bound of ``sup_D ||e^T D_L W_{L-1} ... D_1 W_0||_2`` for ``e >= 0`` (absolute-value product)."""
    v = e
    for k in range(len(slopes) - 1, -1, -1):
        a, b = slopes[k]
        W = Ws[k]
        v = ((v * np.maximum(np.abs(a), np.abs(b))) @ np.abs(W)) * (1 + gamma(W.shape[0] + 3, F64))
    return _vector_norm_up(v) if v.size else 0.0


def _vector_norm_up(w: np.ndarray) -> float:
    """Upper bound of the exact ``||w||_2`` of a float64 vector (sum of squares with its rounding bounded)."""
    s = float(np.sum(w.astype(np.float64) ** 2))
    return certified_sqrt(round_up(s * (1 + gamma(w.size + 4, F64)), 2))


def solve_row(
    Ws: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]], solver: str = "auto", time_budget=None
) -> tuple[float, dict]:
    """Certified ``sup_D ||w^T D_L W_{L-1} ... D_1 W_0||_2`` for ``Ws = [W_0, ..., W_{L-1}, w^T]``, slope boxes."""
    from lipbound.global_bounds.lipsdp import pow2, solve_certified

    Ws, slopes = _reduce(Ws, slopes)
    if Ws is None:
        return 0.0, {"status": "constant on the box", "hidden": 0}
    Ws, slopes, err = _fold_fixed_tail(Ws, slopes)
    err_term = _abs_chain_norm(err, Ws[:-1], slopes) if np.any(err) else 0.0
    if not slopes:
        up = certified_product([1.0, _vector_norm_up(Ws[0][0])]) + err_term
        return round_up(up, 2), {"status": "exact (every slope fixed)", "hidden": 0, "rounding": err_term}
    Ws = list(Ws)
    scales = []
    for k, w in enumerate(Ws):  # the Jacobian is linear in every W_k: any scaling (by powers of 2: exact) is
        sc = pow2(float(np.linalg.norm(w, 2)))
        Ws[k] = w / sc
        scales.append(sc)
    best, info, _ = solve_certified(Ws, slopes, True, solver, time_budget)
    rho = best[0]
    for delta in WIDEN_FIXED if not math.isfinite(rho) else ():
        # A layer mixing fixed-slope (stable) and free neurons makes the multipliers of the fixed ones grow
        # without bound ((w - a z)^2 <= 0 only holds with lambda -> inf) and the LMI too ill-conditioned to
        # certify. Widening a fixed slope a to [a - delta |a|, a] is sound (it contains a) and well-posed.
        wide = [(np.where(a == b, a - delta * np.abs(a), a), b) for a, b in slopes]
        best, info, _ = solve_certified(Ws, wide, True, solver, time_budget)
        rho = best[0]
        if math.isfinite(rho):
            info = {**info, "widened_fixed_slopes": delta}
            break
    upper = certified_product([certified_sqrt(rho), *scales]) if math.isfinite(rho) else math.inf
    upper = round_up(upper + err_term, 2) if err_term else upper
    unstable = int(sum(int((a != b).sum()) for a, b in slopes))
    return upper, {
        "status": info.get("status"),
        "solver": info.get("solver"),
        "hidden": len(slopes),
        "unstable": unstable,
        "rounding": err_term,
        **({"widened_fixed_slopes": info["widened_fixed_slopes"]} if "widened_fixed_slopes" in info else {}),
    }


def local_lipsdp(
    graph: Graph, forward: dict, c: Tensor, solver: str | None = None, time_budget: float | None = None
) -> tuple[Tensor, list[dict]]:
    """Certified local l2 bounds ``(B, K)`` for rows ``c`` ``(B, K, *out)`` from forward bounds ``{id: (l, u)}``.

    One LipSDP-Neuron problem per (input, row) with the row folded into the last layer (``c^T W_L``).
    """
    weights, acts = linear_chain(graph)
    b, k = c.shape[0], c.shape[1]
    Wd = [w.numpy() for w in weights]
    sl = []
    for n in acts:
        lo, hi = forward[id(n.inputs[0])]
        param = float(getattr(n.op, "a", 0.0))
        al, be = slope_intervals(
            n.op.name, lo.detach().to(F64).reshape(b, -1), hi.detach().to(F64).reshape(b, -1), param
        )
        sl.append((al.cpu().numpy(), be.cpu().numpy()))
    rows = c.detach().to(F64).reshape(b, k, -1).cpu().numpy() @ Wd[-1]  # (B, K, n_L)
    out = torch.empty(b, k, dtype=F64)
    infos = []
    name = (solver or "auto").lower()
    for i in range(b):
        for j in range(k):
            t0 = time.perf_counter()
            up, info = solve_row([*Wd[:-1], rows[i, j][None, :]], [(a[i], bb[i]) for a, bb in sl], name, time_budget)
            out[i, j] = up
            infos.append({**info, "seconds": time.perf_counter() - t0})
    return out, infos


# ------------------------------------------------------------------------------------------ cheap global bounds

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version, tuple(p.shape)) for p in model.parameters())


def _global_data(model: Any, graph: Graph) -> dict:
    """Layered weights, activation slope bounds and whole-map global bounds (l2, l_inf); cached per module."""
    key = model if isinstance(model, nn.Module) else None
    if key is not None:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == _fingerprint(key):
            return hit[1]
    elif isinstance(model, Graph) and "_cheap_global" in model.meta:
        return model.meta["_cheap_global"]
    data = _compute_global(graph)
    if key is not None:
        _CACHE[key] = (_fingerprint(key), data)
    elif isinstance(model, Graph):
        model.meta["_cheap_global"] = data
    return data


def _compute_global(graph: Graph) -> dict:
    from lipbound.global_bounds.api import global_lipschitz
    from lipbound.global_bounds.network import Activation, LayeredNetwork

    t0 = time.perf_counter()
    try:
        weights, acts = linear_chain(graph)
    except LipboundError as e:
        return {"error": str(e)}
    if sum(w.numel() for w in weights) > MAX_GLOBAL_ENTRIES:
        return {"error": f"more than {MAX_GLOBAL_ENTRIES} weights"}
    kinds = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "sigmoid": (0.0, 0.25)}
    activations = []
    for n in acts:
        a = float(getattr(n.op, "a", 0.0))
        slope = kinds.get(n.op.name, (min(a, 1.0), max(a, 1.0)))
        activations.append(Activation(n.op.name, slope))
    kappa = certified_product([max(abs(a.slope[0]), abs(a.slope[1])) for a in activations])
    net = LayeredNetwork(weights, activations, [False] * len(acts), [None] * len(weights), (int(weights[0].shape[1]),))
    out: dict = {"weights": weights, "kappa": kappa, "global": {}}
    for norm, methods in (("2", ("eclipse-fast", "product")), ("inf", ("product",))):
        for m in methods:
            try:
                r = global_lipschitz(net, norm, m)
            except (LipboundError, ArithmeticError, np.linalg.LinAlgError):
                continue
            if math.isfinite(r.upper) and r.upper < out["global"].get(norm, (math.inf,))[0]:
                out["global"][norm] = (r.upper, m)
    out["seconds"] = time.perf_counter() - t0
    return out


def _matvec_up(v: Tensor, W: Tensor) -> Tensor:
    """Upper bound of ``v |W|`` for ``v >= 0`` ``(N, m)`` and ``W`` ``(m, n)`` (float64 rounding covered)."""
    return (v @ W.abs()) * (1 + gamma(W.shape[0] + 2, F64))


def cheap_global_rows(model: Any, graph: Graph, c: Tensor, norm: str) -> tuple[Tensor | None, dict]:
    """Certified global upper bounds ``(B, K)`` of ``||J^T c_k||_q`` (q dual of ``norm``), or ``None`` + reason.

    See the module docstring for the bounds; all are valid for every input, hence on every box.
    """
    data = _global_data(model, graph)
    if "error" in data:
        return None, {"global": f"unavailable: {data['error']}"}
    b, k = c.shape[0], c.shape[1]
    cf = c.detach().to(F64).reshape(b * k, -1).cpu()
    Ws = data["weights"]
    # |c^T W_L| <= |fl(c^T W_L)| + gamma |c| |W_L|, then the absolute-value product down to the input
    v = (cf @ Ws[-1]).abs() + gamma(Ws[-1].shape[0] + 2, F64) * (cf.abs() @ Ws[-1].abs())
    for W in reversed(Ws[:-1]):
        v = _matvec_up(v, W)
    v = v * data["kappa"] * (1 + 4 * gamma(1, F64))
    n = v.shape[1]
    grow = 1 + gamma(n + 4, F64)
    q = {"2": "2", "1": "inf", "inf": "1"}[norm]
    if q == "2":
        cand = {"abs-product": ((v * v).sum(1) * grow).sqrt() * grow}
    elif q == "inf":
        cand = {"abs-product": v.amax(1)}
    else:
        cand = {"abs-product": v.sum(1) * grow}
    glob = data["global"]
    if q in ("2", "inf") and "2" in glob:  # ||J^T c||_inf <= ||J^T c||_2 <= ||c||_2 ||J||_2
        cn = ((cf * cf).sum(1) * (1 + gamma(cf.shape[1] + 4, F64))).sqrt() * grow
        cand[glob["2"][1]] = cn * glob["2"][0] * grow
    if q == "1" and "inf" in glob:  # ||J^T c||_1 <= ||J||_{inf -> inf} ||c||_1
        cand[glob["inf"][1] + "-inf"] = cf.abs().sum(1) * (1 + gamma(cf.shape[1] + 4, F64)) * glob["inf"][0] * grow
    names = list(cand)
    stack = torch.stack([cand[m] for m in names], 1)
    best, idx = stack.min(1)
    chosen = [names[i] for i in idx.tolist()]
    info = {"global_methods": {m: float(cand[m].max()) for m in names}, "global_chosen": chosen}
    return best.reshape(b, k), info
