"""Global Lipschitz benchmark.

* ``models``: the CIFAR-size CNN (3x32x32, conv 16/32/32 + 2 linear), a ResNet-style conv net (residual blocks
  ``h + relu(conv(h))``) and the 784-128-64-10 ReLU MLP, l2 and l_inf, every method and ``auto``: certified value,
  the method that produced it (routing/fallbacks), seconds and peak resident memory. Each (model, norm, method)
  runs in a fresh subprocess so ``ru_maxrss`` is that call's peak (interpreter + torch included, ~0.3 GB).
* ``width`` / ``depth`` sweeps: ReLU and MaxMin MLPs (2 hidden layers of width 32..512; 2..18 hidden layers of width
  32) with random weights (deterministic seeds, each layer rescaled to unit spectral norm): certified bound and
  seconds, or "skipped" when the method is predicted to exceed the per-case time budget.

Beside every bound: a sampled lower bound (largest Jacobian norm at random inputs).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

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


# ------------------------------------------------------------------------------------------------ model suite


class _Res(nn.Module):
    """``h + relu(conv(h))`` (a residual block of the layered form, ``W`` square)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.relu(self.conv(h))


def make_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The benchmark models (PyTorch default initialisation, seed 0, float64, eval mode) and their input shapes."""
    torch.manual_seed(0)
    if name == "cifar_cnn":
        m = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )
        shape: tuple[int, ...] = (3, 32, 32)
    elif name == "resnet_block":
        m = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            _Res(16),
            _Res(16),
            nn.Flatten(),
            nn.Linear(16 * 16 * 16, 10),
        )
        shape = (3, 32, 32)
    elif name == "mlp_784_128_64_10":
        m = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
        shape = (784,)
    else:
        raise ValueError(name)
    return m.double().eval(), shape


MODELS = ("cifar_cnn", "resnet_block", "mlp_784_128_64_10")
MODEL_METHODS = ("product", "liplt", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr", "auto")


def sampled_lower_model(name: str, norm: str, n: int = 8, seed: int = 1) -> float:
    """max over random inputs of the Jacobian's operator norm (l2: spectral; l_inf: largest row l1 norm)."""
    model, shape = make_model(name)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    best = 0.0
    for i in range(n):
        j = torch.autograd.functional.jacobian(model, x[i : i + 1]).reshape(10, -1)
        v = torch.linalg.matrix_norm(j, 2) if norm == "2" else j.abs().sum(1).max()
        best = max(best, float(v))
    return best


_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {bench!r})
from global_bench import make_model
from lipbound.global_bounds.api import global_lipschitz
model, shape = make_model({name!r})
t0 = time.perf_counter()
try:
    r = global_lipschitz(model, {norm!r}, {method!r}, input_shape=shape, time_budget={budget!r})
    out = {{"upper": r.upper, "used": r.method, "fallbacks": r.details.get("fallbacks", []),
            "skipped": r.details.get("skipped", {{}}), "status": str(r.details.get("status", ""))}}
except Exception as e:
    out = {{"upper": None, "used": None, "status": f"{{type(e).__name__}}: {{e}}"}}
out["seconds"] = time.perf_counter() - t0
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def run_model_case(name: str, norm: str, method: str, budget: float, timeout: float = 240.0) -> dict:
    """One (model, norm, method) in a fresh subprocess: value, method used, seconds, peak memory."""
    code = _CHILD.format(bench=str(Path(__file__).parent), name=name, norm=norm, method=method, budget=budget)
    base = {"model": name, "norm": norm, "method": method}
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "upper": None, "used": None, "seconds": timeout, "peak_mb": None, "status": "timeout"}
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        return {**base, "upper": None, "used": None, "seconds": None, "peak_mb": None, "status": res.stderr[-300:]}
    return {**base, **json.loads(line[0][len("RESULT ") :])}


def run_models(budget: float = 60.0, models: tuple[str, ...] = MODELS) -> list[dict]:
    rows = []
    for name in models:
        for norm in ("2", "inf"):
            low = sampled_lower_model(name, norm)
            for method in MODEL_METHODS:
                r = run_model_case(name, norm, method, budget)
                rows.append({**r, "sampled_lower": low})
    return rows


def models_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | norm | method | upper | used | seconds | peak MB | sampled lower | note |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        up = "-" if r["upper"] is None else f"{r['upper']:.4g}"
        sec = "-" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        mem = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        note = "; ".join(r.get("fallbacks") or []) or (r.get("status") or "")
        if r["method"] == "auto" and r.get("skipped"):
            note = "skipped: " + ", ".join(sorted(r["skipped"]))
        note = note.replace("|", "/")[:160]
        lines.append(
            f"| {r['model']} | {r['norm']} | {r['method']} | {up} | {r.get('used') or '-'} | {sec} | {mem} | "
            f"{r['sampled_lower']:.4g} | {note} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ MLP sweeps


def run_sweeps(quick: bool = False) -> list[dict]:
    """The width/depth sweeps; ``quick`` uses small sizes and a 10 s budget per method (full: 120 s)."""
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


def run(quick: bool = False) -> list[dict]:
    """The model suite (60 s budget per method; quick: the MLP only, 10 s) and the sweeps in their quick sizes
    (the full sweeps take well over the benchmark's 10 minutes on 2 shared cores: ``run_sweeps(quick=False)``)."""
    models = ("mlp_784_128_64_10",) if quick else MODELS
    rows = [{"sweep": "models", **r} for r in run_models(10.0 if quick else 60.0, models)]
    return rows + run_sweeps(quick=True)


def markdown(rows: list[dict]) -> str:
    head = models_markdown([r for r in rows if r.get("sweep") == "models"])
    rows = [r for r in rows if r.get("sweep") != "models"]
    lines = ["| sweep | act | width | depth | method | upper | seconds | sampled lower | status |", "|" + "---|" * 9]
    for r in rows:
        up = "-" if r["upper"] is None else f"{r['upper']:.4g}"
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        lines.append(
            f"| {r['sweep']} | {r['activation']} | {r['width']} | {r['depth']} | {r['method']} | {up} | {sec} | "
            f"{r['sampled_lower']:.4g} | {r['status']} |"
        )
    return head + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown(run(quick="--quick" in sys.argv)))
