"""Certified local bounds through smooth and non-monotone activations (GELU, GELU-tanh, SiLU) beside ReLU, Tanh
and Softplus, on small digits models (sklearn digits, 8x8, 10 classes).

Two architectures per activation ``act``, each trained for ``EPOCHS`` passes (Adam, lr 1e-3, batch 64, seed 0):

* MLP ``64 - 64 - act - 64 - act - 10``;
* CNN ``conv3x3(1->8, pad 1) - act - conv3x3/2(8->16, pad 1) - act - linear(256->10)``.

Per model and l_inf radius ``eps``: ``lipbound.local_lipschitz`` (``crown``, and ``method="interval"``) on ``N``
test images, all 10 logit rows; reported are the means over images and rows of the certified upper bound, the
interval method's upper bound and the attained lower bound (exact gradient norms at points of the box), their
ratio, and seconds per image for the upper bound alone (``lower=False``) and with the lower-bound search. A
second table times one ``relax`` call on 10^5 random intervals per op (the non-monotone ops run three vectorised
bisections).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

import lipbound
from lipbound.ops.catalog import REGISTRY  # noqa: F401  (registers every op)
from lipbound.ops.convex import Softplus
from lipbound.ops.gelu_silu import GELU, GELUTanh, SiLU
from lipbound.ops.relu import ReLU
from lipbound.ops.tanh import Tanh

EPOCHS = 8
ACTS: dict[str, Any] = {
    "ReLU": nn.ReLU,
    "Tanh": nn.Tanh,
    "Softplus": nn.Softplus,
    "GELU": nn.GELU,
    "GELU-tanh": lambda: nn.GELU(approximate="tanh"),
    "SiLU": nn.SiLU,
}


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[500:]], y[perm[500:]], x[perm[:500]], y[perm[:500]]


def _model(arch: str, act) -> nn.Module:
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), act(), nn.Linear(64, 64), act(), nn.Linear(64, 10))
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        act(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        act(),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def _bounds_rows(quick: bool, progress) -> list[dict[str, Any]]:
    xtr, ytr, xte, yte = _digits()
    n_img = 2 if quick else 5
    rows = []
    for arch in ("mlp", "cnn"):
        for name, act in ACTS.items():
            if quick and name not in ("ReLU", "GELU"):
                continue
            torch.manual_seed(0)
            model = _model(arch, act)
            _train(model, xtr, ytr, 1 if quick else EPOCHS)
            model = model.double().eval()
            acc = float((model(xte.double()).argmax(1) == yte).double().mean())
            x0 = xte[:n_img].double()
            for eps in (0.01, 0.05):
                t0 = time.perf_counter()
                lipbound.local_lipschitz(model, x0, eps=eps, norm="inf", lower=False)
                sec = (time.perf_counter() - t0) / n_img
                t0 = time.perf_counter()
                r = lipbound.local_lipschitz(model, x0, eps=eps, norm="inf")
                sec_all = (time.perf_counter() - t0) / n_img
                ri = lipbound.local_lipschitz(model, x0, eps=eps, norm="inf", method="interval", lower=False)
                up, lo, iu = r.upper.mean().item(), r.lower.mean().item(), ri.upper.mean().item()
                rows.append(
                    {
                        "model": arch,
                        "act": name,
                        "test acc": round(acc, 3),
                        "eps": eps,
                        "crown upper": up,
                        "interval upper": iu,
                        "attained lower": lo,
                        "upper / lower": up / lo if lo > 0 else float("inf"),
                        "s / image (upper)": sec,
                        "s / image (with lower)": sec_all,
                    }
                )
                progress(f"activations: {arch} {name} eps={eps}: {up:.4g} (interval {iu:.4g}, lower {lo:.4g})")
    return rows


def _relax_rows(quick: bool) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    n = 10_000 if quick else 100_000
    c = torch.randn(n, generator=g, dtype=torch.float64) * 2
    w = torch.rand(n, generator=g, dtype=torch.float64) * 3
    rows = []
    for name, op in (("ReLU", ReLU()), ("Tanh", Tanh()), ("Softplus", Softplus()), ("GELU", GELU()),
                     ("GELU-tanh", GELUTanh()), ("SiLU", SiLU())):  # fmt: skip
        for dtype in (torch.float64, torch.float32):
            l, u = (c - w).to(dtype), (c + w).to(dtype)
            op.relax(l, u)  # warm-up
            t0 = time.perf_counter()
            lw, lb, uw, ub = op.relax(l, u)
            ms = (time.perf_counter() - t0) * 1e3
            z = torch.linspace(0, 1, 257, dtype=torch.float64)[None] * (u - l).double()[:, None] + l.double()[:, None]
            gap = ((uw - lw).double()[:, None] * z + (ub - lb).double()[:, None]).mean().item()
            rows.append({"op": name, "dtype": str(dtype).removeprefix("torch."), "ms": ms, "mean gap": gap})
    return rows


def run(quick: bool = False, progress=print) -> dict[str, Any]:
    torch.set_num_threads(1)
    return {"bounds": _bounds_rows(quick, progress), "relax": _relax_rows(quick), "threads": 1}


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r[k]) for k in cols) + " |" for r in rows])


def to_markdown(result: dict[str, Any]) -> str:
    return (
        "## activations\n\nLocal l_inf bounds (means over test images and the 10 logit rows) through each "
        "activation, one thread:\n\n"
        + _table(result["bounds"])
        + "\n\nOne `relax` call on random intervals (centre N(0, 4), half-width U(0, 3)); mean gap = mean over the "
        "interval of upper minus lower plane:\n\n" + _table(result["relax"]) + "\n"
    )
