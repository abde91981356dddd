"""Public API for local Lipschitz bounds: :func:`local_lipschitz` and :func:`jacobian_bounds`.

The quantity bounded, for an input box ``X`` (``B_inf(x0, eps)`` or ``[x_lower, x_upper]``), input norm ``p`` and
output direction ``c``:

    L(f, X, c) = sup_{x in X} sup_{J in Clarke(f)(x)} || J^T c ||_q,     q = dual of p (p=inf -> q=1, 2 -> 2, 1 -> inf)

i.e. the smallest constant with ``|c^T f(x) - c^T f(y)| <= L ||x - y||_p`` for all ``x, y`` in the (convex) box.

* ``upper`` is CERTIFIED: ``L <= upper`` (up to the documented outward rounding margin).
* ``lower`` is ATTAINED: a gradient norm computed at a point of the box, so ``lower <= L``.

Pipeline: trace -> forward bounds (IBP + CROWN, optional alpha-CROWN) -> backward (Jacobian) graph -> its bounds by
the same engine -> dual-norm node -> upper bound; lower bound by sampling and gradient ascent (:mod:`lipbound.lower`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.engine.crown import backsubstitute
from lipbound.engine.forward import bound_nodes, optimized_backsubstitute, outward
from lipbound.engine.jacobian import GatedProduct, build_jacobian_graph
from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError
from lipbound.graph.ir import Graph
from lipbound.graph.trace import trace
from lipbound.lower import lower_bound

METHODS = ("crown", "interval")
NORMS = {"inf": "inf", float("inf"): "inf", 2: "2", "2": "2", "l2": "2", 1: "1", "1": "1", "l1": "1", "linf": "inf"}


@dataclass
class LocalResult:
    """Result of :func:`local_lipschitz`. Tensors have shape ``(B,)`` or ``(B, K)`` (see ``squeezed``)."""

    upper: Tensor
    lower: Tensor
    method: str
    norm: str
    seconds: float
    optimize: bool
    upper_max: Tensor  # max over output rows (B,): for c=None on a vector output, the l_p -> l_inf operator norm
    lower_max: Tensor
    argmax: Tensor | None = None  # point of the box where ``lower`` was found, (B, K, *input_shape)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> Tensor:
        """``upper / lower`` (inf where lower is 0)."""
        return self.upper / self.lower.clamp(min=torch.finfo(self.lower.dtype).tiny)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "norm": self.norm,
            "optimize": self.optimize,
            "seconds": self.seconds,
            "upper": self.upper.tolist(),
            "lower": self.lower.tolist(),
            "upper_max": self.upper_max.tolist(),
            "lower_max": self.lower_max.tolist(),
            "details": self.details,
        }


def _norm(norm: Any) -> str:
    key = norm.lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise InvalidInputError(f"norm must be 'inf', 2 or 1, got {norm!r}")
    return NORMS[key]


def _model_dtype(model: nn.Module | Graph) -> torch.dtype:
    """The floating dtype of the model's parameters (float64 for graphs and parameter-free modules)."""
    if isinstance(model, nn.Module):
        p = next((p for p in model.parameters() if p.is_floating_point()), None)
        if p is not None:
            return p.dtype
    return torch.float64


def _as_graph(model: nn.Module | Graph, input_shape: tuple[int, ...], dtype: torch.dtype, device) -> Graph:
    if isinstance(model, Graph):
        if model.input_shape != tuple(input_shape):
            raise ShapeMismatchError(
                f"x0 has per-sample shape {tuple(input_shape)}, the model expects {model.input_shape}"
            )
        graph = model
    elif isinstance(model, nn.Module):
        graph = trace(model, tuple(input_shape))
    else:
        raise InvalidModelError(f"model must be an nn.Module or a lipbound Graph, got {type(model).__name__}")
    graph.check_finite()
    return graph.to(dtype, device)


