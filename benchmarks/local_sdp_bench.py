"""Local l2 LipSDP (``local_lipschitz(norm=2, method="lipsdp")``) against global LipSDP-Neuron, CROWN and the
attained lower bound.

Per model, one input (the first bundled sample; uniform [0, 1) for the seeded nets) and the row ``c = e_0 - e_1``
(the single output for scalar nets), over eps in :data:`EPS`:

* ``local SDP``: LipSDP-Neuron with per-neuron slope intervals from the CROWN forward bounds on the box;
* ``global row SDP``: the same certified row SDP with every ReLU slope in ``[0, 1]`` (what the local SDP becomes
  when no neuron is stable: the fair global counterpart, computed once per model);
* ``global LipSDP-Neuron``: ``global_lipschitz(model, 2, "lipsdp-neuron").upper * ||c||_2`` (whole map);
* ``CROWN l2``: ``local_lipschitz(norm=2)`` (the Jacobian-graph bound with the l2 norm node);
* ``lower``: the attained lower bound (a gradient norm at a kink-free point of the box).

Every local number is the engine's own (``use_global=False``). SDP solves get :data:`SDP_BUDGET` seconds per solver
stage (SCS and the first-order polish; the certified value is the best found). Columns ``vs global`` are
``local SDP / global LipSDP-Neuron``, ``vs lower`` ``local SDP / lower``.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import torch
from torch import nn

import lipbound
from lipbound.global_bounds import global_lipschitz
from lipbound.local_sdp import local_lipsdp
from lipbound.models import load_bundled, load_samples
from lipbound.problem import make_problem

EPS = (1e-3, 1e-2, 0.05, 0.1, 0.3)
SDP_BUDGET = 10.0
#: rows with eps <= LONG_EPS whose local SDP is more than LONG_GAP above the lower bound are re-solved with this
#: budget, to tell a solver budget shortfall from a loose relaxation
LONG_BUDGET, LONG_EPS, LONG_GAP = 60.0, 0.01, 1.05
BUNDLED = ("simple-mlp-16", "simple-mlp-64", "simple-mlp-128", "simple-mlp-256", "digits-mlp")


def _mlp(sizes: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1]).double().eval()


def cases(quick: bool = False) -> list[tuple[str, nn.Module, torch.Tensor]]:
    names = BUNDLED[:1] if quick else BUNDLED
    out = [(n, load_bundled(n, torch.float64), load_samples(n, torch.float64)[0][:1]) for n in names]
    gen = torch.Generator().manual_seed(0)
    seeded = [((8, 32, 32, 1), 1)] if quick else [((8, 32, 32, 1), 1), ((4, 16, 16, 16, 3), 2)]
    for sizes, seed in seeded:
        x = torch.rand(1, sizes[0], dtype=torch.float64, generator=gen)
        out.append((f"seeded {'-'.join(map(str, sizes))}", _mlp(sizes, seed), x))
    return out


def _row(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m = model(x).shape[1]
    c = torch.zeros(m, dtype=torch.float64)
    c[0] = 1.0
    if m > 1:
        c[1] = -1.0
    return c


def global_row_sdp(model: nn.Module, x: torch.Tensor, c: torch.Tensor) -> float:
    """The row SDP with every slope interval global (``[0, 1]`` for ReLU): unbounded pre-activation bounds."""
    pr = make_problem(model, x, 1.0, None, None, c, torch.float64)
    inf = {}
    for n in pr.graph.nodes:
        for i in n.inputs:
            inf[id(i)] = (
                torch.full((1, *i.shape), -math.inf, dtype=torch.float64),
                torch.full((1, *i.shape), math.inf, dtype=torch.float64),
            )
    up, _ = local_lipsdp(pr.graph, inf, pr.c, None, SDP_BUDGET)
    return float(up[0, 0])


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    r = fn(*args, **kwargs)
    return r, time.perf_counter() - t


def run(quick: bool = False, progress=print) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows = []
    local = lipbound.local_lipschitz
    for name, model, x in cases(quick):
        c = _row(model, x)
        g, t_g = _timed(global_lipschitz, model, 2, "lipsdp-neuron", time_budget=SDP_BUDGET)
        glob = float(g.upper) * float(c.norm())
        grow = global_row_sdp(model, x, c)
        progress(f"local_sdp: {name}: global LipSDP-Neuron {glob:.6g} ({t_g:.1f}s), global row SDP {grow:.6g}")
        for eps in EPS[:2] if quick else EPS:
            kw = {"c": c, "norm": 2, "use_global": False}
            sdp, t_s = _timed(local, model, x, eps, method="lipsdp", lower=False, sdp_time_budget=SDP_BUDGET, **kw)
            crown, t_c = _timed(local, model, x, eps, **kw)
            info = sdp.details["lipsdp"][0]
            s, low, cr = float(sdp.upper), float(crown.lower), float(crown.upper)
            rows.append(
                {
                    "model": name,
                    "eps": eps,
                    "unstable": int(crown.details["unstable_neurons"]),
                    "local_sdp": s,
                    "sdp_s": t_s,
                    "sdp_solver": info.get("solver") or info.get("status"),
                    "global_row_sdp": grow,
                    "global_lipsdp_neuron": glob,
                    "global_s": t_g,
                    "crown_l2": cr,
                    "crown_s": t_c,
                    "lower": low,
                    "vs_global": s / glob,
                    "vs_global_row": s / grow,
                    "vs_lower": s / low if low > 0 else math.inf,
                    "crown_vs_lower": cr / low if low > 0 else math.inf,
                }
            )
            progress(f"local_sdp: {name} eps={eps:g}: sdp {s:.6g} ({t_s:.1f}s) crown {cr:.6g} lower {low:.6g}")
            if not quick and eps <= LONG_EPS and not s <= LONG_GAP * low:
                kw2 = {**kw, "sdp_time_budget": LONG_BUDGET}
                long, t_l = _timed(local, model, x, eps, method="lipsdp", lower=False, **kw2)
                rows[-1].update(local_sdp_long=float(long.upper), sdp_long_s=t_l)
                progress(f"local_sdp: {name} eps={eps:g}: sdp with {LONG_BUDGET:g}s budget {float(long.upper):.6g}")
    return {"eps": list(EPS), "sdp_budget_s": SDP_BUDGET, "long_budget_s": LONG_BUDGET, "rows": rows}


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        "## local_sdp: local l2 LipSDP vs global LipSDP-Neuron, CROWN l2 and the attained lower bound",
        "",
        f"Row c = e0 - e1 (scalar nets: the output), one input, l2 box of radius eps; SDP budget "
        f"{res['sdp_budget_s']:g} s per solver stage; one thread. Ratios: local SDP / global LipSDP-Neuron, "
        "local SDP / lower, CROWN / lower.",
        "",
        "| model | eps | unstable | local SDP | s | global row SDP | global LipSDP-Neuron | CROWN l2 | s | lower "
        "| SDP/global | SDP/lower | CROWN/lower |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['model']} | {r['eps']:g} | {r['unstable']} | {r['local_sdp']:.6g} | {r['sdp_s']:.1f} "
            f"| {r['global_row_sdp']:.6g} | {r['global_lipsdp_neuron']:.6g} | {r['crown_l2']:.6g} | {r['crown_s']:.1f} "
            f"| {r['lower']:.6g} | {r['vs_global']:.4f} | {r['vs_lower']:.4f} | {r['crown_vs_lower']:.4f} |"
        )
    longs = [r for r in res["rows"] if "local_sdp_long" in r]
    if longs:
        lines += [
            "",
            f"Re-solved with {res['long_budget_s']:g} s per solver stage (eps <= {LONG_EPS:g}, local SDP > "
            f"{LONG_GAP:g} x lower):",
            "",
            "| model | eps | local SDP (short) | local SDP (long) | s | lower | long/lower |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in longs:
            lines.append(
                f"| {r['model']} | {r['eps']:g} | {r['local_sdp']:.6g} | {r['local_sdp_long']:.6g} "
                f"| {r['sdp_long_s']:.1f} | {r['lower']:.6g} | {r['local_sdp_long'] / r['lower']:.4f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(to_markdown(run(quick="--quick" in sys.argv)))
