"""Public API for local Lipschitz bounds: :func:`local_lipschitz` and :func:`jacobian_bounds`.

The quantity bounded, for an input box ``X`` (``B_inf(x0, eps)`` or ``[x_lower, x_upper]``), input norm ``p`` and
output direction ``c``:

    L(f, X, c) = sup_{x in X} sup_{J in Clarke(f)(x)} || J^T c ||_q,     q = dual of p (p=inf -> q=1, 2 -> 2, 1 -> inf)

i.e. the smallest constant with ``|c^T f(x) - c^T f(y)| <= L ||x - y||_p`` for all ``x, y`` in the (convex) box.

* ``upper`` is CERTIFIED: ``L <= upper`` (up to the documented outward rounding margin).
* ``lower`` is ATTAINED: the gradient norm at a point of the box where the network is differentiable (no ReLU-type
  pre-activation on its kink; returned as ``lower_point``), so ``lower <= L``.

Pipeline: trace -> forward bounds (IBP + CROWN, optional alpha-CROWN) -> backward (Jacobian) graph -> its bounds by
the same engine -> dual-norm node -> upper bound; lower bound by sampling and gradient ascent (:mod:`lipbound.lower`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.engine.forward import bound_nodes, outward
from lipbound.engine.memory import DEFAULT_MAX_MEMORY, parse_memory
from lipbound.engine.pipeline import norm_upper, propagate
from lipbound.engine.rounding import round_up
from lipbound.errors import InvalidInputError
from lipbound.graph.ir import Graph
from lipbound.lower import lower_bound
from lipbound.problem import Problem, check_method, make_problem, parse_norm


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
    #: which bound gave ``upper`` per input/row (same shape as ``upper``, nested lists): "local" (the requested
    #: method) or "global" (a cheap certified global bound was lower; ``details["global_chosen"]`` says which)
    source: list | None = None

    @property
    def lower_point(self) -> Tensor | None:
        """The witness of ``lower``: a point of the box, ``(B, K, *input_shape)``, where the network is
        differentiable and ``||grad c_k^T f||_*`` equals ``lower`` (check it with autograd)."""
        return self.argmax

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
            "source": self.source,
        }


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
    use_global: bool = True,
    sdp_solver: str | None = None,
    sdp_time_budget: float | None = None,
    max_memory: int | float | str | None = DEFAULT_MAX_MEMORY,
    progress: Callable[[str, int, int], None] | None = None,
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
            products replaced by intervals: the RecurJac/Fast-Lip-style baseline) or ``"lipsdp"`` (``norm=2``
            only: LipSDP-Neuron with per-neuron slope intervals from the forward bounds, one certified SDP per
            input and row, see :mod:`lipbound.local_sdp`; feed-forward Linear/Conv nets with ReLU, LeakyReLU,
            tanh or sigmoid).
        optimize: alpha-optimise the forward relaxations (tighter, slower).
        dtype: computation dtype. Every dtype is rigorous (rounding bounded, :mod:`lipbound.engine.rounding`);
            float64 (default) is also tight, float32 pays its rounding bound (1e-4 of the value on small nets, up
            to 8% on a 784-4x512-10 MLP: ``benchmarks/results/rigour.md``); ``None`` keeps the model's dtype.
        lower: also compute the attained lower bound (sampling + gradient ascent).
        use_global: report ``min(local bound, cheap certified global bound)`` per input and row (the global bound
            is computed once per model: :func:`lipbound.local_sdp.cheap_global_rows`); ``result.source`` says
            which one won. ``False``: the local bound alone.
        sdp_solver, sdp_time_budget: for ``method="lipsdp"``: "auto" (default; SCS polished by the first-order
            chain method on small LMIs, the first-order method alone on large ones), "first-order", "scs",
            "clarabel"; seconds per SDP.
        max_memory: cap on the coefficient memory of one back-substitution, bytes or a string (``"2GB"``,
            ``"512MB"``): specification rows are bounded in chunks under it (same bound; the cost of a row is
            measured on a probe chunk, :mod:`lipbound.engine.memory`). ``details["chunks"]`` counts the
            back-substitutions. Default 256 MiB (also faster on large conv nets than no cap: fewer huge
            short-lived tensors); ``None``: all rows of a node at once.
        progress: ``progress(stage, done, total)`` after every bounded node, ``stage`` in ``"forward"``
            (pre-activations), ``"jacobian"`` (Jacobian-graph nodes); for long conv-network calls.
    """
    t0 = time.perf_counter()
    nrm = parse_norm(norm)
    if method == "lipsdp":
        if nrm != "2":
            raise InvalidInputError(f"method='lipsdp' bounds the l2 local constant only (got norm={norm!r})")
    else:
        check_method(method)
    cap = parse_memory(max_memory)
    pr = make_problem(model, x0, eps, x_lower, x_upper, c, dtype, device)
    b, k = pr.c.shape[0], pr.c.shape[1]
    extra: dict[str, Any] = {}
    with torch.no_grad():
        if method == "lipsdp":
            from lipbound.local_sdp import local_lipsdp

            fwd = bound_nodes(pr.graph, pr.xl, pr.xu, "crown", optimize=optimize, steps=optimize_steps, max_memory=cap)
            sdp, infos = local_lipsdp(pr.graph, fwd, pr.c, sdp_solver, sdp_time_budget)
            upper = round_up(sdp.to(pr.xl.device), pr.dtype)
            extra["lipsdp"] = infos
            forward = fwd
        else:
            stats: dict[str, int] = {}
            pb = propagate(
                pr.graph, pr.xl, pr.xu, pr.c, method, optimize, optimize_steps, max_memory=cap, progress=progress,
                stats=stats,
            )  # fmt: skip
            extra["chunks"] = stats.get("chunks", 0)
            upper = norm_upper(pb.graph, pb.g_x, pb.backward, pb.box, nrm, method, optimize, optimize_steps)
            forward = pb.forward
        upper = upper.reshape(b, k)
        source = None
        if use_global:
            from lipbound.local_sdp import cheap_global_rows

            glob, ginfo = cheap_global_rows(model, pr.graph, pr.c, nrm)
            extra.update(ginfo)
            if glob is not None:
                glob = round_up(glob.to(pr.xl.device), pr.dtype)
                won = glob < upper
                extra["local_upper"] = upper.tolist()
                extra["global_upper"] = glob.tolist()
                upper = torch.where(won, glob, upper)
                source = [["global" if w else "local" for w in row] for row in won.tolist()]
                extra["source"] = [r[0] for r in source] if pr.squeeze else source
    if lower:
        low, argmax = lower_bound(
            pr.graph, pr.xl, pr.xu, pr.c, nrm, samples=lower_samples, steps=lower_steps, seed=seed
        )
    else:
        low, argmax = torch.zeros(b, k, dtype=pr.dtype, device=pr.xl.device), None
    unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in forward.values())
    method_name = method + ("+alpha" if optimize else "")
    res = _result(pr, upper, low, argmax, method_name, nrm, optimize, t0, {"unstable_neurons": unstable, **extra})
    if source is not None:
        res.source = [r[0] for r in source] if pr.squeeze else source
    return res


