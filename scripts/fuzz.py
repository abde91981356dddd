"""Randomised soundness campaign over every bound-producing path of lipbound (``make fuzz``).

Each *case* is drawn from ``(seed, index)`` alone (so ``--seed S --case I`` reproduces it): an architecture (MLP,
CNN, residual MLP/CNN with ReLU, LeakyReLU, tanh, sigmoid, MaxMin, GroupSort, BatchNorm, AvgPool; sometimes zero
biases, inputs on the kinks, large cancelling weights), a box (radius 0, 1e-9 .. 1), a norm (inf, 2, 1), a dtype
setting (float64 model; float32 model bound in float64; float32 model in float32) and ONE path:

* ``local`` / ``local_opt``: :func:`lipbound.local_lipschitz` (crown or interval, plain / alpha-optimised);
* ``jacobian``: :func:`lipbound.jacobian_bounds` (elementwise Jacobian bounds);
* ``monotonicity``: :func:`lipbound.certify_monotonicity`;
* ``bab``: :func:`lipbound.local_lipschitz_bab` (small domain budget);
* ``global``: :func:`lipbound.global_lipschitz` (every method, auto included);
* ``exact_relu``: tiny ReLU nets against the exact MILP / region-enumeration references of ``tests/reference``;
* ``rational``: linear / ReLU / LeakyReLU / BatchNorm / constant-scaling MLPs (with cancelling weights) against
  gradients computed exactly in rational arithmetic (``fractions``) at sampled points.

Checks (a failed one is a *violation*, reported with its reproducer):

* ``upper >= ||grad c^T f(x)||_*`` at sampled differentiable points of the box (reference gradients by float64
  autograd on the float64 copy of the model, which is the same real-number network; exact rationals for
  ``rational``), and ``upper >= exact`` where the exact value is known;
* ``lo <= grad <= hi`` (Jacobian bounds) and certified monotonicity never contradicted by a sampled derivative;
* ``lower <= upper``, ``lower <= exact``, and ``lower`` reproduced by autograd at ``lower_point``: inside the box, at
  a point where no piecewise-linear pre-activation is on its kink;
* no exception other than a documented refusal (:class:`lipbound.errors.LipboundError`) escapes.

Usage: ``python scripts/fuzz.py --cases 10000 --seed 0`` (resumable: finished cases are kept in ``--state`` and
skipped on a re-run), ``python scripts/fuzz.py --seed 0 --case 123 -v`` to replay one case.
Writes ``benchmarks/results/fuzz.json`` and ``fuzz.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import traceback
from collections import Counter, defaultdict
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reference.exact import exact_by_enumeration, exact_local_lipschitz_milp  # noqa: E402
from tests.reference.nets import Residual, activation, randomize  # noqa: E402

import lipbound  # noqa: E402
from lipbound.errors import LipboundError  # noqa: E402
from lipbound.nn import GroupSort, MaxMin  # noqa: E402

torch.set_num_threads(1)
getcontext().prec = 60

PATHS = ("local", "local_opt", "jacobian", "monotonicity", "bab", "global", "exact_relu", "rational")
WEIGHTS = (0.28, 0.05, 0.13, 0.08, 0.07, 0.09, 0.12, 0.18)
NORMS = ("inf", "2", "1")
ACTS = ("relu", "leaky_relu", "tanh", "sigmoid", "maxmin", "groupsort")
GLOBAL_METHODS = ("product", "liplt", "eclipse-fast", "lipsdp-layer", "lipsdp-neuron", "lipsdp-nsr", "auto")
RTOL64 = 1e-9  # sampled float64 gradients vs certified bounds (their own rounding is ~1e-14 on these nets)
TOL_LOWER = {torch.float64: 1e-7, torch.float32: 1e-3}  # lower reproduced at lower_point


# ----------------------------------------------------------------------------------------------------------------
# case generation
# ----------------------------------------------------------------------------------------------------------------


def case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def draw_config(seed: int, index: int) -> dict:
    """Everything of case ``index`` (JSON-serialisable); the model is rebuilt from it by :func:`build_model`."""
    rng = case_rng(seed, index)
    path = str(rng.choice(PATHS, p=np.array(WEIGHTS) / sum(WEIGHTS)))
    cfg: dict = {"seed": seed, "index": index, "path": path, "model_seed": int(rng.integers(0, 2**31))}
    cfg["norm"] = str(rng.choice(NORMS))
    cfg["dtype"] = str(rng.choice(["f64", "f64", "f32->f64", "f32"]))
    cfg["zero_bias"] = bool(rng.random() < 0.15)
    cfg["on_kinks"] = bool(cfg["zero_bias"] and rng.random() < 0.6)  # x0 = 0: every neuron tied
    r = rng.random()
    cfg["eps"] = 0.0 if r < 0.08 else 1e-9 if r < 0.14 else float(10.0 ** rng.uniform(-3, 0))
    cfg["batch"] = int(rng.integers(1, 3))
    cfg["out_dim"] = int(rng.integers(1, 4))
    cfg["direction"] = str(rng.choice(["none", "vector", "margin"]))
    cfg["cancel"] = bool(rng.random() < 0.12)
    if path == "exact_relu":
        cfg["kind"] = "mlp"
        cfg["act"] = "relu"
        cfg["in_dim"] = int(rng.integers(1, 4))
        cfg["widths"] = [int(w) for w in rng.integers(1, 7, size=int(rng.integers(1, 3)))]
        cfg["dtype"] = str(rng.choice(["f64", "f32->f64"]))
        cfg["cancel"] = False
        if cfg["eps"] < 1e-3:
            cfg["eps"] = float(10.0 ** rng.uniform(-2, 0))
        cfg["sub"] = str(rng.choice(["crown", "interval", "opt", "bab"]))
    elif path == "rational":
        cfg["kind"] = "mlp"
        cfg["act"] = str(rng.choice(["linear", "relu", "leaky_relu"]))
        cfg["in_dim"] = int(rng.integers(1, 5))
        cfg["widths"] = [int(w) for w in rng.integers(1, 7, size=int(rng.integers(1, 3)))]
        cfg["batchnorm"] = bool(rng.random() < 0.3)
        cfg["scale_const"] = bool(rng.random() < 0.3)
        cfg["cancel"] = bool(rng.random() < 0.5)
        cfg["sub"] = str(rng.choice(["crown", "interval", "opt"]))
    elif path == "global":
        cfg["kind"] = str(rng.choice(["mlp", "mlp", "cnn"]))
        cfg["act"] = str(rng.choice(["relu", "leaky_relu", "tanh", "sigmoid", "maxmin", "groupsort"]))
        cfg["norm"] = str(rng.choice(["2", "2", "inf"]))
        cfg["method"] = str(rng.choice(GLOBAL_METHODS))
        cfg["dtype"] = str(rng.choice(["f64", "f32"]))
        cfg["cancel"] = False
    else:
        cfg["kind"] = str(rng.choice(["mlp", "mlp", "cnn", "resmlp", "rescnn"]))
        cfg["act"] = str(rng.choice(ACTS))
        if path == "bab":
            cfg["act"] = str(rng.choice(["relu", "leaky_relu", "maxmin"]))
            cfg["kind"] = str(rng.choice(["mlp", "mlp", "resmlp"]))
    if path in ("local", "jacobian", "monotonicity"):
        cfg["method"] = str(rng.choice(["crown", "interval"]))
    if cfg["kind"] != "mlp" or path not in ("exact_relu", "rational"):
        cfg["in_dim"] = int(rng.integers(1, 6))
        cfg["widths"] = [int(w) for w in rng.integers(1, 9, size=int(rng.integers(1, 4)))]
        cfg["batchnorm"] = bool(rng.random() < 0.3)
    cfg["img"] = [int(rng.integers(1, 3)), int(rng.integers(3, 6)), int(rng.integers(3, 6))]
    cfg["conv"] = {
        "channels": [int(ch) for ch in rng.integers(1, 4, size=int(rng.integers(1, 3)))],
        "stride": int(rng.integers(1, 3)),
        "padding": int(rng.integers(0, 2)),
        "pool": bool(rng.random() < 0.5),
    }
    cfg["group"] = int(rng.choice([2, 3, 4]))
    cfg["slope"] = float(rng.choice([0.01, 0.25, -0.5, 2.0]))
    return cfg


def _act(cfg: dict) -> nn.Module:
    a = cfg["act"]
    if a == "groupsort":
        return GroupSort(cfg["group"])
    if a == "maxmin":
        return MaxMin()
    if a == "linear":
        return nn.Identity()
    if a == "leaky_relu":
        return nn.LeakyReLU(cfg["slope"])
    return activation(a)


def _width(w: int, cfg: dict) -> int:
    g = cfg["group"] if cfg["act"] == "groupsort" else 2 if cfg["act"] == "maxmin" else 1
    return max(g, -(-w // g) * g)


class Scale(nn.Module):
    """``x * a + b`` with Python-float constants (traced as graph constants)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        return x * self.a + self.b


