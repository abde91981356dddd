"""Data-set runs (``lipbound run``): throughput of the local process pool (1, 2 workers) and of local Ray on the
digits test split (``local`` task, digits-mlp, l_inf eps = 0.05), the overhead per input, and a projection to a
paper-scale evaluation from the measured per-input cost.

Measured per configuration: wall seconds from the ``lipbound.run`` call to its return (includes worker start-up:
spawning processes / ``ray.init`` and building the model once per worker), the start-up (time to the first
record), throughput (inputs / wall), the mean compute seconds inside a worker per input, and the overhead per
input ``(workers * wall - sum of compute seconds) / n`` (scheduling, pickling, the fsynced write, start-up);
"steady" numbers count from the first record on (workers up, model built).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import lipbound

EPS = 0.05
CONFIGS = [("local", 1), ("local", 2), ("ray", 2)]
CORES_PER_MACHINE = 32
DEADLINE_HOURS = 1.0
N_PAPER = 10_000  # a full CIFAR-10 test set / TinyImageNet validation set
COST_MULTIPLIERS = (1, 10, 100, 1000)  # assumed per-input cost of a paper model relative to digits-mlp


def _one(executor: str, workers: int, n: int, root: Path) -> dict[str, Any]:
    first: list[float] = []
    first_compute: list[float] = []
    t0 = time.perf_counter()

    def on_record(record: dict[str, Any]) -> None:
        if not first:
            first.append(time.perf_counter() - t0)
            first_compute.append(record["seconds"])

    res = lipbound.run("local", "digits", root / f"{executor}{workers}.jsonl", model="digits-mlp", eps=EPS,
                       limit=n, executor=executor, workers=workers, on_record=on_record)  # fmt: skip
    wall = time.perf_counter() - t0
    compute = sum(r["seconds"] for r in res.records)
    ok = sum(r["status"] == "ok" for r in res.records)
    n_done = len(res.records)
    steady = wall - first[0]  # after the first record: workers are up, the model is built
    return {
        "executor": executor,
        "workers": workers,
        "inputs": len(res.records),
        "ok": ok,
        "wall_s": wall,
        "startup_s": first[0] if first else None,
        "throughput_per_s": len(res.records) / wall,
        "compute_per_input_s": compute / len(res.records),
        "overhead_per_input_s": (workers * wall - compute) / len(res.records),
        "steady_throughput_per_s": (n_done - 1) / steady,
        "steady_overhead_per_input_s": (workers * steady - (compute - first_compute[0])) / (n_done - 1),
        "upper_median": sorted(r["upper"] for r in res.records)[len(res.records) // 2],
    }


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    n = 30 if quick else 450
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for executor, workers in CONFIGS:
            if executor == "ray":
                import ray

                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            try:
                rows.append(_one(executor, workers, n, Path(tmp)))
            finally:
                if executor == "ray":
                    ray.shutdown()
    base, steady_base = rows[0]["throughput_per_s"], rows[0]["steady_throughput_per_s"]
    for r in rows:
        r["speedup_vs_1_worker"] = r["throughput_per_s"] / base
        r["steady_speedup_vs_1_worker"] = r["steady_throughput_per_s"] / steady_base
    # projection: per-input cost c = multiplier * (measured 1-worker compute per input) + the measured overhead;
    # machines = N * c / (cores * efficiency * deadline), efficiency = the measured steady-state 2-worker scaling / 2
    c1 = rows[0]["compute_per_input_s"]
    overhead = max(0.0, max(r["steady_overhead_per_input_s"] for r in rows[1:]))
    efficiency = min(1.0, max(r["steady_speedup_vs_1_worker"] for r in rows[1:]) / 2)
    projection = []
    for m in COST_MULTIPLIERS:
        per_input = m * c1 + overhead
        core_hours = N_PAPER * per_input / 3600
        machines = core_hours / (CORES_PER_MACHINE * efficiency * DEADLINE_HOURS)
        projection.append({"cost_multiplier": m, "per_input_s": per_input, "core_hours": core_hours,
                           "machines_for_1h": max(1, int(-(-machines // 1)))})  # fmt: skip
    return {
        "eps": EPS,
        "n": n,
        "rows": rows,
        "projection": {
            "inputs": N_PAPER,
            "cores_per_machine": CORES_PER_MACHINE,
            "deadline_hours": DEADLINE_HOURS,
            "parallel_efficiency": efficiency,
            "rows": projection,
        },
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Data-set runs: `local` task, digits-mlp, digits test split (first {result['n']}), eps={result['eps']}",
        "",
        "| executor | workers | inputs | wall s | start-up s | inputs/s | speed-up | steady inputs/s "
        "| steady speed-up | compute s/input | overhead s/input (steady) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['executor']} | {r['workers']} | {r['inputs']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | "
            f"{r['throughput_per_s']:.2f} | {r['speedup_vs_1_worker']:.2f}x | {r['steady_throughput_per_s']:.2f} | "
            f"{r['steady_speedup_vs_1_worker']:.2f}x | {r['compute_per_input_s']:.3f} | "
            f"{r['overhead_per_input_s']:.3f} ({r['steady_overhead_per_input_s']:.3f}) |"
        )
    p = result["projection"]
    lines += [
        "",
        f"Projection to {p['inputs']:,} inputs in {p['deadline_hours']:g} h on {p['cores_per_machine']}-core "
        f"machines at the measured steady-state parallel efficiency {p['parallel_efficiency']:.2f} (best 2-worker "
        "executor; measured on a SHARED 2-core machine, so pessimistic). ASSUMPTION: a paper model "
        "(CIFAR / TinyImageNet CNN) costs `multiplier` x the measured digits-mlp compute per input (not measured "
        "here), plus the measured steady per-input overhead; one input per core; start-up ignored.",
        "",
        "| cost multiplier | s/input | core-hours | machines for the deadline |",
        "|---|---|---|---|",
    ]
    for r in p["rows"]:
        lines.append(
            f"| {r['cost_multiplier']}x | {r['per_input_s']:.3g} | {r['core_hours']:.3g} | {r['machines_for_1h']} |"
        )
    return "\n".join(lines) + "\n"