def _result(
    pr: Problem, upper: Tensor, low: Tensor, argmax, method: str, norm: str, optimize: bool, t0: float, details: dict
) -> LocalResult:
    """Round the upper bound outward, self-check ``lower <= upper`` and package the result."""
    upper = outward(upper, upper)[1]
    slack = 1e-6 if pr.dtype == torch.float64 else 1e-3
    if (low > upper * (1 + slack) + slack).any():  # a failed self-check is a bug, never a silent wrong answer
        raise RuntimeError(
            f"internal soundness check failed: attained gradient norm {low.max().item():.6g} exceeds the upper "
            f"bound {upper.max().item():.6g}; please report this model"
        )
    details = {**details, "directions": upper.shape[1], "dtype": str(pr.dtype).replace("torch.", "")}
    return LocalResult(
        upper=upper[:, 0] if pr.squeeze else upper,
        lower=low[:, 0] if pr.squeeze else low,
        method=method,
        norm=norm,
        seconds=time.perf_counter() - t0,
        optimize=optimize,
        upper_max=upper.amax(1),
        lower_max=low.amax(1),
        argmax=argmax,
        details=details,
    )


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
    max_memory: int | float | str | None = DEFAULT_MAX_MEMORY,
) -> tuple[Tensor, Tensor]:
    """Elementwise bounds ``lo <= d(c_k^T f)/dx (x) <= hi`` for every ``x`` in the box and every Clarke Jacobian.

    Returns ``(lo, hi)`` of shape ``(B, K, *input_shape)`` (``K = 1`` for a vector ``c`` or a scalar output;
    ``K = m`` rows of the Jacobian for ``c=None`` on an ``m``-output model). Monotonicity of ``c^T f`` in feature
    ``j`` on the box is certified where ``lo[..., j] >= 0``. ``max_memory``: as in :func:`local_lipschitz`.
    """
    check_method(method)
    cap = parse_memory(max_memory)
    pr = make_problem(model, x0, eps, x_lower, x_upper, c, dtype or torch.float64)
    b, k = pr.c.shape[0], pr.c.shape[1]
    with torch.no_grad():
        pb = propagate(pr.graph, pr.xl, pr.xu, pr.c, method, optimize, 30, max_memory=cap)
    lo, hi = pb.backward[id(pb.g_x)]
    return lo.reshape(b, k, *pr.xl.shape[1:]), hi.reshape(b, k, *pr.xl.shape[1:])


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
    input_split: str = "off",
    max_domains: int | None = None,
    seed: int = 0,
) -> LocalResult:
    """:func:`local_lipschitz` tightened by Branch and Bound on ReLU phases (see :mod:`lipbound.bab`).

    Same arguments and result as :func:`local_lipschitz`. ``time_budget``: wall-clock seconds of the WHOLE call
    (tracing, the lower-bound search and every (input, direction) problem; one queue shares the time, deciding rows
    first, see :mod:`lipbound.bab`); it returns within about one batch of the deadline. The upper bound is certified
    at any time (anytime algorithm); ``lower`` is attained at ``lower_point``. ``details["bab"]`` lists, per input
    and row (row-major), ``upper``, ``lower``, ``domains_open``, ``seconds`` (time used), the domains explored and
    whether the budget ran out before the gap closed to ``rtol``.
    ``input_split``: ``"off"`` (ReLU splits only), ``"on"`` (input-box splits only) or ``"mixed"``;
    ``max_domains`` stops each problem after that many domains (deterministic runs).
    """
    from lipbound.bab import local_bab

    t0 = time.perf_counter()
    nrm = parse_norm(norm)
    pr = make_problem(model, x0, eps, x_lower, x_upper, c, dtype or torch.float64)
    options = {"batch": batch_domains, "rtol": rtol, "optimize": optimize, "input_split": input_split}
    upper, low, argmax, stats = local_bab(
        pr.graph, pr.xl, pr.xu, pr.c, nrm, time_budget=time_budget, t0=t0, seed=seed, max_domains=max_domains, **options
    )
    return _result(pr, upper, low, argmax, "crown+bab", nrm, optimize, t0, {"bab": stats})
