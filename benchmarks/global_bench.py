"""Global Lipschitz benchmark: width sweep (2 hidden layers, 32..512) and depth sweep (2..18 hidden layers, width 32)
for ReLU and MaxMin MLPs with random weights (deterministic seeds, each layer rescaled to unit spectral norm).

For every case and method: certified bound and seconds, or "skipped" when the method is predicted to exceed the
per-case time budget; a sampled lower bound (largest Jacobian norm at random inputs) is recorded beside them.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from lipbound.global_bounds.api import applicable, global_lipschitz
from lipbound.global_bounds.network import extract
from lipbound.nn import MaxMin

INPUT_DIM = 784
OUTPUT_DIM = 10


def make_mlp(width: int, depth: int, act: str, seed: int = 0, rescale: bool = True) -> nn.Module:
    """``depth`` hidden layers of ``width`` units (ReLU or MaxMin), float64, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    dims = [INPUT_DIM] + [width] * depth + [OUTPUT_DIM]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1]).double()
        with torch.no_grad():
            w = torch.randn(dims[i + 1], dims[i], generator=gen, dtype=torch.float64) / math.sqrt(dims[i])
            if rescale:
                w = w / torch.linalg.matrix_norm(w, 2)
            lin.weight.copy_(w)
            lin.bias.copy_(0.1 * torch.randn(dims[i + 1], generator=gen, dtype=torch.float64))
        layers.append(lin)
        if i < len(dims) - 2:
            layers.append(nn.ReLU() if act == "relu" else MaxMin())
    return nn.Sequential(*layers).eval()


def sampled_lower(model: nn.Module, n: int = 256, seed: int = 1) -> float:
    """max over random inputs of ||J(x)||_2 (a lower bound of the l2 Lipschitz constant)."""
    x = torch.randn(n, INPUT_DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    best = 0.0
    for chunk in x.split(64):
        J = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), chunk).permute(1, 0, 2)
        best = max(best, torch.linalg.matrix_norm(J, 2).max().item())
    return best


def predicted_seconds(method: str, width: int, depth: int, budget_hint: float = math.inf) -> float:
    """Rough cost model of this 2-core CPU with SCS (fitted on a few runs)."""
    if method in ("product", "liplt", "eclipse-fast"):
        return 0.01 * depth * (width / 32) ** 2
    if method in ("lipsdp-neuron", "lipsdp-layer"):
        rows = width * (depth + 1)
        if rows <= 200 and depth <= 4:  # default: SCS (+ first-order polish)
            return 15.0 * (rows / 384) ** 3.2 + 1.0
        # default on larger/deeper nets: first-order chain method (~17 s for 2 x 256); it is anytime (stops at the
        # time budget with a certified bound), so it is never predicted beyond the budget
        return min(17.0 * (depth + 1) * (width / 256) ** 3, 0.9 * budget_hint)
    if method == "lipsdp-nsr":
        if width <= 64 and depth <= 4:  # default: SCS (+ first-order polish, ~1.5 s)
            return 0.3 * depth * (width / 32) ** 3 + 1.5
        # default beyond: solver-free first-order chain method (2 x 256: ~13 s, 18 x 32: ~8 s); anytime, stops at the
        # time budget with a certified bound
        return min(1.0 + (depth + 1) * (0.5 + 4.5 * (width / 256) ** 3), 0.9 * budget_hint)
    return math.inf


def run_case(act: str, width: int, depth: int, budget: float) -> list[dict]:
    model = make_mlp(width, depth, act)
    net = extract(model)
    ok = applicable(net, "2")
    low = sampled_lower(model)
    rows = []
    for m in ("product", "liplt", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr"):
        base = {"activation": act, "width": width, "depth": depth, "method": m, "sampled_lower": low}
        if ok[m] is not None:
            continue
        if act == "relu" and m == "lipsdp-nsr":
            continue
        pred = predicted_seconds(m, width, depth, budget)
        if pred > budget:
            rows.append({**base, "upper": None, "seconds": None, "status": f"skipped (predicted {pred:.0f} s)"})
            continue
        t0 = time.perf_counter()
        try:
            r = global_lipschitz(net, norm=2, method=m, time_budget=budget)
            status = r.details.get("status", "ok") if r.method == m else f"fell back to {r.method}"
            if r.method == m and r.details.get("solver"):
                status = f"{r.details['solver']}: {status}".replace("first-order: first-order", "first-order")
            rows.append({**base, "upper": r.upper, "seconds": time.perf_counter() - t0, "status": status})
        except Exception as e:  # a benchmark row records the failure instead of stopping the sweep
            rows.append({**base, "upper": None, "seconds": time.perf_counter() - t0, "status": f"error: {e}"})
    return rows


def run(quick: bool = False) -> list[dict]:
    """Run the sweeps; ``quick`` uses small sizes and a 10 s budget per method (full: 120 s)."""
    budget = 10.0 if quick else 120.0
    widths = [32, 64] if quick else [32, 64, 128, 256, 512]
    depths = [2, 4] if quick else [2, 4, 8, 12, 18]
    out: list[dict] = []
    for act in ("relu", "maxmin"):
        for w in widths:
            out += [{"sweep": "width", **r} for r in run_case(act, w, 2, budget)]
        for d in depths:
            out += [{"sweep": "depth", **r} for r in run_case(act, 32, d, budget)]
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| sweep | act | width | depth | method | upper | seconds | sampled lower | status |", "|" + "---|" * 9]
    for r in rows:
        up = "-" if r["upper"] is None else f"{r['upper']:.4g}"
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        lines.append(
            f"| {r['sweep']} | {r['activation']} | {r['width']} | {r['depth']} | {r['method']} | {up} | {sec} | "
            f"{r['sampled_lower']:.4g} | {r['status']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown(run(quick="--quick" in sys.argv)))
