"""Randomized-smoothing benchmark on the digits test split (bundled noise-trained CNNs and the 1-Lipschitz net).

For each model (sigma = its training noise) and method: certified accuracy at r in {0, 0.25, 0.5, 0.75, 1.0},
average certified radius (ACR), abstention rate, seconds per input and samples per second of the whole certify
call (noise, forward, maps, bounds), beside the samples per second of the bare forward pass (same batch size).
Methods: Cohen CERTIFY; LVM-RS with select n0, bonferroni and global (one map/t tuned on validation inputs);
LVM-RS n0 and global with the certified Lipschitz radius (L_f from lipbound.global_lipschitz, method auto).

Full run: the first 200 test images, n0 = 100, n = 10 000, alpha = 0.001, batch 1000, tuning on 100 validation
images with the same n; one thread. Quick: 12 images, n = 500, 10 validation images.
Note: with n = 10 000 and alpha = 0.001 no radius from Clopper-Pearson can exceed sigma Phi^-1(alpha^(1/n))
(= 3.20 sigma); only the Lipschitz radius is not capped that way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from scipy import special

import lipbound
from lipbound.models import load_bundled
from lipbound.smoothing import (
    Smooth,
    average_certified_radius,
    certified_accuracy,
    correct_predictions,
    load_digits_split,
    plot_certified_accuracy,
    tune,
)
from lipbound.smoothing.models import CNN_SIGMAS, LIP_NAME, LIP_SIGMA, cnn_name

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
RESULTS = Path(__file__).resolve().parent / "results"
ALPHA, N0, BATCH = 0.001, 100, 1000


def _forward_throughput(model: torch.nn.Module, x: torch.Tensor, rows: int = 1000, reps: int = 20) -> float:
    batch = x[:1].expand(rows, *x.shape[1:]).contiguous()
    with torch.inference_mode():
        model(batch)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(batch)
    return rows * reps / (time.perf_counter() - t0)


def _row(label: str, res: Any, y: torch.Tensor) -> dict[str, Any]:
    ok = correct_predictions(res, y)
    ca = certified_accuracy(res.radius, ok, RADII)
    row: dict[str, Any] = {"method": label}
    row.update({f"ca@{r:g}": float(a) for r, a in zip(RADII, ca, strict=True)})
    row.update(
        {
            "acr": average_certified_radius(res.radius, ok),
            "abstain": float(res.abstained.float().mean()),
            "s_per_input": res.seconds / len(res),
            "samples_per_s": res.samples_per_second,
            "radius_from_L": res.radius_source.count("lipschitz") / len(res),
            "maps": sorted(set(res.candidate)),
        }
    )
    return row


def bench_model(name: str, sigma: float, n_test: int, n: int, n_val: int, log=print) -> dict[str, Any]:
    model = load_bundled(name)
    x, y = load_digits_split("test")
    x, y = x[:n_test], y[:n_test]
    xv, yv = load_digits_split("val")
    xv, yv = xv[:n_val], yv[:n_val]
    sm = Smooth(model, 10, sigma, input_shape=(1, 8, 8))
    t0 = time.perf_counter()
    lip = lipbound.global_lipschitz(model, norm=2, input_shape=(1, 8, 8))
    lip_s = time.perf_counter() - t0
    lip_f = float(lip.upper)
    tuned = tune(sm, xv, yv, n0=N0, n=n, alpha=ALPHA, batch_size=BATCH, generator=100)
    tuned_l = tune(sm, xv, yv, n0=N0, n=n, alpha=ALPHA, lipschitz=lip_f, batch_size=BATCH, generator=101)
    runs = [
        ("cohen", {}),
        ("lvm n0", {"method": "lvm", "select": "n0"}),
        ("lvm bonferroni", {"method": "lvm", "select": "bonferroni"}),
        (f"lvm global [{tuned.candidate.label()}]", {"method": "lvm", "select": "global", "candidate": tuned}),
        ("lvm n0 + L", {"method": "lvm", "select": "n0", "lipschitz": lip_f}),
        (
            f"lvm global + L [{tuned_l.candidate.label()}]",
            {"method": "lvm", "select": "global", "candidate": tuned_l, "lipschitz": lip_f},
        ),
    ]
    rows, curves = [], {}
    for i, (label, kw) in enumerate(runs):
        res = sm.certify(x, n0=N0, n=n, alpha=ALPHA, batch_size=BATCH, generator=i, **kw)
        rows.append(_row(label, res, y))
        curves[label] = (res.radius, correct_predictions(res, y))
        log(f"{name}: {label}: ACR {rows[-1]['acr']:.3f} ({res.seconds:.1f} s)")
    png = RESULTS / f"smoothing_{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_certified_accuracy(curves, png, title=f"{name}, sigma={sigma:g}, n={n}, alpha={ALPHA:g}")
    return {
        "model": name,
        "sigma": sigma,
        "clean_accuracy": float((model(x).argmax(1) == y).float().mean()),
        "lipschitz": lip_f,
        "lipschitz_method": lip.method,
        "lipschitz_seconds": lip_s,
        "forward_samples_per_s": _forward_throughput(model, x),
        "max_cp_radius": float(sigma * special.ndtri(ALPHA ** (1 / n))),
        "tuned": tuned.candidate.label(),
        "tuned_with_L": tuned_l.candidate.label(),
        "rows": rows,
        "plot": png.name,
    }


def run(quick: bool = False, progress=None) -> dict[str, Any]:
    torch.set_num_threads(1)
    log = progress or print
    n_test, n, n_val = (12, 500, 10) if quick else (200, 10_000, 100)
    models = [(cnn_name(s), s) for s in CNN_SIGMAS] + [(LIP_NAME, LIP_SIGMA)]
    t0 = time.perf_counter()
    out = [bench_model(name, s, n_test, n, n_val, log) for name, s in models]
    return {
        "config": {"n_test": n_test, "n0": N0, "n": n, "n_val": n_val, "alpha": ALPHA, "batch_size": BATCH},
        "models": out,
        "seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }


def to_markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [
        "## smoothing: randomized-smoothing certificates on digits",
        "",
        f"First {c['n_test']} test images, n0 = {c['n0']}, n = {c['n']}, alpha = {c['alpha']} per input, global map "
        f"tuned on {c['n_val']} validation images; one thread; total {result['seconds']:.0f} s. ca@r = certified "
        "accuracy at l2 radius r (pixel units in [0,1]); ACR = average certified radius; samples/s of the whole "
        "certify call (forward-only throughput in the model line).",
    ]
    for m in result["models"]:
        lines += [
            "",
            f"### {m['model']} (sigma = {m['sigma']:g}, clean accuracy {m['clean_accuracy']:.3f}, certified "
            f"L_f = {m['lipschitz']:.3g} by {m['lipschitz_method']} in {m['lipschitz_seconds']:.1f} s, forward "
            f"{m['forward_samples_per_s']:.3g} samples/s, Clopper-Pearson radius cap {m['max_cp_radius']:.3f})",
            "",
            "| method | ca@0 | ca@0.25 | ca@0.5 | ca@0.75 | ca@1 | ACR | abstain | s/input | samples/s | from L |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            lines.append(
                f"| {r['method']} | {r['ca@0']:.2f} | {r['ca@0.25']:.2f} | {r['ca@0.5']:.2f} | {r['ca@0.75']:.2f} | "
                f"{r['ca@1']:.2f} | {r['acr']:.3f} | {r['abstain']:.2f} | {r['s_per_input']:.3f} | "
                f"{r['samples_per_s']:.3g} | {r['radius_from_L']:.0%} |"
            )
        lines.append(f"\n![{m['model']}]({m['plot']})")
    return "\n".join(lines) + "\n"