def _box(x0, eps, x_lower, x_upper, dtype) -> tuple[Tensor, Tensor]:
    if x_lower is not None or x_upper is not None:
        if x_lower is None or x_upper is None:
            raise InvalidInputError("pass both x_lower and x_upper")
        xl, xu = torch.as_tensor(x_lower).to(dtype), torch.as_tensor(x_upper).to(dtype)
        if xl.shape != xu.shape:
            raise ShapeMismatchError(f"x_lower has shape {tuple(xl.shape)} but x_upper has {tuple(xu.shape)}")
        if x0 is not None and torch.as_tensor(x0).shape != xl.shape:
            raise ShapeMismatchError("x0 and x_lower/x_upper have different shapes")
    else:
        if x0 is None or eps is None:
            raise InvalidInputError("pass x0 and eps, or x_lower and x_upper")
        x0 = torch.as_tensor(x0).to(dtype)
        if x0.dim() < 1:
            raise ShapeMismatchError("x0 needs a batch dimension: shape (B, *input_shape)")
        e = torch.as_tensor(eps, dtype=dtype)
        if not torch.isfinite(e).all():
            raise InvalidInputError("eps must be finite")
        if (e < 0).any():
            raise InvalidInputError(f"eps must be >= 0, got {eps if e.numel() == 1 else e.min().item()}")
        if e.dim() == 1 and e.numel() == x0.shape[0] and x0.dim() > 1:
            e = e.reshape(-1, *([1] * (x0.dim() - 1)))
        try:
            e = torch.broadcast_to(e, x0.shape)
        except RuntimeError:
            raise ShapeMismatchError(
                f"eps of shape {tuple(e.shape)} does not fit x0 of shape {tuple(x0.shape)}: pass a float, one eps "
                "per input (B,), or a tensor of x0's shape"
            ) from None
        xl, xu = x0 - e, x0 + e
    if not (torch.isfinite(xl).all() and torch.isfinite(xu).all()):
        raise InvalidInputError("the input box contains NaN or inf")
    if (xl > xu).any():
        raise InvalidInputError("x_lower must be <= x_upper everywhere")
    if xl.dim() < 1 or xl.shape[0] == 0:
        raise ShapeMismatchError("inputs need a non-empty batch dimension")
    return xl, xu


def _directions(c, out_shape: tuple[int, ...], batch: int, dtype, device) -> tuple[Tensor, bool]:
    """Output directions as ``(B, K, *out_shape)`` and whether the K dim is squeezed in results."""
    m = 1
    for s in out_shape:
        m *= s
    if c is None:
        if m == 1:
            return torch.ones(batch, 1, *out_shape, dtype=dtype, device=device), True
        eye = torch.eye(m, dtype=dtype, device=device).reshape(m, *out_shape)
        return eye.unsqueeze(0).expand(batch, m, *out_shape), False
    c = torch.as_tensor(c).to(dtype=dtype, device=device)
    if not torch.isfinite(c).all():
        raise InvalidInputError("output direction c contains NaN or inf")
    squeeze = c.dim() == 1
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if c.dim() == 2:
        if c.shape[1] != m:
            raise ShapeMismatchError(f"output direction c has {c.shape[1]} entries, the model has {m} outputs")
        c = c.unsqueeze(0).expand(batch, *c.shape)
    elif c.dim() == 3:
        if c.shape[0] != batch or c.shape[2] != m:
            raise ShapeMismatchError(
                f"per-input directions c must have shape (B={batch}, K, {m}), got {tuple(c.shape)}"
            )
    else:
        raise ShapeMismatchError(f"c must be a vector ({m},), rows (K, {m}) or (B, K, {m}); got {tuple(c.shape)}")
    return c.reshape(batch, c.shape[1], *out_shape), squeeze


