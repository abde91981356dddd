"""Exact local Lipschitz constants (``lipbound.exact_lipschitz``, MILP) against the certified upper bounds.

Per small ReLU net and l_inf box (one input, the logit margin ``c = e_0 - e_1``, or the single output): the exact
value ``E`` (MILP, HiGHS) and, as ratios ``bound / E``, plain CROWN, CROWN + alpha (``optimize=True``), Branch and
Bound (``local_lipschitz_bab``, a fixed time budget) and the attained lower bound (``local_lipschitz``'s sampled /
ascended lower, and the MILP's own lower, at a kink-free point inside the incumbent's region). Every local bound is
the engine's own (``use_global=False``). Seconds per call (wall clock, one thread).

Nets: the 3-6-5-2 test net (``tests/test_exact.py``, seed 0), the bundled ``simple-mlp-16`` (10-16-16-2), a seeded
10-32-32-32-2 MLP and the bundled ``digits-mlp`` (64-64-32-10) at a small eps, around the first bundled sample
(uniform [0, 1) inputs for the seeded nets).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch
from torch import nn

import lipbound
from lipbound.exact import exact_lipschitz
from lipbound.models import load_bundled, load_samples

BAB_BUDGET = 5.0  # seconds of Branch and Bound per case
EXACT_LIMIT = 120.0


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()


def _mlp(sizes: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1]).double()


def cases(quick: bool = False) -> list[tuple[str, nn.Module, torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(0)
    tiny_x = torch.randn(1, 3, dtype=torch.float64, generator=gen)
    out = [("tiny 3-6-5-2", _tiny(), tiny_x, 0.5)]
    m16 = load_bundled("simple-mlp-16", torch.float64)
    out.append(("simple-mlp-16 (10-2x16-2)", m16, load_samples("simple-mlp-16", torch.float64)[0][:1], 0.3))
    if not quick:
        x32 = torch.rand(1, 10, dtype=torch.float64, generator=gen)
        out.append(("seeded 10-3x32-2", _mlp((10, 32, 32, 32, 2), 1), x32, 0.1))
        dm = load_bundled("digits-mlp", torch.float64)
        out.append(("digits-mlp (64-64-32-10)", dm, load_samples("digits-mlp", torch.float64)[0][:1], 0.02))
    return out


def _timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def run(quick: bool = False, progress=print) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows = []
    for name, model, x, eps in cases(quick):
        m = model(x).shape[1]
        c = torch.zeros(m, dtype=torch.float64)
        c[0] = 1.0
        if m > 1:
            c[1] = -1.0
        ex, t_ex = _timed(lambda: exact_lipschitz(model, x, eps, c=c, time_limit=EXACT_LIMIT))  # noqa: B023
        e = ex.value if ex.value is not None else ex.upper
        kw = {"c": c, "use_global": False}
        crown, t_c = _timed(lambda: lipbound.local_lipschitz(model, x, eps, **kw))  # noqa: B023
        alpha, t_a = _timed(lambda: lipbound.local_lipschitz(model, x, eps, optimize=True, lower=False, **kw))  # noqa: B023
        bab, t_b = _timed(lambda: lipbound.local_lipschitz_bab(model, x, eps, c=c, time_budget=BAB_BUDGET))  # noqa: B023
        row = {
            "net": name,
            "eps": eps,
            "unstable": ex.details["unstable_neurons"],
            "exact": e,
            "status": ex.status,
            "exact_s": t_ex,
            "crown": float(crown.upper) / e,
            "crown_s": t_c,
            "alpha": float(alpha.upper) / e,
            "alpha_s": t_a,
            "bab": float(bab.upper) / e,
            "bab_s": t_b,
            "lower": float(crown.lower) / e,
            "milp_lower": ex.lower / e,
            "milp_lower_from": ex.rows[0]["lower_from"],
        }
        rows.append(row)
        progress(f"exact: {name} eps={eps}: E={e:.6g} ({ex.status}, {t_ex:.2f}s) crown {row['crown']:.4f}x")
    return {"bab_budget_s": BAB_BUDGET, "exact_time_limit_s": EXACT_LIMIT, "rows": rows}


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        "## exact: MILP value vs certified bounds (l_inf, margin e0 - e1)",
        "",
        f"Ratios bound / exact (upper >= 1, lower <= 1); BaB budget {res['bab_budget_s']:g} s per call; one thread.",
        "",
        "| net | eps | unstable | exact | status | exact s | crown | s | crown+alpha | s | BaB | s "
        "| lower (sampled) | lower (MILP) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['net']} | {r['eps']:g} | {r['unstable']} | {r['exact']:.6g} | {r['status']} | {r['exact_s']:.2f} "
            f"| {r['crown']:.4f} | {r['crown_s']:.2f} | {r['alpha']:.4f} | {r['alpha_s']:.2f} | {r['bab']:.4f} "
            f"| {r['bab_s']:.2f} | {r['lower']:.4f} | {r['milp_lower']:.6f} ({r['milp_lower_from']}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(to_markdown(run(quick="--quick" in sys.argv)))