def build_model(cfg: dict) -> tuple[nn.Module, tuple[int, ...]]:
    """The case's float64 model (eval mode) and its input shape (before any float32 cast)."""
    rng = np.random.default_rng(cfg["model_seed"])
    kind, out = cfg["kind"], cfg["out_dim"]
    layers: list[nn.Module] = []
    if kind in ("mlp", "resmlp"):
        shape: tuple[int, ...] = (cfg["in_dim"],)
        prev = cfg["in_dim"]
        if kind == "mlp":
            for w in cfg["widths"]:
                w = _width(w, cfg)
                layers.append(nn.Linear(prev, w))
                if cfg.get("batchnorm") and rng.random() < 0.5:
                    layers.append(nn.BatchNorm1d(w))
                if cfg.get("scale_const") and rng.random() < 0.5:
                    layers.append(Scale(float(rng.choice([0.7, -1.3, 0.1])), float(rng.choice([0.0, 0.3]))))
                layers.append(_act(cfg))
                prev = w
        else:
            w = _width(max(2, cfg["widths"][0]), cfg)
            layers.append(nn.Linear(prev, w))
            for _ in range(len(cfg["widths"])):
                body = nn.Sequential(nn.Linear(w, w), _act(cfg), nn.Linear(w, w))
                layers.append(Residual(body))
            layers.append(_act(cfg))
            prev = w
        layers.append(nn.Linear(prev, out))
    else:
        shape = tuple(cfg["img"])
        cc = cfg["conv"]
        c_prev = shape[0]
        for i, ch in enumerate(cc["channels"]):
            ch = _width(ch, cfg)
            if kind == "rescnn" and i > 0:
                layers.append(
                    Residual(
                        nn.Sequential(
                            nn.Conv2d(c_prev, c_prev, 3, padding=1), _act(cfg), nn.Conv2d(c_prev, c_prev, 3, padding=1)
                        )
                    )
                )
                continue
            stride, pad = (cc["stride"], cc["padding"]) if i == 0 and kind == "cnn" else (1, 1)
            layers.append(nn.Conv2d(c_prev, ch, 3 if min(shape[1:]) >= 3 else 1, stride=stride, padding=pad))
            if cfg.get("batchnorm"):
                layers.append(nn.BatchNorm2d(ch))
            layers.append(_act(cfg))
            c_prev = ch
        probe = nn.Sequential(*layers).double().eval()
        with torch.no_grad():
            s = tuple(probe(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
        if cc["pool"] and min(s[1:]) >= 2:
            layers.append(nn.AvgPool2d(2))
            s = (s[0], s[1] // 2, s[2] // 2)
        layers += [nn.Flatten(), nn.Linear(int(np.prod(s)), out)]
    model = randomize(nn.Sequential(*layers), cfg["model_seed"])
    with torch.no_grad():
        lin = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if cfg["zero_bias"]:
            for m in lin:
                if m.bias is not None:
                    m.bias.zero_()
            for m in model.modules():
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    m.bias.zero_()
                    m.running_mean.zero_()
        if cfg["cancel"] and len(lin) >= 2 and isinstance(lin[0], nn.Linear):
            _cancelling(lin[0], lin[1], rng)
    if cfg["dtype"] != "f64":
        model = model.float()
    return model.eval(), shape


def _cancelling(first: nn.Linear, second: nn.Linear, rng: np.random.Generator) -> None:
    """Rows of ``first`` in pairs ``A v + d_1``, ``A v + d_2`` (A ~ 1e8) and ``second`` taking their difference:
    entries ~1e8 whose product is O(1) (the exact value needs every bit of the sums)."""
    h, n = first.weight.shape
    big = float(10.0 ** rng.uniform(6, 8.5))
    v = torch.tensor(rng.normal(size=n))
    for i in range(0, h - 1, 2):
        first.weight[i] = big * v + torch.tensor(rng.normal(size=n))
        first.weight[i + 1] = big * v + torch.tensor(rng.normal(size=n))
        if first.bias is not None:
            first.bias[i] = first.bias[i + 1] = float(rng.normal())
        second.weight[:, i] = torch.tensor(rng.normal(size=second.weight.shape[0]))
        second.weight[:, i + 1] = -second.weight[:, i]


def build_box(cfg: dict, shape: tuple[int, ...], dt: torch.dtype) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(cfg["model_seed"] + 1)
    x0 = torch.tensor(rng.normal(size=(cfg["batch"], *shape)), dtype=torch.float64)
    if cfg["on_kinks"]:
        x0.zero_()
    x0 = x0.to(dt)
    eps = torch.tensor(cfg["eps"], dtype=dt)
    return x0 - eps, x0 + eps


def build_direction(cfg: dict, m: int, dt: torch.dtype) -> Tensor | None:
    rng = np.random.default_rng(cfg["model_seed"] + 2)
    if cfg["direction"] == "none" or (m == 1 and cfg["direction"] == "margin"):
        return None
    if cfg["direction"] == "vector":
        return torch.tensor(rng.normal(size=m), dtype=dt)
    c = torch.zeros(m, dtype=dt)
    i, j = rng.choice(m, 2, replace=False)
    c[i], c[j] = 1.0, -1.0
    return c


# ----------------------------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------------------------


def dual(g: Tensor, norm: str) -> Tensor:
    """Dual norm over the last dims: l1 for inf, l2 for 2, l_inf for 1 (``g``: ``(..., d)``)."""
    if norm == "inf":
        return g.abs().sum(-1)
    if norm == "2":
        return g.norm(dim=-1)
    return g.abs().amax(-1)


def rows_of(c: Tensor | None, m: int, dt=torch.float64) -> Tensor:
    """``(K, m)`` output directions: ``c`` or the identity rows."""
    return torch.eye(m, dtype=dt) if c is None else c.to(dt).reshape(1, m)


def kink_free(model64: nn.Module, x: Tensor, rtol: float = 1e-10) -> Tensor:
    """``(N,)``: no ReLU / LeakyReLU input and no GroupSort/MaxMin group tie within ``rtol`` (relative to the
    layer's largest magnitude) at ``x`` that *moves* with ``x``: the network is differentiable there (an independent
    check). A tie that holds on a whole neighbourhood (two identical neurons, a dead pre-activation) is harmless:
    max(a, a) = a. "Moves" = the tied quantity differs at ``x +- h v`` (random ``v``, ``h = 1e-3 (1 + |x|)``)."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    v = torch.rand(flat.shape, generator=torch.Generator().manual_seed(12345), dtype=x.dtype) * 2 - 1
    h = 1e-3 * (1 + flat.abs().amax(1, keepdim=True))
    quantities: list[list[Tensor]] = []

    def hook(mod, inp, _out):
        z = inp[0].detach()
        m = z.shape[0]
        if isinstance(mod, GroupSort):
            g = mod.group_size
            y = z.reshape(m, z.shape[1] // g, g, -1)
            d = (y.unsqueeze(2) - y.unsqueeze(3)).reshape(m, -1)
            off = ~torch.eye(g, dtype=torch.bool).reshape(1, 1, g, g, 1).expand(m, y.shape[1], g, g, y.shape[3])
            d = d[off.reshape(m, -1)].reshape(m, -1) if g > 1 else torch.ones(m, 1, dtype=z.dtype)
        else:
            d = z.reshape(m, -1)
        scale = 1 + z.reshape(m, -1).abs().amax(1, keepdim=True)
        quantities[-1].append(torch.cat([d, scale], 1))

    hooks = [
        mod.register_forward_hook(hook)
        for mod in model64.modules()
        if isinstance(mod, (nn.ReLU, nn.LeakyReLU, GroupSort))
    ]
    with torch.no_grad():
        for pt in (flat, flat + h * v, flat - h * v):
            quantities.append([])
            model64(pt.reshape(x.shape))
    for hk in hooks:
        hk.remove()
    bad = torch.zeros(n, dtype=torch.bool)
    for at, plus, minus in zip(*quantities, strict=True):
        d, scale = at[:, :-1], at[:, -1:]
        moving = (plus[:, :-1] != d) | (minus[:, :-1] != d)
        bad |= ((d.abs() <= rtol * scale) & moving).any(1)
    return ~bad


def grads(model64: nn.Module, x: Tensor, rows: Tensor) -> Tensor:
    """``(N, K, d)`` gradients of ``rows_k^T f`` at ``x`` (float64 autograd)."""
    out = []
    for k in range(rows.shape[0]):
        xx = x.detach().clone().requires_grad_(True)
        y = model64(xx).reshape(x.shape[0], -1)
        (g,) = torch.autograd.grad((y * rows[k]).sum(), xx)
        out.append(g.reshape(x.shape[0], -1))
    return torch.stack(out, 1)


def sample_points(xl: Tensor, xu: Tensor, n: int, rng: np.random.Generator) -> Tensor:
    """``(B, n, *in)`` float64 points of each box: uniform, plus vertices."""
    lo, hi = xl.double(), xu.double()
    u = torch.tensor(rng.random(size=(n, *lo.shape)), dtype=torch.float64).transpose(0, 1)
    u[:, : n // 4] = u[:, : n // 4].round()
    return lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)


def fr(x: float) -> Fraction:
    return Fraction(float(x))


def fr_vec(t: Tensor) -> list[Fraction]:
    return [Fraction(v) for v in t.double().flatten().tolist()]


def rational_layers(model: nn.Module) -> list[tuple[str, object]]:
    """The MLP as exact rational maps: ("affine", (W rows, b)) and ("act", slope for negative inputs)."""
    ops: list[tuple[str, object]] = []
    for m in model:
        if isinstance(m, nn.Linear):
            w = [fr_vec(r) for r in m.weight.detach()]
            b = fr_vec(m.bias.detach()) if m.bias is not None else [Fraction(0)] * len(w)
            ops.append(("affine", (w, b)))
        elif isinstance(m, nn.BatchNorm1d):
            # y = gamma (x - mean) / sqrt(var + eps) + beta; sqrt to 60 digits (error ~1e-60, far below any margin)
            var = [
                Decimal(Fraction(v).numerator) / Decimal(Fraction(v).denominator)
                for v in m.running_var.double().tolist()
            ]
            eps = Decimal(Fraction(m.eps).numerator) / Decimal(Fraction(m.eps).denominator)
            s = [Fraction(1) / Fraction((v + eps).sqrt()) for v in var]
            g, mu, be = fr_vec(m.weight.detach()), fr_vec(m.running_mean), fr_vec(m.bias.detach())
            n = len(s)
            w = [[g[i] * s[i] if j == i else Fraction(0) for j in range(n)] for i in range(n)]
            ops.append(("affine", (w, [be[i] - g[i] * s[i] * mu[i] for i in range(n)])))
        elif isinstance(m, Scale):
            ops.append(("scale", (fr(m.a), fr(m.b))))
        elif isinstance(m, nn.ReLU):
            ops.append(("act", Fraction(0)))
        elif isinstance(m, nn.LeakyReLU):
            ops.append(("act", fr(m.negative_slope)))
        elif isinstance(m, nn.Identity):
            continue
        else:
            raise TypeError(type(m).__name__)
    return ops


def rational_gradient(ops, x: list[Fraction], c: list[Fraction]) -> tuple[list[Fraction], bool]:
    """Exact gradient of ``c^T f`` at ``x`` and whether ``x`` is off every kink (exact pre-activations)."""
    n = len(x)
    jac = [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]  # d(current)/dx
    v = list(x)
    clean = True
    for kind, p in ops:
        if kind == "affine":
            w, b = p
            v = [
                sum((wi * vi for wi, vi in zip(row, v, strict=False)), Fraction(0)) + bi
                for row, bi in zip(w, b, strict=False)
            ]
            jac = [[sum((row[t] * jac[t][j] for t in range(len(row))), Fraction(0)) for j in range(n)] for row in w]
        elif kind == "scale":
            a, bb = p
            v = [a * vi + bb for vi in v]
            jac = [[a * e for e in r] for r in jac]
        else:
            slope = p
            if any(vi == 0 for vi in v):
                clean = False
            gate = [Fraction(1) if vi > 0 else slope for vi in v]
            v = [vi if vi > 0 else slope * vi for vi in v]
            jac = [[g * e for e in r] for g, r in zip(gate, jac, strict=False)]
    grad = [sum((c[i] * jac[i][j] for i in range(len(c))), Fraction(0)) for j in range(n)]
    return grad, clean


def rational_dual_ok(upper: float, g: list[Fraction], norm: str) -> tuple[bool, float]:
    """Whether ``upper >= ||g||_*`` exactly, and the exact norm (as a float, for the report)."""
    u = Fraction(upper)
    if norm == "inf":
        val = sum((abs(e) for e in g), Fraction(0))
        return u >= val, float(val)
    if norm == "1":
        val = max(abs(e) for e in g)
        return u >= val, float(val)
    sq = sum((e * e for e in g), Fraction(0))
    return u >= 0 and u * u >= sq, math.sqrt(float(sq))


# ----------------------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------------------


class Case:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.violations: list[dict] = []
        self.model, self.shape = build_model(cfg)
        self.model64 = copy.deepcopy(self.model).double().eval()
        self.mdt = torch.float64 if cfg["dtype"] == "f64" else torch.float32
        self.cdt = torch.float32 if cfg["dtype"] == "f32" else torch.float64
        self.xl, self.xu = build_box(cfg, self.shape, self.mdt)
        with torch.no_grad():
            self.m = int(self.model64(self.xl.double()[:1]).reshape(1, -1).shape[1])
        self.c = build_direction(cfg, self.m, self.mdt)
        self.rows = rows_of(self.c, self.m)
        self.rng = np.random.default_rng(cfg["model_seed"] + 3)
        self.norm = cfg["norm"]

    def fail(self, check: str, detail: str) -> None:
        self.violations.append({"check": check, "detail": detail})

    def sampled(self, n: int = 24) -> tuple[Tensor, Tensor]:
        """``(B, n, K)`` gradient norms at sampled points and ``(B, n)`` cleanliness."""
        pts = sample_points(self.xl, self.xu, n, self.rng)
        b = pts.shape[0]
        flat = pts.reshape(b * n, *self.shape)
        g = grads(self.model64, flat, self.rows)  # (B n, K, d)
        ok = kink_free(self.model64, flat)
        return dual(g, self.norm).reshape(b, n, -1), ok.reshape(b, n), g.reshape(b, n, g.shape[1], -1)

    def check_upper(self, upper: Tensor, label: str, norms: Tensor, clean: Tensor) -> None:
        up = upper.double().reshape(norms.shape[0], 1, -1)
        bad = (norms > up * (1 + RTOL64) + 1e-12) & clean.unsqueeze(-1)
        if bad.any():
            i = bad.nonzero()[0].tolist()
            self.fail(
                f"{label}: upper >= sampled",
                f"sampled gradient norm {norms[tuple(i)].item():.17g} > upper {up[i[0], 0, i[2]].item():.17g}",
            )

    def check_lower(self, r, label: str, xl: Tensor | None = None, xu: Tensor | None = None) -> None:
        low = r.lower.double().reshape(r.upper.shape[0], -1)
        up = r.upper.double().reshape(low.shape)
        tol = TOL_LOWER[self.cdt]
        if (low > up * (1 + tol) + 1e-12).any():
            self.fail(f"{label}: lower <= upper", f"lower {low.max().item():.17g} > upper {up.max().item():.17g}")
        pt = r.lower_point
        if pt is None:
            return
        pt = pt.double().reshape(low.shape[0], low.shape[1], *self.shape)
        xl = self.xl if xl is None else xl
        xu = self.xu if xu is None else xu
        lo, hi = xl.double().unsqueeze(1), xu.double().unsqueeze(1)
        active = low > 0
        inside = ((pt >= lo) & (pt <= hi)).reshape(low.shape[0], low.shape[1], -1).all(-1)
        if (active & ~inside).any():
            self.fail(f"{label}: lower_point in box", "a witness lies outside the box")
        for k in range(low.shape[1]):
            sel = active[:, k]
            if not sel.any():
                continue
            x = pt[sel, k]
            clean = kink_free(self.model64, x, rtol=1e-12)
            g = grads(self.model64, x, self.rows[k : k + 1])[:, 0]
            val = dual(g, self.norm)
            rep = low[sel, k]
            if (~clean).any():
                self.fail(f"{label}: lower_point differentiable", f"witness on a kink (lower {rep.max().item():.6g})")
            mism = (val - rep).abs() > tol * (1 + val.abs())
            if mism.any():
                j = int(mism.nonzero()[0])
                self.fail(
                    f"{label}: lower reproduced",
                    f"autograd at lower_point gives {val[j].item():.17g}, reported lower {rep[j].item():.17g}",
                )

    # paths -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        getattr(self, "path_" + self.cfg["path"])()

    def _local(self, **kw):
        return lipbound.local_lipschitz(
            self.model,
            x_lower=self.xl,
            x_upper=self.xu,
            norm=self.norm,
            c=self.c,
            dtype=self.cdt,
            lower_samples=8,
            lower_steps=3,
            optimize_steps=5,
            **kw,
        )

    def path_local(self) -> None:
        r = self._local(method=self.cfg["method"])
        norms, clean, _ = self.sampled()
        self.check_upper(r.upper, f"local[{self.cfg['method']}]", norms, clean)
        self.check_lower(r, f"local[{self.cfg['method']}]")

    def path_local_opt(self) -> None:
        r = self._local(optimize=True)
        norms, clean, _ = self.sampled()
        self.check_upper(r.upper, "local[crown+alpha]", norms, clean)
        self.check_lower(r, "local[crown+alpha]")

    def path_jacobian(self) -> None:
        lo, hi = lipbound.jacobian_bounds(
            self.model, x_lower=self.xl, x_upper=self.xu, c=self.c, method=self.cfg["method"], dtype=self.cdt
        )
        _, clean, g = self.sampled()  # g (B, n, K, d)
        lo = lo.double().reshape(g.shape[0], 1, g.shape[2], -1)
        hi = hi.double().reshape(lo.shape)
        tol = RTOL64 * g.abs().amax() + 1e-12
        bad = ((g < lo - tol) | (g > hi + tol)).flatten(2).any(2) & clean
        if bad.any():
            i = bad.nonzero()[0].tolist()
            self.fail("jacobian: lo <= grad <= hi", f"sampled gradient outside the bounds at batch {i[0]}")

    def path_monotonicity(self) -> None:
        r = lipbound.certify_monotonicity(
            self.model,
            x_lower=self.xl,
            x_upper=self.xu,
            c=self.c,
            dtype=self.cdt,
            samples=16,
            bisections=int(self.rng.integers(0, 2)),
        )
        _, clean, g = self.sampled()
        inc = r.increasing.reshape(g.shape[0], 1, g.shape[2], -1)
        dec = r.decreasing.reshape(inc.shape)
        tol = 1e-7 * (1 + g.abs().amax())
        bad = (((g < -tol) & inc) | ((g > tol) & dec)).flatten(2).any(2) & clean
        if bad.any():
            self.fail("monotonicity: certified verdicts", "a sampled derivative contradicts a certified monotonicity")
        if (r.increasing & r.violated_increasing & (r.lower < -1e-6)).any():
            self.fail("monotonicity: certified and violated", "a feature is certified and refuted at once")

    def path_bab(self) -> None:
        r = lipbound.local_lipschitz_bab(
            self.model,
            x_lower=self.xl,
            x_upper=self.xu,
            norm=self.norm,
            c=self.c,
            dtype=self.cdt,
            time_budget=2.0,
            max_domains=int(self.rng.integers(4, 40)),
            batch_domains=4,
            input_split=str(self.rng.choice(["off", "on", "mixed"])),
        )
        norms, clean, _ = self.sampled()
        self.check_upper(r.upper, "bab", norms, clean)
        self.check_lower(r, "bab")

    def path_global(self) -> None:
        m = self.cfg["method"]
        try:
            r = lipbound.global_lipschitz(self.model, norm=self.norm, method=m, input_shape=self.shape, time_budget=5)
        except LipboundError as e:
            self.refused = f"{type(e).__name__}"
            return
        pts = torch.tensor(self.rng.normal(size=(16, *self.shape)) * 2, dtype=torch.float64)
        pts = torch.cat([pts, self.xl.double(), self.xu.double()])
        clean = kink_free(self.model64, pts)
        eye = torch.eye(self.m, dtype=torch.float64)
        jac = grads(self.model64, pts, eye)  # (N, m, d)
        op = torch.linalg.matrix_norm(jac, ord=2) if self.norm == "2" else jac.abs().sum(-1).amax(-1)
        bad = (op > r.upper * (1 + RTOL64) + 1e-12) & clean
        if bad.any():
            self.fail(
                f"global[{r.method}]: upper >= sampled", f"Jacobian norm {op[bad].max().item():.17g} > {r.upper!r}"
            )

    def path_exact_relu(self) -> None:
        lin = [mm for mm in self.model64 if isinstance(mm, nn.Linear)]
        w = [mm.weight.detach().numpy() for mm in lin]
        b = [mm.bias.detach().numpy() for mm in lin]
        cn = None if self.c is None else self.c.double().numpy()
        sub = self.cfg["sub"]
        kw = dict(x_lower=self.xl, x_upper=self.xu, norm=self.norm, dtype=self.cdt)
        for i in range(self.xl.shape[0]):
            lo, hi = self.xl[i].double().numpy(), self.xu[i].double().numpy()
            rows = [cn] if cn is not None else [np.eye(self.m)[k] for k in range(self.m)]
            exact = []
            try:
                for row in rows:
                    if self.norm == "2":
                        exact.append(exact_by_enumeration(w, b, lo, hi, row, "2"))
                    else:
                        exact.append(exact_local_lipschitz_milp(w, b, lo, hi, row, self.norm))
            except Exception as e:  # the reference failed (e.g. a HiGHS solve error): no verdict, not a finding
                self.refused = f"reference failed: {type(e).__name__}: {str(e)[:120]}"
                return
            kw["x_lower"], kw["x_upper"] = self.xl[i : i + 1], self.xu[i : i + 1]
            if sub == "bab":
                r = lipbound.local_lipschitz_bab(self.model, c=self.c, time_budget=2.0, max_domains=30, **kw)
            else:
                r = lipbound.local_lipschitz(
                    self.model,
                    c=self.c,
                    method="interval" if sub == "interval" else "crown",
                    optimize=sub == "opt",
                    lower_samples=8,
                    lower_steps=3,
                    optimize_steps=5,
                    **kw,
                )
            up = r.upper.double().reshape(-1)
            lowv = r.lower.double().reshape(-1)
            for k, e in enumerate(exact):
                if up[k].item() < e * (1 - 1e-7) - 1e-10:
                    self.fail(f"exact_relu[{sub}]: upper >= exact", f"upper {up[k].item():.17g} < exact {e:.17g}")
                if lowv[k].item() > e * (1 + 1e-7) + 1e-10:
                    self.fail(f"exact_relu[{sub}]: lower <= exact", f"lower {lowv[k].item():.17g} > exact {e:.17g}")
            self.check_lower(r, f"exact_relu[{sub}]", kw["x_lower"], kw["x_upper"])

    def path_rational(self) -> None:
        sub = self.cfg["sub"]
        r = self._local(method="interval" if sub == "interval" else "crown", optimize=sub == "opt")
        ops = rational_layers(self.model)
        up = r.upper.double().reshape(self.xl.shape[0], -1)
        pts = sample_points(self.xl, self.xu, 6, self.rng)
        linear = self.cfg["act"] == "linear"
        for bi in range(self.xl.shape[0]):
            for k in range(self.rows.shape[0]):
                crow = fr_vec(self.rows[k])
                best = 0.0
                for p in pts[bi]:
                    g, clean = rational_gradient(ops, fr_vec(p), crow)
                    if not clean:
                        continue
                    ok, val = rational_dual_ok(up[bi, k].item(), g, self.norm)
                    best = max(best, val)
                    if not ok:
                        self.fail(
                            f"rational[{sub}]: upper >= exact gradient",
                            f"exact {val:.17g} > upper {up[bi, k].item():.17g}",
                        )
                        break
                low = float(r.lower.double().reshape(up.shape)[bi, k])
                if linear and low > best * (1 + TOL_LOWER[self.cdt]) + 1e-12:
                    self.fail(f"rational[{sub}]: lower <= exact", f"lower {low:.17g} > exact {best:.17g}")
        self.check_lower(r, f"rational[{sub}]")


def run_case(cfg: dict) -> dict:
    t0 = time.perf_counter()
    rec = {"index": cfg["index"], "path": cfg["path"], "violations": [], "error": None, "refused": None}
    try:
        case = Case(cfg)
        case.run()
        rec["violations"] = case.violations
        rec["refused"] = getattr(case, "refused", None)
    except LipboundError as e:
        rec["refused"] = f"{type(e).__name__}: {str(e)[:200]}"
    except Exception as e:  # an escaped exception on a well-formed model is a finding
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rec["traceback"] = traceback.format_exc()[-1500:]
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    return rec


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def summarise(seed: int, records: list[dict], wall: float) -> dict:
    per_path: dict[str, Counter] = defaultdict(Counter)
    findings = []
    for r in records:
        c = per_path[r["path"]]
        c["cases"] += 1
        c["seconds"] += r["seconds"]
        if r["refused"]:
            c["refused"] += 1
        if r["error"]:
            c["errors"] += 1
        if r["violations"]:
            c["violations"] += 1
        if r["violations"] or r["error"]:
            cfg = draw_config(seed, r["index"])
            findings.append(
                {
                    "index": r["index"],
                    "path": r["path"],
                    "violations": r["violations"],
                    "error": r["error"],
                    "traceback": r.get("traceback"),
                    "reproduce": f"python scripts/fuzz.py --seed {seed} --case {r['index']} -v",
                    "config": cfg,
                }
            )
    return {
        "seed": seed,
        "cases": len(records),
        "violating_cases": sum(1 for r in records if r["violations"]),
        "error_cases": sum(1 for r in records if r["error"]),
        "refused_cases": sum(1 for r in records if r["refused"]),
        "case_seconds": round(sum(r["seconds"] for r in records), 1),
        "wall_seconds_this_run": round(wall, 1),
        "per_path": {p: {k: (round(v, 1) if k == "seconds" else v) for k, v in per_path[p].items()} for p in PATHS},
        "findings": findings,
    }


def to_markdown(s: dict) -> str:
    lines = [
        "# Soundness fuzz campaign (`make fuzz`)",
        "",
        f"Seed {s['seed']}: **{s['cases']} cases, {s['violating_cases']} with violations, {s['error_cases']} with "
        f"escaped exceptions**, {s['refused_cases']} refused with a documented error; "
        f"{s['case_seconds']} s of case time (one thread, shared machine).",
        "",
        "| path | cases | violations | escaped exceptions | refused | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p, c in s["per_path"].items():
        lines.append(
            f"| {p} | {c.get('cases', 0)} | {c.get('violations', 0)} | {c.get('errors', 0)} | {c.get('refused', 0)} "
            f"| {c.get('seconds', 0)} |"
        )
    lines += ["", "Checks: see the docstring of `scripts/fuzz.py`.", ""]
    if s["findings"]:
        lines += ["## Findings", ""]
        for f in s["findings"][:50]:
            what = "; ".join(f"{v['check']}: {v['detail']}" for v in f["violations"]) or f["error"]
            lines.append(f"- case {f['index']} ({f['path']}): {what}. Reproduce: `{f['reproduce']}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index (split a campaign into chunks)")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="only write the report from these states")
    ap.add_argument("--case", type=int, default=None, help="replay one case (prints its config and result)")
    ap.add_argument("--state", type=Path, default=None, help="JSON-lines file of finished cases (resume)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.case is not None:
        cfg = draw_config(a.seed, a.case)
        print(json.dumps(cfg, indent=1))
        rec = run_case(cfg)
        print(json.dumps(rec, indent=1))
        return 1 if rec["violations"] or rec["error"] else 0
    state = a.state or Path(f"/tmp/lipbound-fuzz-seed{a.seed}-from{a.start}.jsonl")
    done: dict[int, dict] = {}
    for f in a.merge if a.merge is not None else [state]:
        if f.exists():
            for line in f.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    done[r["index"]] = r
    t0 = time.perf_counter()
    if a.merge is not None:
        s = _write(a, done, t0)
        print(to_markdown(s))
        return 1 if s["violating_cases"] or s["error_cases"] else 0
    with state.open("a") as fh:
        for i in range(a.start, a.cases):
            if i in done:
                continue
            rec = run_case(draw_config(a.seed, i))
            done[i] = rec
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            if a.verbose or rec["violations"] or rec["error"]:
                print(i, rec["path"], rec["seconds"], rec["violations"] or rec["error"] or "", flush=True)
            if (i + 1) % 200 == 0:
                print(f"{i + 1}/{a.cases} cases, {time.perf_counter() - t0:.0f} s", flush=True)
                _write(a, done, t0)
    s = _write(a, done, t0)
    print(to_markdown(s))
    return 1 if s["violating_cases"] or s["error_cases"] else 0


def _write(a, done: dict, t0: float) -> dict:
    recs = [done[i] for i in sorted(done) if i < a.cases]
    s = summarise(a.seed, recs, time.perf_counter() - t0)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(s, indent=1))
    a.out.with_suffix(".md").write_text(to_markdown(s))
    return s


if __name__ == "__main__":
    raise SystemExit(main())
