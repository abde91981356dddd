"""Branch and Bound at equal wall time: the new shared-queue BaB against the frozen pre-rewrite BaB.

Both run the WHOLE call (tracing, lower-bound search, every output row) and are measured by wall clock. The old
implementation (``benchmarks/_bab_v1.py``) spends its ``time_budget`` per output row after the lower-bound search,
so for an equal whole-call budget ``T`` it is given ``(T - t_lower) / K`` per row (``t_lower`` measured once per
case, ``K`` rows); its measured wall time is reported as it is. The new one gets ``time_budget=T``. Cases: bundled
MLPs on one input (single margin direction, or all 10 rows for digits-mlp) and a seeded tiny ReLU net whose exact
constant (MILP, :func:`lipbound.exact_lipschitz`; its attained incumbent, within the MILP gap of the dual bound)
is known. ``gap ratio`` = (new upper - new lower) / (old upper -
old lower), with each side's own lower bound; < 1 means the new BaB is tighter.

Run: ``PYTHONPATH=src python benchmarks/run.py --only bab`` (about 8 minutes on 2 cores; ``--quick``: 2 s budgets).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

import lipbound
from _bab_v1 import local_lipschitz_bab_v1
from lipbound.graph.trace import trace
from lipbound.lower import lower_bound
from lipbound.models import bundled_input_shape, load_bundled, load_samples
from lipbound.problem import make_problem

BUDGETS = (10.0, 60.0)
QUICK_BUDGETS = (2.0,)


def _tiny() -> tuple[nn.Module, torch.Tensor, float, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.8)
    x0 = torch.rand(1, 3, generator=gen, dtype=torch.float64)
    return model, x0, 0.4, torch.tensor([1.0, -1.0], dtype=torch.float64)


def cases() -> list[dict[str, Any]]:
    out = []
    for name, eps in (("simple-mlp-64", 0.3), ("simple-mlp-128", 0.1)):
        graph = trace(load_bundled(name), bundled_input_shape(name)).to(torch.float64)
        x0 = torch.full((1, 10), 0.5, dtype=torch.float64)
        out.append({"model": name, "eps": eps, "graph": graph, "x0": x0, "c": torch.tensor([1.0, -1.0]).double()})
    graph = trace(load_bundled("digits-mlp"), bundled_input_shape("digits-mlp")).to(torch.float64)
    x, _ = load_samples("digits-mlp", dtype=torch.float64)
    out.append({"model": "digits-mlp (10 rows)", "eps": 0.1, "graph": graph, "x0": x[:1], "c": None})
    model, x0, eps, c = _tiny()
    out.append({"model": "tiny 3-12-12-2", "eps": eps, "graph": model, "x0": x0, "c": c})
    return out


def _lower_seconds(case: dict[str, Any]) -> tuple[float, int]:
    pr = make_problem(case["graph"], case["x0"], case["eps"], None, None, case["c"], torch.float64)
    t0 = time.perf_counter()
    lower_bound(pr.graph, pr.xl, pr.xu, pr.c, "inf")
    return time.perf_counter() - t0, pr.c.shape[1]


def run_case(case: dict[str, Any], budget: float, exact: float | None) -> dict[str, Any]:
    t_low, k = _lower_seconds(case)
    per_row = max((budget - t_low) / k, 0.05)
    t0 = time.perf_counter()
    old = local_lipschitz_bab_v1(case["graph"], case["x0"], case["eps"], c=case["c"], time_budget=per_row)
    old_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = lipbound.local_lipschitz_bab(case["graph"], case["x0"], case["eps"], c=case["c"], time_budget=budget)
    new_wall = time.perf_counter() - t0
    old_up, old_low = float(old["upper"].max()), float(old["lower"].max())
    new_up, new_low = float(new.upper_max.max()), float(new.lower_max.max())
    tol = 1e-4 * max(old_low, new_low, 1e-12)  # a gap below BaB's closing tolerance counts as closed
    gap_old, gap_new = (g if g > tol else 0.0 for g in (old_up - old_low, new_up - new_low))
    return {
        "model": case["model"],
        "eps": case["eps"],
        "rows": k,
        "budget": budget,
        "exact": exact,
        "old_upper": old_up,
        "old_lower": old_low,
        "old_wall": old_wall,
        "old_per_row_budget": per_row,
        "old_domains": sum(s["domains_evaluated"] for s in old["stats"]),
        "new_upper": new_up,
        "new_lower": new_low,
        "new_wall": new_wall,
        "new_domains": sum(s["domains_evaluated"] for s in new.details["bab"]),
        "new_open": sum(s["domains_open"] for s in new.details["bab"]),
        "gap_ratio": gap_new / gap_old if gap_old > 0 else (1.0 if gap_new <= 0 else float("inf")),
        "sound_vs_exact": None if exact is None else bool(min(old_up, new_up) >= exact * (1 - 1e-9)),
        "new_exact": None if exact is None else bool(abs(new_up - exact) <= 2e-4 * exact),
    }


def run(quick: bool = False, progress=None) -> dict[str, Any]:
    say = progress or (lambda _msg: None)
    torch.set_num_threads(1)
    rows = []
    model, x0, eps, c = _tiny()
    # the exact reference first: once (of three runs), called after a series of BaB calls in the same process
    # on a loaded machine, exact_lipschitz returned status "not_set" with lower 0 on this net
    ex = lipbound.exact_lipschitz(model, x0, eps, c=c, time_limit=120)
    say(f"bab: exact MILP status {ex.status}: [{ex.lower}, {ex.upper}]")
    exact = float(ex.lower) if ex.status == "optimal" else None  # attained (the MILP's upper is ~1e-6 above)
    # warm-up: one-off imports and allocations (torch's forward-mode AD, HiGHS)
    lipbound.local_lipschitz_bab(model, x0, eps, c=c, time_budget=30)  # one-off imports and allocations
    local_lipschitz_bab_v1(model, x0, eps, c=c, time_budget=1)
    for case in cases():
        for budget in QUICK_BUDGETS if quick else BUDGETS:
            say(f"bab: {case['model']} T={budget:g}s")
            rows.append(run_case(case, budget, exact if case["model"].startswith("tiny") else None))
    meta = {"lipbound": lipbound.__version__, "torch": torch.__version__, "threads": 1}
    return {"rows": rows, "meta": meta}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Branch and Bound at equal wall time (whole call, l_inf, one input, one thread)",
        "",
        "| model | eps | rows | budget s | exact | old upper | old lower | old wall s | new upper | new lower | "
        "new wall s | new open | gap ratio new/old |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v: "-" if v is None else f"{v:.5g}"  # noqa: E731
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['eps']:g} | {r['rows']} | {r['budget']:g} | {f(r['exact'])} | {f(r['old_upper'])} "
            f"| {f(r['old_lower'])} | {r['old_wall']:.1f} | {f(r['new_upper'])} | {f(r['new_lower'])} | "
            f"{r['new_wall']:.1f} | {r['new_open']} | {r['gap_ratio']:.3f} |"
        )
    lines += [
        "",
        "Old: the pre-rewrite BaB (frozen in `benchmarks/_bab_v1.py`), given `(T - t_lower) / rows` seconds per row "
        "so that its whole call aims at T; new: `local_lipschitz_bab(time_budget=T)`. Upper/lower: max over rows. "
        "Gap ratio: (new upper - new lower) / (old upper - old lower) (1 when both closed to 1e-4).",
    ]
    return "\n".join(lines) + "\n"
