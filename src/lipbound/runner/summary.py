"""Summary of a run's records: counts by status, the distribution of every task number over ``ok`` records
(min, quartiles, median, mean, max), the first failures, and a headless matplotlib histogram of the headline
number (e.g. the certified ``upper`` bound)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NOT_NUMBERS = ("index", "status", "error", "attempts")


def summarize(records: list[dict[str, Any]], failures: int = 5) -> dict[str, Any]:
    status: dict[str, int] = {}
    for r in records:
        status[r["status"]] = status.get(r["status"], 0) + 1
    ok = [r for r in records if r["status"] == "ok"]
    fields = list(dict.fromkeys(k for r in ok for k, v in r.items() if k not in NOT_NUMBERS and _number(v)))
    dist = {}
    for k in fields:
        v = np.array([float(r[k]) for r in ok if _number(r.get(k))])
        if v.size:
            q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
            dist[k] = {
                "min": q[0],
                "p25": q[1],
                "median": q[2],
                "p75": q[3],
                "max": q[4],
                "mean": float(v.mean()),
                "n": int(v.size),
            }
            dist[k] = {a: float(b) if a != "n" else b for a, b in dist[k].items()}
    failed = [
        {"index": r["index"], "status": r["status"], "error": r.get("error")} for r in records if r["status"] != "ok"
    ]
    secs = [float(r["seconds"]) for r in records if _number(r.get("seconds"))]
    return {
        "records": len(records),
        "status": status,
        "distribution": dist,
        "failures": failed[:failures],
        "failed": len(failed),
        "input_seconds_total": float(sum(secs)),
    }


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def summary_table(summary: dict[str, Any], title: str = "run summary") -> Any:
    """A compact rich table: one row per task number (its distribution), then status counts and failures."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("number")
    for c in ("n", "min", "p25", "median", "p75", "max", "mean"):
        t.add_column(c, justify="right")
    for k, d in summary["distribution"].items():
        t.add_row(k, str(d["n"]), *(f"{d[c]:.4g}" for c in ("min", "p25", "median", "p75", "max", "mean")))
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["status"].items()))
    t.caption = f"{summary['records']} records ({counts})"
    for f in summary["failures"]:
        t.caption += f"\n#{f['index']} {f['status']}: {f['error']}"
    t.caption_justify = "left"
    return t


def plot_histogram(records: list[dict[str, Any]], field: str, path: str | Path, title: str = "") -> Path | None:
    """Histogram of ``field`` over ``ok`` records, written to ``path`` with the Agg backend (None if no data)."""
    values = [float(r[field]) for r in records if r["status"] == "ok" and _number(r.get(field))]
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="#3b6ea8")
    ax.set_xlabel(field)
    ax.set_ylabel("inputs")
    ax.set_title(title or f"{field} over {len(values)} inputs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
