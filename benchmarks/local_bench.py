"""Local-bound benchmark: the bundled 3-layer ReLU MLPs (widths 16-256) and the digits CNN at eps 0.01/0.1/0.3.

Per (model, eps) it measures the certified upper bound of ``lipbound.local_lipschitz`` with ``crown``,
``crown`` + ``optimize`` and ``interval`` (each timed without the lower-bound search, best of 3 runs), the attained
lower bound (sampling + gradient ascent; timed as the default call crown + lower), ``gap = crown / lower``, and
the peak extra resident memory of each call. Memory is measured as the process's peak RSS during the call
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the RSS before the call, so it counts
torch's native allocations; where that interface is missing it falls back to ``tracemalloc`` (Python allocations
only) and says so in the results.

Inputs: for the "simple" MLPs x0 = (1/2, ..., 1/2) and c = e_0 - e_1 (the logit margin); for the digits CNN the
first shipped test digit and c = None (every logit row; reported: the maximum over rows, the l_inf -> l_inf norm).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lipbound
from lipbound.graph import trace
from lipbound.models import SIMPLE_DIM, bundled_input_shape, load_bundled, load_samples

MODELS = ("simple-mlp-16", "simple-mlp-64", "simple-mlp-128", "simple-mlp-256", "digits-cnn")
EPS = (0.01, 0.1, 0.3)
BATCHES = (1, 4, 16)
QUICK_MODELS = ("simple-mlp-16", "simple-mlp-128")
QUICK_EPS = (0.1,)
QUICK_BATCHES = (1, 4)
BAB_SECONDS = 10.0  # Branch and Bound budget per case (single-direction cases only)
QUICK_BAB_SECONDS = 1.0
MEMORY_MODEL = "simple-mlp-128"
TIME_TARGET = ("simple-mlp-128", 1.0)  # crown on the 3-layer width-128 MLP in under 1 s


# --------------------------------------------------------------------------------------------- peak memory


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _rss_kb("VmHWM") is not None


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


MEMORY_METHOD = "rss-hwm" if platform.system() == "Linux" and _reset_hwm() else "tracemalloc"


def measure(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float, float]:
    """Run ``fn()``; return (result, seconds, peak extra memory in MB) using :data:`MEMORY_METHOD`.

    Memory is from the first run; seconds is the minimum over ``repeats`` runs (fewer if a run takes > 2 s).
    """
    out, secs, mb = _measure_once(fn)
    for _ in range(repeats - 1):
        if secs > 2.0:
            break
        t0 = time.perf_counter()
        fn()
        secs = min(secs, time.perf_counter() - t0)
    return out, secs, mb


def _measure_once(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    _trim()
    if MEMORY_METHOD == "rss-hwm":
        _reset_hwm()
        base = _rss_kb("VmRSS") or 0
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
        peak = (_rss_kb("VmHWM") or 0) - base
        return out, secs, max(peak, 0) / 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, secs, peak / 2**20


# ------------------------------------------------------------------------------------------------- cases


def _setup(name: str, batch: int = 1) -> tuple[lipbound.Graph, torch.Tensor, torch.Tensor | None]:
    graph = trace(load_bundled(name), bundled_input_shape(name)).to(torch.float64)
    if name.startswith("simple"):
        if batch == 1:
            x0 = torch.full((1, SIMPLE_DIM), 0.5, dtype=torch.float64)
        else:
            x0 = torch.rand(batch, SIMPLE_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        c = torch.tensor([1.0, -1.0], dtype=torch.float64)
        return graph, x0, c
    x, _ = load_samples(name, dtype=torch.float64)
    return graph, x[:batch], None


def _value(t: torch.Tensor) -> float:
    return float(t.reshape(t.shape[0], -1).amax(1).max())


def bench_case(name: str, eps: float, bab_seconds: float = 10.0) -> dict[str, Any]:
    """All methods for one (model, eps) on one input."""
    graph, x0, c = _setup(name)
    lipbound.local_lipschitz(graph, x0, eps, c=c, lower=False)  # warm-up (first-call allocations)
    params = sum(p.numel() for p in load_bundled(name).parameters())
    row: dict[str, Any] = {"model": name, "eps": eps, "params": params}
    for key, method, opt in (("crown", "crown", False), ("crown_opt", "crown", True), ("interval", "interval", False)):
        r, secs, mb = measure(
            lambda method=method, opt=opt: lipbound.local_lipschitz(
                graph, x0, eps, c=c, method=method, optimize=opt, lower=False
            )
        )
        row[key], row[f"{key}_seconds"], row[f"{key}_peak_mb"] = _value(r.upper), secs, mb
    r, secs, mb = measure(lambda: lipbound.local_lipschitz(graph, x0, eps, c=c), repeats=1)
    row["lower"] = _value(r.lower)
    row["crown_with_lower_seconds"] = secs
    row["gap"] = row["crown"] / row["lower"] if row["lower"] > 0 else float("inf")
    row["opt_gap"] = row["crown_opt"] / row["lower"] if row["lower"] > 0 else float("inf")
    row["bab"] = row["bab_seconds"] = row["bab_domains"] = None
    if c is not None and bab_seconds > 0:  # one output direction: Branch and Bound with a fixed budget
        t0 = time.perf_counter()
        rb = lipbound.local_lipschitz_bab(graph, x0, eps, c=c, time_budget=bab_seconds)
        row["bab"], row["bab_seconds"] = _value(rb.upper), time.perf_counter() - t0
        row["bab_domains"] = rb.details["bab"][0]["domains_evaluated"]
        row["bab_closed"] = not rb.details["bab"][0]["timed_out"]
        row["lower"] = max(row["lower"], _value(rb.lower))
    return row


def bench_memory(name: str, batches: tuple[int, ...], eps: float = 0.1) -> list[dict[str, Any]]:
    """Peak extra memory and time of crown versus batch size (expected: roughly linear in the batch)."""
    out = []
    for b in batches:
        graph, x0, c = _setup(name, b)
        lipbound.local_lipschitz(graph, x0, eps, c=c, lower=False)
        call = lambda graph=graph, x0=x0, c=c: lipbound.local_lipschitz(graph, x0, eps, c=c, lower=False)  # noqa: E731
        _, secs, mb = measure(call)
        out.append({"model": name, "eps": eps, "batch": b, "seconds": secs, "peak_mb": mb})
    return out


def checks(rows: list[dict[str, Any]], memory: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets: crown never above interval, crown+opt never above crown, lower <= upper, speed."""
    tol = 1e-9
    target_name, target_s = TIME_TARGET
    crown_times = [r["crown_seconds"] for r in rows if r["model"] == target_name]
    per_input = [m["peak_mb"] / m["batch"] for m in memory]
    return {
        "crown_le_interval": all(r["crown"] <= r["interval"] * (1 + tol) for r in rows),
        "crown_opt_le_crown": all(r["crown_opt"] <= r["crown"] * (1 + tol) for r in rows),
        "lower_le_upper": all(r["lower"] <= min(r["crown"], r["crown_opt"], r["interval"]) * (1 + tol) for r in rows),
        f"crown_{target_name}_max_seconds": max(crown_times) if crown_times else None,
        f"crown_{target_name}_under_{target_s:g}s": bool(crown_times) and max(crown_times) < target_s,
        "memory_mb_per_input": per_input,
    }


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "memory", "checks", "meta"}`` (JSON-serialisable)."""
    say = progress or (lambda _msg: None)
    torch.manual_seed(0)
    models, eps_values = (QUICK_MODELS, QUICK_EPS) if quick else (MODELS, EPS)
    rows = []
    for name in models:
        for eps in eps_values:
            say(f"local: {name} eps={eps:g}")
            rows.append(bench_case(name, eps, QUICK_BAB_SECONDS if quick else BAB_SECONDS))
    say(f"local: memory vs batch on {MEMORY_MODEL}")
    memory = bench_memory(MEMORY_MODEL, QUICK_BATCHES if quick else BATCHES)
    meta = {
        "lipbound": lipbound.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "dtype": "float64",
        "memory_method": MEMORY_METHOD,
        "memory_note": "peak RSS during the call minus RSS before it (VmHWM, reset via /proc/self/clear_refs)"
        if MEMORY_METHOD == "rss-hwm"
        else "tracemalloc peak (Python allocations only; misses torch tensors)",
        "quick": quick,
    }
    return {"rows": rows, "memory": memory, "checks": checks(rows, memory), "meta": meta}


def to_markdown(result: dict[str, Any]) -> str:
    """Markdown tables of :func:`run`'s result."""
    head = (
        "| model | eps | crown | crown+opt | interval | crown+BaB | lower | gap (crown/lower) | crown s | "
        "crown+opt s | interval s | BaB s (domains) | crown+lower s | crown peak MB |"
    )
    lines = ["## Local Lipschitz bounds (l_inf input norm)", "", head, "|" + "---|" * 14]
    for r in result["rows"]:
        bab = "-" if r.get("bab") is None else f"{r['bab']:.4g}" + ("" if r.get("bab_closed") else " (open)")
        bab_s = "-" if r.get("bab") is None else f"{r['bab_seconds']:.1f} ({r['bab_domains']})"
        lines.append(
            f"| {r['model']} | {r['eps']:g} | {r['crown']:.4g} | {r['crown_opt']:.4g} | {r['interval']:.4g} | "
            f"{bab} | {r['lower']:.4g} | {r['gap']:.3f} | {r['crown_seconds']:.3f} | {r['crown_opt_seconds']:.3f} | "
            f"{r['interval_seconds']:.3f} | {bab_s} | {r['crown_with_lower_seconds']:.3f} | {r['crown_peak_mb']:.1f} |"
        )
    lines += ["", f"Memory: {result['meta']['memory_note']}.", "", "| model | batch | crown s | peak MB | MB/input |"]
    lines.append("|---|---|---|---|---|")
    for m in result["memory"]:
        per = m["peak_mb"] / m["batch"]
        lines.append(f"| {m['model']} | {m['batch']} | {m['seconds']:.3f} | {m['peak_mb']:.1f} | {per:.2f} |")
    lines += ["", "Checks: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in result["checks"].items()), ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
