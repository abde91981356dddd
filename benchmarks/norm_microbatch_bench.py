"""Micro-batch training with BN, GN, GN+WS and BCN+WS (Qiao et al.) on sklearn digits (8x8, 10 classes).

A small CNN ``conv3x3(1->16) - norm - ReLU - conv3x3/2(16->32) - norm - ReLU - linear(512->10)`` is trained at
batch sizes 1, 2 and 64 with the same number of samples seen (``EPOCHS`` passes over the 1297 training images),
Adam with learning rate ``1e-3 sqrt(batch)``, seeds 0 and 1. Reported per norm and batch size: test accuracy on the
500 held-out images (mean over seeds) and, for the seed-0 model, the certified local Lipschitz upper bound
(``lipbound.local_lipschitz``, l_inf box of radius 0.01 around 5 test images, the l_inf -> l_1 norm of the logit
Jacobian rows, max over rows, mean over inputs) beside the attained lower bound.

Norm variants (G = 4 groups, both layers): BN = ``nn.BatchNorm2d``; GN = ``nn.GroupNorm``; GN+WS = ``WSConv2d`` +
``nn.GroupNorm``; BCN+WS = ``WSConv2d`` + ``BatchChannelNorm2d`` (EstBN estimates with rate 0.01 at batch 1 and 2;
ordinary batch statistics at batch 64, as the paper does for large batches).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import lipbound
from lipbound.nn import BatchChannelNorm2d, WSConv2d

EPOCHS = 6
BATCHES = (1, 2, 64)
NORMS = ("BN", "GN", "GN+WS", "BCN+WS")
GROUPS = 4
RESULTS = Path(__file__).resolve().parent / "results"


def load_digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:500], perm[500:]
    return x[train], y[train], x[test], y[test]


def _norm(kind: str, c: int, batch: int) -> nn.Module:
    if kind == "BN":
        return nn.BatchNorm2d(c)
    if kind in ("GN", "GN+WS"):
        return nn.GroupNorm(GROUPS, c)
    return BatchChannelNorm2d(c, num_groups=GROUPS, momentum=0.01 if batch <= 2 else 0.1, estimated=batch <= 2)


def make_cnn(kind: str, batch: int) -> nn.Module:
    conv = WSConv2d if kind.endswith("+WS") else nn.Conv2d
    return nn.Sequential(
        conv(1, 8, 3, padding=1),
        _norm(kind, 8, batch),
        nn.ReLU(),
        conv(8, 16, 3, stride=2, padding=1),
        _norm(kind, 16, batch),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 16, 10),
    )


def train(kind: str, batch: int, seed: int, data, epochs: int) -> tuple[nn.Module, dict]:
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = make_cnn(kind, batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 * math.sqrt(batch))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    nan = False
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(perm) - batch + 1, batch):
            idx = perm[i : i + batch]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            if not torch.isfinite(loss):
                nan = True
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        if nan:
            break
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return model, {"acc": acc, "train_s": time.perf_counter() - t0, "nan": nan}


def certify(model: nn.Module, x0: torch.Tensor) -> dict:
    t0 = time.perf_counter()
    try:
        r = lipbound.local_lipschitz(model.eval(), x0.double(), eps=0.01, lower=True, lower_samples=16)
    except lipbound.errors.LipboundError as e:
        return {"upper": None, "lower": None, "bound_s": time.perf_counter() - t0, "error": str(e)[:160]}
    return {
        "upper": float(r.upper_max.mean()),
        "lower": float(r.lower_max.mean()),
        "bound_s": time.perf_counter() - t0,
    }


def plot(result: dict) -> str:
    """Accuracy and certified bound per norm and batch size -> ``results/norm_microbatch.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    batches = sorted({r["batch"] for r in result["rows"]})
    width = 0.8 / len(NORMS)
    for k, kind in enumerate(NORMS):
        rs = {r["batch"]: r for r in result["rows"] if r["norm"] == kind}
        xs = np.arange(len(batches)) + (k - (len(NORMS) - 1) / 2) * width
        axes[0].bar(xs, [rs[b]["acc_mean"] for b in batches], width, label=kind)
        axes[1].bar(xs, [rs[b].get("upper") or 0.0 for b in batches], width, label=kind)
    for a, title in zip(axes, ("test accuracy (mean over seeds)", "certified local Lipschitz bound"), strict=True):
        a.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
        a.set_title(title)
    axes[0].set_ylim(0, 1)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "norm_microbatch.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    data = load_digits_split()
    epochs = 1 if quick else EPOCHS
    seeds = (0,) if quick else (0, 1)
    batches = (2, 64) if quick else BATCHES
    x0 = data[2][:5]
    rows = []
    for kind in NORMS:
        for batch in batches:
            accs, secs, nans, bound = [], [], 0, {}
            for seed in seeds:
                model, info = train(kind, batch, seed, data, epochs)
                accs.append(info["acc"])
                secs.append(info["train_s"])
                nans += int(info["nan"])
                if seed == 0:
                    bound = certify(model, x0)
            rows.append(
                {
                    "norm": kind,
                    "batch": batch,
                    "acc_mean": float(np.mean(accs)),
                    "accs": accs,
                    "nan_runs": nans,
                    "train_s": float(np.mean(secs)),
                    **bound,
                }
            )
    result = {
        "epochs": epochs,
        "samples_seen": epochs * len(data[1]),
        "seeds": list(seeds),
        "bound_eps": 0.01,
        "rows": rows,
    }
    result["plot"] = plot(result)
    return result


def to_markdown(result: dict) -> str:
    lines = [
        "## Micro-batch training on digits: BN, GN, GN+WS, BCN+WS",
        "",
        f"{result['samples_seen']} samples seen per run ({result['epochs']} epochs), seeds {result['seeds']}; "
        f"test accuracy on 500 images (mean over seeds); certified local Lipschitz upper bound (l_inf box radius "
        f"{result['bound_eps']}, l_inf -> l_1 logit-row norm, max over rows, mean over 5 test images, seed-0 model) "
        "and the attained lower bound. Plot: `norm_microbatch.png`.",
        "",
        "| norm | batch | test acc | accs per seed | NaN runs | train s | certified upper | attained lower | bound s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        up = f"{r['upper']:.4g}" if r.get("upper") is not None else f"refused: {r.get('error', '')}"
        lo = f"{r['lower']:.4g}" if r.get("lower") is not None else "-"
        accs = ", ".join(f"{a:.3f}" for a in r["accs"])
        lines.append(
            f"| {r['norm']} | {r['batch']} | {r['acc_mean']:.3f} | {accs} | {r['nan_runs']} | {r['train_s']:.1f} | "
            f"{up} | {lo} | {r.get('bound_s', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"