def _norm_upper(back: Graph, g_x, bounds, box, norm: str, method: str, optimize: bool, steps: int) -> Tensor:
    """Upper bound of ``||g_x||_q`` (q dual of ``norm``) for every row of the (B*K) batch.

    Interval form: ``sum_j max(|l_j|, |u_j|)`` (q = 1), ``sqrt(sum_j max(l_j^2, u_j^2))`` (q = 2),
    ``max_j max(|l_j|, |u_j|)`` (q = inf). With ``method="crown"`` the norm node is also relaxed linearly and
    back-substituted: ``|g| <= chord on [l, u]`` (q = 1) or ``g^2 <= (l + u) g - l u`` (q = 2); the smaller
    of the two (both sound) is returned.
    """
    l, u = bounds[id(g_x)]
    flat_l, flat_u = l.reshape(l.shape[0], -1), u.reshape(u.shape[0], -1)
    mag = torch.maximum(flat_l.abs(), flat_u.abs())
    if norm == "1":
        return mag.amax(1)
    interval_value = mag.sum(1) if norm == "inf" else mag.pow(2).sum(1).sqrt()
    if method == "interval":
        return interval_value
    if norm == "inf":
        cross = (l < 0) & (u > 0)
        width = torch.where(cross, u - l, torch.ones_like(l))
        slope = torch.where(cross, (u + l) / width, torch.where(l >= 0, torch.ones_like(l), -torch.ones_like(l)))
        icpt = torch.where(cross, -2 * u * l / width, torch.zeros_like(l))
    else:
        slope, icpt = l + u, -l * u
    lam = slope.unsqueeze(1)
    if optimize:
        gates = {id(n) for n in back.nodes if isinstance(n.op, GatedProduct)}
        _, up = optimized_backsubstitute(back, g_x, lam, bounds, box, steps=steps, only=gates)
    else:
        _, up = backsubstitute(back, g_x, lam, bounds, box)
    value = up[:, 0] + icpt.reshape(icpt.shape[0], -1).sum(1)
    if norm == "2":
        value = value.clamp(min=0).sqrt()
    return torch.minimum(value, interval_value)


@dataclass
class _Bounds:
    forward: dict  # forward pre-activation bounds, batch B
    graph: Graph  # combined forward + backward graph, batch B*K
    g_x: Any  # its output node: the input gradient
    backward: dict  # bounds of the combined graph's relaxed inputs and of g_x, batch B*K
    box: tuple[Tensor, Tensor]  # the input box repeated K times


def _propagate(
    graph: Graph,
    xl: Tensor,
    xu: Tensor,
    c: Tensor,
    method: str,
    optimize: bool,
    steps: int,
    phases: dict[int, Tensor] | None = None,
    linear: dict | None = None,
) -> _Bounds:
    """Forward bounds, then the Jacobian graph for the directions ``c`` (B, K, *out) and its bounds.

    ``phases`` restricts the box to Branch-and-Bound domains (see :func:`lipbound.engine.forward.apply_phases`).
    """
    fwd = bound_nodes(graph, xl, xu, "crown", optimize=optimize, steps=steps, phases=phases, linear=linear)
    b, k = c.shape[0], c.shape[1]
    box = (xl.repeat_interleave(k, 0), xu.repeat_interleave(k, 0))
    known = {key: (l.repeat_interleave(k, 0), u.repeat_interleave(k, 0)) for key, (l, u) in fwd.items()}
    back, g_x = build_jacobian_graph(graph, c.reshape(b * k, *c.shape[2:]), relaxation=method, coupled=optimize)
    bb = bound_nodes(back, *box, "crown", extra=[g_x], known=known, optimize=optimize, steps=steps)
    return _Bounds(fwd, back, g_x, bb, box)


