"""Build once, bound many times: ``lipbound.Bounded`` against the one-call API on repeated calls.

An application bounds the same model around many inputs, one call each (a smoothing run, a counterfactual
search, a training log). Per model: ``calls`` local l_inf bounds (crown, one input, every output row, lower bound
included) through ``lipbound.local_lipschitz(model, ...)`` (traces, checks and casts every time) and through
``Bounded(model, shape).local(...)`` (traced once, construction included in its total); then the same for
``calls`` global ``product`` bounds. The bounds are asserted equal. Wall-clock seconds, one thread, after one
untimed warm-up call.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
from torch import nn

import lipbound
from lipbound.models import bundled_input_shape, load_bundled, load_samples

EPS = 0.01


def _mnist_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 4, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 4, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 100), nn.ReLU(), nn.Linear(100, 10),
    ).eval()  # fmt: skip


def _cases(quick: bool) -> list[tuple[str, nn.Module, tuple[int, ...], torch.Tensor]]:
    out = []
    for name in ("simple-mlp-128", "digits-cnn"):
        out.append((name, load_bundled(name), bundled_input_shape(name), load_samples(name)[0]))
    if not quick:
        x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        out.append(("mnist-cnn 1x28x28 (8@13, 16@5, 100, 10)", _mnist_cnn(), (1, 28, 28), x))
    return out


def _median_seconds(fn, xs) -> tuple[float, list]:
    """Median wall time of ``fn(x_i)`` over the inputs, and the results."""
    times, out = [], []
    for i in range(len(xs)):
        t0 = time.perf_counter()
        out.append(fn(xs[i : i + 1]))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _row(name: str, model: nn.Module, shape: tuple[int, ...], xs: torch.Tensor) -> dict[str, Any]:
    t0 = time.perf_counter()
    b = lipbound.Bounded(model, shape)
    row: dict[str, Any] = {"model": name, "calls": len(xs), "Bounded build s": time.perf_counter() - t0}
    for label, kw in (("upper only", {"lower": False}), ("upper + lower", {})):

        def one_call(x, kw=kw):
            return lipbound.local_lipschitz(model, x, EPS, **kw)

        def bounded(x, kw=kw):
            return b.local(x, EPS, **kw)

        one_call(xs[:1]), bounded(xs[:1])  # warm-up (lazy imports, per-model caches)
        one, ref = _median_seconds(one_call, xs)
        many, got = _median_seconds(bounded, xs)
        for r, g in zip(ref, got, strict=True):
            assert torch.equal(r.upper, g.upper) and torch.equal(r.lower, g.lower)
        row[f"{label}: one-call s"], row[f"{label}: Bounded s"] = one, many
    gone, gref = _median_seconds(lambda _x: lipbound.global_lipschitz(model, method="product", input_shape=shape), xs)
    gmany, gget = _median_seconds(lambda _x: b.global_lipschitz(method="product"), xs)
    assert all(a.upper == c.upper for a, c in zip(gref, gget, strict=True))
    row["global product: one-call s"], row["global product: Bounded s"] = gone, gmany
    return row


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    calls = 3 if quick else 8
    rows = [_row(name, model, shape, xs[:calls].reshape(-1, *shape)) for name, model, shape, xs in _cases(quick)]
    return {"eps": EPS, "threads": 1, "load_average": [round(v, 2) for v in os.getloadavg()], "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    cols = [k for k in result["rows"][0] if k not in ("model", "calls")]
    lines = [
        "## Build once, bound many times (`lipbound.Bounded`)",
        "",
        f"Median seconds per call over `calls` inputs: local l_inf bounds (crown, eps={result['eps']}, one input, "
        "every output row; upper only and with the attained lower bound) and the global `product` bound, through "
        "the one-call API (traces, checks and casts every call) and through one `Bounded` (built once: `Bounded "
        "build s`); identical bounds asserted. One thread, after a warm-up call "
        f"(`python benchmarks/run.py --only bounded`); load average at the end {result.get('load_average')} on "
        f"{os.cpu_count()} cores.",
        "",
        "| model | calls | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['calls']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"
