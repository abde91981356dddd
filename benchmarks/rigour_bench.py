"""What rigorous floating point costs, and what local bounds cost by model size (time and peak memory).

Side by side in one run, per model and dtype: ``lipbound.local_lipschitz`` (crown, no lower bound) with the engine's
rounding-error terms and float64 accumulation (``lipbound.engine.rounding.RIGOROUS = True``, the default) and
without them (the pre-rigour engine, whose numbers are NOT guaranteed to bound the exact real quantity). Reported:
seconds (best of 3), the ratio, the bound of each and their relative difference, and the peak extra memory of the
rigorous call. A soundness column counts, on 60 two-layer float64 nets with large cancelling weights, the calls
whose upper bound falls below the exact rational value.

Models: the bundled MLPs and digits CNN, and two deterministic random models of MNIST size (a CNN 1x28x28 ->
8@13x13 -> 16@5x5 -> 100 -> 10 and an MLP 784 -> 4x512 -> 10); eps 0.01 (l_inf) around a fixed input.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

import lipbound
from lipbound.engine import rounding
from lipbound.models import SIMPLE_DIM, load_bundled, load_samples
from local_bench import MEMORY_METHOD, measure

EPS = 0.01


def _mnist_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    ).eval()


def _mnist_mlp() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for _ in range(4):
        layers += [nn.Linear(width, 512), nn.ReLU()]
        width = 512
    return nn.Sequential(*layers, nn.Linear(width, 10)).eval()


def _cases(quick: bool) -> list[tuple[str, nn.Module, torch.Tensor, Any]]:
    half = torch.full((1, SIMPLE_DIM), 0.5)
    margin = torch.tensor([1.0, -1.0])  # the simple MLPs have two logits
    cases = [
        ("simple-mlp-128", load_bundled("simple-mlp-128"), half, margin),
        ("simple-mlp-256", load_bundled("simple-mlp-256"), half, margin),
        ("digits-cnn", load_bundled("digits-cnn"), load_samples("digits-cnn")[0][:1], None),
    ]
    if not quick:
        gen = torch.Generator().manual_seed(0)
        mnist = torch.rand(1, 1, 28, 28, generator=gen)
        cases += [
            ("mnist-cnn (random)", _mnist_cnn(), mnist, None),
            ("mnist-mlp 4x512 (random)", _mnist_mlp(), mnist, None),
        ]
    return cases


def _bound(model, x, c, dtype) -> float:
    r = lipbound.local_lipschitz(model, x.to(dtype), EPS, c=c, dtype=dtype, lower=False)
    return float(r.upper_max.max())


def _timed(model, x, c, dtype, rigorous: bool, repeats: int) -> tuple[float, float, float]:
    rounding.RIGOROUS = rigorous
    try:
        value, secs, mb = measure(lambda: _bound(model, x, c, dtype), repeats=repeats)
    finally:
        rounding.RIGOROUS = True
    return value, secs, mb


def _cancellation_violations(rigorous: bool, cases: int = 60) -> int:
    """Calls whose upper bound is below the exact rational constant (two-layer nets, cancelling 1e8 weights)."""
    rng = np.random.default_rng(0)
    bad = 0
    rounding.RIGOROUS = rigorous
    try:
        for _ in range(cases):
            n, h = int(rng.integers(1, 5)), int(rng.integers(2, 6))
            w1 = rng.normal(size=(1, n)) * 1e8 + rng.normal(size=(h, n))
            w2 = rng.normal(size=(1, h))
            w2[0, -1] = -w2[0, :-1].sum()
            model = nn.Sequential(nn.Linear(n, h), nn.Linear(h, 1)).double()
            with torch.no_grad():
                model[0].weight.copy_(torch.from_numpy(w1))
                model[1].weight.copy_(torch.from_numpy(w2))
            up = lipbound.local_lipschitz(model, torch.zeros(1, n, dtype=torch.float64), 1.0, lower=False).upper
            g = [sum(Fraction(float(w2[0, j])) * Fraction(float(w1[j, i])) for j in range(h)) for i in range(n)]
            bad += Fraction(up.item()) < sum(abs(v) for v in g)
    finally:
        rounding.RIGOROUS = True
    return bad


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    repeats = 2 if quick else 3
    rows = []
    for name, model, x, c in _cases(quick):
        for dtype in (torch.float32, torch.float64):
            plain, t_plain, _ = _timed(model, x, c, dtype, False, repeats)
            rig, t_rig, mb = _timed(model, x, c, dtype, True, repeats)
            rows.append(
                {
                    "model": name,
                    "dtype": str(dtype).replace("torch.", ""),
                    "params": sum(p.numel() for p in model.parameters()),
                    "upper (rigorous)": rig,
                    "upper (plain)": plain,
                    "looser by": rig / plain - 1,
                    "s rigorous": t_rig,
                    "s plain": t_plain,
                    "time ratio": t_rig / t_plain,
                    "peak MB (rigorous)": mb,
                }
            )
    checks = {
        "cancellation_violations_rigorous": _cancellation_violations(True),
        "cancellation_violations_plain": _cancellation_violations(False),
        "max_time_ratio": max(r["time ratio"] for r in rows),
        "memory_method": MEMORY_METHOD,
    }
    return {"eps": EPS, "rows": rows, "checks": checks}


def to_markdown(result: dict) -> str:
    head = [
        f"## Cost of rigorous floating point (local crown, l_inf, eps {result['eps']:g}; one thread)",
        "",
        "| model | dtype | params | upper (rigorous) | upper (plain) | looser by | s rigorous | s plain | time ratio | "
        "peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        head.append(
            f"| {r['model']} | {r['dtype']} | {r['params']} | {r['upper (rigorous)']:.7g} | {r['upper (plain)']:.7g} | "
            f"{r['looser by']:.1e} | {r['s rigorous']:.3f} | {r['s plain']:.3f} | {r['time ratio']:.2f} | "
            f"{r['peak MB (rigorous)']:.1f} |"
        )
    c = result["checks"]
    head += [
        "",
        f"Cancellation nets (60, exact rational reference): upper below the exact value in "
        f"{c['cancellation_violations_rigorous']} calls rigorous, {c['cancellation_violations_plain']} calls plain. "
        f"Max time ratio {c['max_time_ratio']:.2f}. Memory: {c['memory_method']}.",
    ]
    return "\n".join(head) + "\n"