def local_lipschitz(
    model: nn.Module | Graph,
    x0: Tensor | None = None,
    eps: float | Tensor | None = None,
    norm: str | int = "inf",
    c: Tensor | None = None,
    method: str = "crown",
    optimize: bool = False,
    *,
    x_lower: Tensor | None = None,
    x_upper: Tensor | None = None,
    dtype: torch.dtype | None = torch.float64,
    device: str | torch.device | None = None,
    lower: bool = True,
    lower_samples: int = 64,
    lower_steps: int = 20,
    optimize_steps: int = 30,
    seed: int = 0,
) -> LocalResult:
    """Certified upper and attained lower bounds on the local Lipschitz constant of ``model`` on a box.

    Args:
        model: an ``nn.Module`` of supported ops (traced with torch.fx) or a lipbound ``Graph``.
        x0: centres, shape ``(B, *input_shape)``; with ``eps`` (float, per-input ``(B,)`` or x0-shaped tensor) the
            box is ``[x0 - eps, x0 + eps]``. Or pass ``x_lower=``, ``x_upper=`` for any box.
        norm: input norm ``"inf"`` (default), ``2`` or ``1``; the gradient is measured in the dual norm.
        c: output direction(s): ``None`` (scalar output: the gradient; vector output: every row, see
            ``upper_max``), a vector ``(m,)``, rows ``(K, m)`` or per-input rows ``(B, K, m)``.
        method: ``"crown"`` (linear relaxations of the Jacobian products, default) or ``"interval"`` (unstable
            products replaced by intervals: the RecurJac/Fast-Lip-style baseline).
        optimize: alpha-optimise the forward relaxations (tighter, slower).
        dtype: computation dtype (default float64: bounds robust to rounding); ``None`` keeps the model's.
        lower: also compute the attained lower bound (sampling + gradient ascent).
    """
    t0 = time.perf_counter()
    nrm = _norm(norm)
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
    dt = dtype or _model_dtype(model)
    ref = torch.as_tensor(x0) if x0 is not None else torch.as_tensor(x_lower)
    dev = torch.device(device) if device is not None else ref.device
    xl, xu = _box(x0, eps, x_lower, x_upper, dt)
    xl, xu = xl.to(dev), xu.to(dev)
    graph = _as_graph(model, tuple(xl.shape[1:]), dt, dev)
    cc, squeeze = _directions(c, graph.output.shape, xl.shape[0], dt, dev)
    b, k = cc.shape[0], cc.shape[1]
    with torch.no_grad():
        pb = _propagate(graph, xl, xu, cc, method, optimize, optimize_steps)
        upper = _norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, nrm, method, optimize, optimize_steps)
        upper = outward(upper, upper)[1].reshape(b, k)
    if lower:
        low, argmax = lower_bound(graph, xl, xu, cc, nrm, samples=lower_samples, steps=lower_steps, seed=seed)
    else:
        low, argmax = torch.zeros_like(upper), None
    slack = 1e-6 if dt == torch.float64 else 1e-3
    if (low > upper * (1 + slack) + slack).any():  # a failed self-check is a bug, never a silent wrong answer
        raise RuntimeError(
            f"internal soundness check failed: attained gradient norm {low.max().item():.6g} exceeds the upper "
            f"bound {upper.max().item():.6g}; please report this model"
        )
    seconds = time.perf_counter() - t0
    unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in pb.forward.values())
    details = {"unstable_neurons": unstable, "directions": k, "dtype": str(dt).replace("torch.", "")}
    res = LocalResult(
        upper=upper[:, 0] if squeeze else upper,
        lower=low[:, 0] if squeeze else low,
        method=method + ("+alpha" if optimize else ""),
        norm=nrm,
        seconds=seconds,
        optimize=optimize,
        upper_max=upper.amax(1),
        lower_max=low.amax(1),
        argmax=argmax,
        details=details,
    )
    return res


