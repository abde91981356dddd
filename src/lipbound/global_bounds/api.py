"""``global_lipschitz``: one entry point for every certified global Lipschitz upper bound.

Methods and guarantees (every reported ``upper`` is a certified upper bound of the global Lipschitz constant
``sup ||f(x) - f(y)|| / ||x - y||`` in the chosen norm, for inputs of any value):

* ``product``       product of certified layer operator norms (any 1-Lipschitz activations).
* ``liplt``         LipLT recursion (ReLU-type nets).
* ``eclipse-fast``  ECLipsE-Fast closed-form recursion (ReLU-type nets, l2).
* ``lipsdp-layer``  LipSDP with one multiplier per layer (slope-restricted activations, l2).
* ``lipsdp-neuron`` LipSDP with one multiplier per neuron (slope-restricted activations, l2).
* ``lipsdp-nsr``    LipSDP-NSR chain (GroupSort/MaxMin/Householder and 1-Lipschitz entrywise activations, plain
                    and residual ``x + s(W x)`` blocks, l2 and l_inf).
* ``auto``          the tightest of the methods predicted to fit the size/time budget (``details["chosen"]``).

LipSDP-Network (neuron couplings) is never offered: it is not a valid bound for repeated ReLU.
SDP methods certify the solver's multipliers in float64 (see :mod:`lipbound.global_bounds.certify`) and report
that value; the raw solver value is kept in ``details`` for reference only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lipbound.errors import InvalidInputError, SolverError, UnsupportedOperatorError
from lipbound.global_bounds.network import LayeredNetwork, extract

METHODS = ("product", "liplt", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr")
SDP_METHODS = ("lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr")
#: LMI rows above which an SDP method is predicted to exceed the default budget (2-core CPU, SCS)
MAX_LMI_ROWS = {"lipsdp-neuron": 700, "lipsdp-layer": 900, "lipsdp-nsr": 260}
#: LipSDP-Neuron/Layer on large or deep nets run the first-order chain method (cost ~ sum of width^3 per step);
#: above this cost "auto" skips them (2 x 256 hidden: cost 5.0e7, ~20 s; 2 x 512: 4.0e8, budget-limited)
MAX_CHAIN_COST = 1.2e8
#: LipSDP-NSR on plain l2 nets runs the solver-free chain method (nsr_fast) beyond small sizes: anytime (30 s default
#: budget), 2 x 256 MaxMin (cost 5.0e7) ~13 s, 2 x 512 (4.0e8) ~30 s; "auto" skips it above this cost. Residual
#: blocks and l_inf still use SCS (MAX_LMI_ROWS).
MAX_NSR_CHAIN_COST = 1.2e9


@dataclass
class GlobalResult:
    """A certified global Lipschitz upper bound."""

    upper: float
    method: str
    seconds: float
    norm: str = "2"
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "upper": self.upper,
            "method": self.method,
            "seconds": self.seconds,
            "norm": self.norm,
            "details": _jsonable(self.details),
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def parse_norm(norm: Any) -> str:
    """``2``/``"2"``/``"l2"`` -> ``"2"``; ``"inf"``/``math.inf``/``"linf"`` -> ``"inf"``."""
    s = str(norm).strip().lower()
    if s in ("2", "2.0", "l2"):
        return "2"
    if s in ("inf", "linf", "l_inf", "infinity"):
        return "inf"
    raise InvalidInputError(f"norm must be 2 or 'inf', got {norm!r}")


def applicable(net: LayeredNetwork, norm: str) -> dict[str, str | None]:
    """For each method, ``None`` if it applies to ``net`` in ``norm``, else the reason it does not."""
    slope = all(a.slope is not None for a in net.activations)
    relu_like = all(a.kind in ("relu", "leaky_relu", "identity") for a in net.activations)
    plain = not any(net.residual)
    one_lip = all(a.slope is None or max(abs(a.slope[0]), abs(a.slope[1])) <= 1 for a in net.activations)
    out: dict[str, str | None] = {}
    out["product"] = None if one_lip or slope else "needs 1-Lipschitz or slope-restricted activations"
    out["liplt"] = None if relu_like and plain else "ReLU-type plain networks only"
    out["eclipse-fast"] = None if relu_like and plain and norm == "2" else "ReLU-type plain networks, l2 only"
    sdp = None if slope and plain and norm == "2" else "slope-restricted activations, plain network, l2 only"
    out["lipsdp-layer"] = out["lipsdp-neuron"] = sdp
    out["lipsdp-nsr"] = None
    return out


def lmi_rows(net: LayeredNetwork, method: str, norm: str = "2") -> int:
    """Size of the largest/whole LMI the method solves (used to predict whether it fits the budget).

    LipSDP-NSR in l_inf keeps the input block ``diag(tau) - W_0^T T_1 W_0`` (``n_0`` rows, no SVD reduction)."""
    dims = net.dims
    if method in ("lipsdp-layer", "lipsdp-neuron"):
        return min(dims[0], dims[1]) + sum(dims[1:-1])
    if method == "lipsdp-nsr":
        if not net.depth:
            return 0
        rows = max(2 * d if r else d for d, r in zip(dims[1:-1], net.residual, strict=True))
        return max(rows, dims[0]) if norm == "inf" else rows
    return 0


def chain_cost(net: LayeredNetwork) -> float:
    """Cost unit of the first-order LipSDP chain method: sum of cubed block sizes of the (SVD-reduced) LMI."""
    dims = net.dims
    return float(min(dims[0], dims[1]) ** 3 + sum(d**3 for d in dims[1:-1])) if net.depth else 0.0


def _too_large(net: LayeredNetwork, m: str, norm: str = "2") -> str | None:
    if m == "lipsdp-nsr" and norm == "2" and not any(net.residual):
        if chain_cost(net) > MAX_NSR_CHAIN_COST:
            return f"chain cost {chain_cost(net):.2g} exceeds the budget ({MAX_NSR_CHAIN_COST:.2g})"
        return None
    if m in ("lipsdp-layer", "lipsdp-neuron"):
        if chain_cost(net) > MAX_CHAIN_COST:
            return f"chain cost {chain_cost(net):.2g} exceeds the budget ({MAX_CHAIN_COST:.2g})"
        return None
    if m in SDP_METHODS and lmi_rows(net, m, norm) > MAX_LMI_ROWS[m]:
        return f"LMI of {lmi_rows(net, m, norm)} rows exceeds the budget ({MAX_LMI_ROWS[m]})"
    return None


#: methods whose numbers come from the dense segment matrices W_hat (their rounding is added afterwards);
#: product and liplt bound the exact segments directly (structured norms plus their own rounding bounds)
DENSE_METHODS = ("eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr")


def _run(method: str, net: LayeredNetwork, norm: str, solver: str | None, time_budget: float | None) -> dict:
    """Run ``method``; for the dense methods add :func:`~lipbound.global_bounds.baselines.dense_perturbation`
    so that the value bounds the network with the exact (real) segment maps, not only the float64 matrices."""
    out = _run_method(method, net, norm, solver, time_budget)
    if method in DENSE_METHODS and math.isfinite(out.get("upper", math.inf)):
        from lipbound.global_bounds.baselines import dense_perturbation

        eta = dense_perturbation(net, norm)
        if eta:
            out["upper"] = float(out["upper"] + eta) * (1 + 2**-50)
            out["rounding_margin"] = eta
    return out


def _run_method(method: str, net: LayeredNetwork, norm: str, solver: str | None, time_budget: float | None) -> dict:
    if method in ("product", "liplt", "eclipse-fast"):
        from lipbound.global_bounds import baselines

        fn = {
            "product": lambda: baselines.product_bound(net, norm, time_budget=time_budget),
            "liplt": lambda: baselines.liplt_bound(net, norm, time_budget=time_budget),
            "eclipse-fast": lambda: baselines.eclipse_fast_bound(net, time_budget=time_budget),
        }[method]
        res = fn()
        det = dict(getattr(res, "details", {}) or {})
        return {"upper": float(res.upper), "status": det.pop("status", "closed form"), **det}
    if method in ("lipsdp-layer", "lipsdp-neuron"):
        from lipbound.global_bounds.lipsdp import lipsdp_bound

        return lipsdp_bound(net, method.split("-")[1], solver, time_budget)
    from lipbound.global_bounds.nsr import nsr_bound

    # "auto"/"first-order": plain l2 nets use the solver-free chain method (SCS+polish on small ones), residual
    # and l_inf ones SCS; details["solver"] says which ran
    return nsr_bound(net, norm, solver, time_budget)


# what a solver path may raise on a well-formed model: turned into a failed attempt and a fallback, never an escape
SOLVER_FAULTS = (ArithmeticError, SolverError, np.linalg.LinAlgError, torch.linalg.LinAlgError)

FALLBACK = {"lipsdp-neuron": "lipsdp-layer", "lipsdp-layer": "product", "lipsdp-nsr": "product"}


def global_lipschitz(
    model: Any,
    norm: Any = 2,
    method: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    solver: str | None = None,
    time_budget: float | None = None,
) -> GlobalResult:
    """Certified global Lipschitz upper bound of ``model`` (nn.Module, lipbound Graph or LayeredNetwork).

    ``norm``: 2 or "inf" (same norm on input and output). ``method``: one of :data:`METHODS` or "auto".
    ``solver``: for "lipsdp-neuron"/"lipsdp-layer" None/"auto" (default: SCS polished by the first-order method on
    small LMIs, the solver-free first-order chain method on large or deep nets; ``details["solver"]`` says which),
    "first-order", "scs", "clarabel" or "mosek"; the same for "lipsdp-nsr" (default on plain l2 nets: SCS polished
    by the first-order chain method up to width 64 / depth 4, the first-order method beyond; residual or l_inf: SCS).
    ``time_budget``: seconds for the call (the first-order method stops there with a certified bound; the closed
    forms raise past it; "auto" shares it among its candidates in order and keeps the best certified value).
    If an SDP solver fails, the next method (neuron -> layer -> product, nsr -> product) is used and
    ``details["fallbacks"]`` says so.
    """
    t0 = time.perf_counter()
    norm = parse_norm(norm)
    method = str(method).lower()
    if method == "lipsdp-network":
        raise InvalidInputError(
            "LipSDP-Network is not offered: its neuron-coupling multipliers are not valid for repeated ReLU; "
            "use 'lipsdp-neuron'"
        )
    if method != "auto" and method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; choose one of {(*METHODS, 'auto')}")
    net = extract(model, input_shape)
    ok = applicable(net, norm)
    if method == "auto":
        return _auto(net, norm, ok, solver, time_budget, t0)
    if ok[method] is not None:
        if method in ("lipsdp-layer", "lipsdp-neuron"):
            from lipbound.global_bounds.lipsdp import check_lipsdp

            check_lipsdp(net, norm)  # raises the specific error
        raise UnsupportedOperatorError(method, "model", hint=ok[method])
    details: dict = {"fallbacks": []}
    current = method
    refusal = _dense_refusal(net, method, norm)
    if refusal is not None:  # a method that would need a dense matrix above the limit: routed, never allocated
        nxt = ROUTE[method]
        if nxt == "product" and ok["liplt"] is None:
            nxt = "liplt"  # tighter, and structured too
        details["fallbacks"].append(f"{refusal}; using {nxt}")
        current = nxt
    while True:
        try:
            out = _run(current, net, norm, solver, time_budget)
        except SOLVER_FAULTS as e:
            out = {"upper": math.inf, "status": f"error: {e}"}
        if math.isfinite(out.get("upper", math.inf)):
            break
        nxt = FALLBACK.get(current)
        if nxt is None:
            raise SolverError(f"{current} failed ({out.get('status')}) and no fallback is left")
        details["fallbacks"].append(f"{current} failed ({out.get('status')}); using {nxt}")
        current = nxt
    details.update({k: v for k, v in out.items() if k != "upper" and not k.startswith("_")})
    details["requested"] = method
    return GlobalResult(out["upper"], current, time.perf_counter() - t0, norm, details)


#: where a method goes when the model is too large for its dense matrices
ROUTE = {"eclipse-fast": "liplt", "lipsdp-neuron": "product", "lipsdp-layer": "product", "lipsdp-nsr": "product"}


#: widest hidden layer an SDP method is run on (its chain / LMI blocks are dense width x width matrices)
MAX_SDP_WIDTH = 4096
#: LMI rows above which the SCS path of LipSDP-NSR (residual blocks, l_inf) is refused rather than started
MAX_SCS_ROWS = 512


def _dense_refusal(net: LayeredNetwork, method: str, norm: str = "2") -> str | None:
    """Why ``method`` cannot run on ``net`` without a dense matrix above the size limit (``None`` if it can)."""
    from lipbound.global_bounds import baselines, segments

    if method == "eclipse-fast":
        return baselines.eclipse_width_error(net)
    if method in SDP_METHODS:
        width = max(net.dims[1:-1], default=0)
        if width > MAX_SDP_WIDTH:
            k = net.dims[1:-1].index(width)
            return (
                f"{method} needs dense {width} x {width} matrices for the hidden layer after {net.origins[k]!r} "
                f"({width * width * 8 / 2**30:.1f} GiB each, limit width {MAX_SDP_WIDTH})"
            )
        scs = method == "lipsdp-nsr" and (any(net.residual) or norm == "inf")
        rows = lmi_rows(net, method, norm)
        if scs and rows > MAX_SCS_ROWS:
            return (
                f"{method} ({'residual' if any(net.residual) else 'l_inf'}) solves an LMI of {rows} rows with SCS "
                f"(dense {rows} x {rows}: {rows * rows * 8 / 2**30:.2f} GiB; limit {MAX_SCS_ROWS} rows)"
            )
        limit = segments.MAX_DENSE
        for k, s in enumerate(net.segments):
            if s.dense_size() > limit:
                return (
                    f"{method} needs the dense {s.n_out} x {s.n_in} matrix of layer {k} at {net.origins[k]!r} "
                    f"({s.dense_size() * 8 / 2**30:.1f} GiB, limit {limit} entries)"
                )
    return None


def _auto(net, norm, ok, solver, time_budget, t0) -> GlobalResult:
    order = ["product", "liplt", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr"]
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for m in order:
        if ok[m] is not None:
            continue
        why = _dense_refusal(net, m, norm) or _too_large(net, m, norm)
        if why:
            skipped[m] = why
            continue
        neuron_fits = (
            ok["lipsdp-neuron"] is None
            and _too_large(net, "lipsdp-neuron") is None
            and _dense_refusal(net, "lipsdp-neuron") is None
        )
        if m == "lipsdp-layer" and neuron_fits:
            continue  # neuron dominates layer
        if m == "lipsdp-nsr" and neuron_fits:
            continue  # on slope-restricted nets LipSDP-Neuron uses more information than the NSR chain
        left = None if time_budget is None else t0 + float(time_budget) - time.perf_counter()
        if left is not None and left <= 0 and any(math.isfinite(r.get("upper", math.inf)) for r in results.values()):
            skipped[m] = f"time_budget={time_budget} s used by the earlier methods"
            continue
        try:
            # product is the floor (always run whole, structured); the others get what is left of the budget
            out = _run(m, net, norm, solver, None if m == "product" else left if left is None or left > 0 else 0.0)
        except SOLVER_FAULTS as e:
            out = {"upper": math.inf, "status": f"error: {e}"}
        results[m] = out
    finite = {m: r for m, r in results.items() if math.isfinite(r.get("upper", math.inf))}
    if not finite:
        raise SolverError(f"no method produced a bound (skipped: {skipped})")
    best = min(finite, key=lambda m: finite[m]["upper"])
    details = {k: v for k, v in finite[best].items() if k != "upper" and not k.startswith("_")}
    details.update(
        {
            "chosen": best,
            "candidates": {m: r.get("upper") for m, r in results.items()},
            "skipped": skipped,
            "fallbacks": [f"{m} failed ({r.get('status')})" for m, r in results.items() if m not in finite],
        }
    )
    return GlobalResult(finite[best]["upper"], best, time.perf_counter() - t0, norm, details)