def jacobian_bounds(
    model: nn.Module | Graph,
    x0: Tensor | None = None,
    eps: float | Tensor | None = None,
    c: Tensor | None = None,
    method: str = "crown",
    optimize: bool = False,
    *,
    x_lower: Tensor | None = None,
    x_upper: Tensor | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Elementwise bounds ``lo <= d(c_k^T f)/dx (x) <= hi`` for every ``x`` in the box and every Clarke Jacobian.

    Returns ``(lo, hi)`` of shape ``(B, K, *input_shape)`` (``K = 1`` for a vector ``c`` or a scalar output;
    ``K = m`` rows of the Jacobian for ``c=None`` on an ``m``-output model). Monotonicity of ``c^T f`` in feature
    ``j`` on the box is certified where ``lo[..., j] >= 0``.
    """
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
    dt = dtype or torch.float64
    xl, xu = _box(x0, eps, x_lower, x_upper, dt)
    graph = _as_graph(model, tuple(xl.shape[1:]), dt, xl.device)
    cc, _ = _directions(c, graph.output.shape, xl.shape[0], dt, xl.device)
    b, k = cc.shape[0], cc.shape[1]
    with torch.no_grad():
        pb = _propagate(graph, xl, xu, cc, method, optimize, 30)
    lo, hi = pb.backward[id(pb.g_x)]
    return lo.reshape(b, k, *xl.shape[1:]), hi.reshape(b, k, *xl.shape[1:])


def local_lipschitz_bab(
    model: nn.Module | Graph,
    x0: Tensor | None = None,
    eps: float | Tensor | None = None,
    norm: str | int = "inf",
    c: Tensor | None = None,
    *,
    time_budget: float = 10.0,
    x_lower: Tensor | None = None,
    x_upper: Tensor | None = None,
    dtype: torch.dtype | None = torch.float64,
    batch_domains: int = 64,
    rtol: float = 1e-4,
    optimize: bool = False,
    seed: int = 0,
) -> LocalResult:
    """:func:`local_lipschitz` tightened by Branch and Bound on ReLU phases (see :mod:`lipbound.bab`).

    Same arguments and result as :func:`local_lipschitz`; ``time_budget`` seconds are spent on EACH (input,
    direction) problem. The upper bound is certified at any time (anytime algorithm); ``details["bab"]`` says how
    many domains were explored and whether the budget ran out before the gap closed to ``rtol``.
    """
    from lipbound.bab import branch_and_bound

    t0 = time.perf_counter()
    nrm = _norm(norm)
    dt = dtype or torch.float64
    xl, xu = _box(x0, eps, x_lower, x_upper, dt)
    graph = _as_graph(model, tuple(xl.shape[1:]), dt, xl.device)
    cc, squeeze = _directions(c, graph.output.shape, xl.shape[0], dt, xl.device)
    b, k = cc.shape[0], cc.shape[1]
    low, argmax = lower_bound(graph, xl, xu, cc, nrm, seed=seed)
    upper = torch.empty(b, k, dtype=dt, device=xl.device)
    stats = []
    with torch.no_grad():
        for i in range(b):
            for j in range(k):
                up, st = branch_and_bound(
                    graph,
                    xl[i : i + 1],
                    xu[i : i + 1],
                    cc[i : i + 1, j : j + 1],
                    nrm,
                    float(low[i, j]),
                    time_budget=time_budget,
                    batch=batch_domains,
                    rtol=rtol,
                    optimize=optimize,
                )
                upper[i, j] = up
                stats.append(st.__dict__)
    upper = outward(upper, upper)[1]
    slack = 1e-6 if dt == torch.float64 else 1e-3
    if (low > upper * (1 + slack) + slack).any():
        raise RuntimeError("internal soundness check failed in branch and bound; please report this model")
    return LocalResult(
        upper=upper[:, 0] if squeeze else upper,
        lower=low[:, 0] if squeeze else low,
        method="crown+bab",
        norm=nrm,
        seconds=time.perf_counter() - t0,
        optimize=optimize,
        upper_max=upper.amax(1),
        lower_max=low.amax(1),
        argmax=argmax,
        details={"bab": stats, "directions": k, "dtype": str(dt).replace("torch.", "")},
    )
