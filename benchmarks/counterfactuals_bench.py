"""Robust counterfactuals benchmark (Hamman et al. 2023 protocol): German credit and breast cancer.

Per data set: the bundled base MLP d-128-128-2, every test point it rejects (m(x) < 1/2) as a factual, 50 changed
models retrained from other seeds (same architecture, data and schedule), and the methods closest counterfactual
(CC, l1 and l2), Wachter, nearest neighbour, T-Rex:I (from CC l1 / l2) and T-Rex:NN, with tau = 0.75,
sigma = 0.05, k = 1000. Reported per method: mean l1/l2 cost, validity under m, robust validity (share of
(counterfactual, changed model) pairs still favourable), LOF (mean +1/-1), mean Stability R, the share of
counterfactuals with a non-trivial certified guarantee and its median bound p (eps = tau - 1/2), the observed
failure rate of the changed models on those counterfactuals, how often assumption (A) M_j(x') >= mu(x') holds
there, and seconds per counterfactual. Plot: cost vs robust validity (``counterfactuals_cost_vs_rv.png``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lipbound.counterfactuals import changed_models, load_base_model, load_data
from lipbound.counterfactuals.protocol import ProtocolSettings, run_protocol

RESULTS = Path(__file__).resolve().parent / "results"
PLOT = "counterfactuals_cost_vs_rv.png"
DATASETS = ("german", "breast_cancer")


def _rows(result, suffix: str, keep: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    out = []
    for row in result.table():
        if keep is not None and row["method"] not in keep:
            continue
        name = row["method"]
        if name in ("closest", "trex-i"):
            name = f"{name}-{suffix}"
        out.append({**row, "method": name})
    return out


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    log = progress or (lambda _m: None)
    n_fact = 10 if quick else None
    s2 = ProtocolSettings(k=200 if quick else 1000, n_changed=5 if quick else 50, trex_steps=20 if quick else 100)
    out: dict[str, Any] = {"settings": {**s2.__dict__, "factuals": "all rejected test points"}, "datasets": {}}
    for name in DATASETS:
        t0 = time.perf_counter()
        data, model = load_data(name), load_base_model(name)
        changed = changed_models(data, s2.n_changed, s2.changed_width, first_seed=1000 + s2.seed)
        t_changed = time.perf_counter() - t0
        log(f"{name}: {len(changed)} changed models in {t_changed:.1f} s")
        r2 = run_protocol(
            model,
            data,
            ["closest", "wachter", "nn", "trex-i", "trex-nn"],
            n_fact,
            s2,
            changed,
            progress=lambda m, name=name: log(f"{name} l2: {m}"),
        )
        s1 = ProtocolSettings(**{**s2.__dict__, "norm": 1})
        r1 = run_protocol(
            model,
            data,
            ["closest", "trex-i"],
            n_fact,
            s1,
            changed,
            progress=lambda m, name=name: log(f"{name} l1: {m}"),
        )
        with torch.no_grad():
            acc = [float((m(data.x_test.float()).argmax(1) == data.y_test).double().mean()) for m in changed]
        out["datasets"][name] = {
            "n_factuals": int(r2.factuals.shape[0]),
            "dim": int(data.x.shape[1]),
            "changed_models_seconds": t_changed,
            "changed_models_test_accuracy": [min(acc), sum(acc) / len(acc), max(acc)],
            "rows": _rows(r1, "l1") + _rows(r2, "l2"),
            "seconds": time.perf_counter() - t0,
            "gamma_global": next(
                (
                    ev.details["guarantee"].get("gamma_global")
                    for ev in r2.evaluations.values()
                    if "guarantee" in ev.details
                ),
                None,
            ),
        }
        log(f"{name}: done in {out['datasets'][name]['seconds']:.0f} s")
    _plot(out, RESULTS / PLOT)
    out["plot"] = PLOT
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    sets = result["datasets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.8))
    for ax, (name, ds) in zip(axes if len(sets) > 1 else [axes], sets.items(), strict=True):
        for row in ds["rows"]:
            x, y = row["cost_l1"], 100 * row["robust_validity"]
            marker = "*" if row["method"].startswith("trex") else "o"
            ax.scatter(x, y, s=70 if marker == "*" else 40, marker=marker)
            ax.annotate(row["method"], (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax.set_title(f"{name} ({ds['n_factuals']} factuals, 50 changed models)")
        ax.set_xlabel("mean l1 cost")
        ax.set_ylabel("robust validity (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "## Robust counterfactuals (T-Rex, certified guarantee)",
        "",
        f"tau = {s['tau']}, sigma = {s['sigma']}, k = {s['k']}, {s['n_changed']} changed models (seeds), "
        f"T-Rex:I {s['trex_steps']} steps of {s['trex_step']}. Factuals: {s['factuals']}. "
        "robust = share of (counterfactual, changed model) pairs still favourable; guar. = share with a "
        "non-trivial certified guarantee (R >= tau, p < 1); p = median bound on P(M(x') < 1/2) under "
        "assumption (A); fail = observed failure rate of the changed models on those counterfactuals; "
        "(A) = share of those (counterfactual, changed model) pairs satisfying M_j(x') >= mu(x').",
        "",
    ]
    for name, ds in result["datasets"].items():
        acc = ds["changed_models_test_accuracy"]
        lines += [
            f"### {name} (d = {ds['dim']}, {ds['n_factuals']} factuals, changed-model test accuracy "
            f"{acc[0]:.3f}-{acc[2]:.3f}, certified global gamma {ds['gamma_global'] or float('nan'):.3f}, "
            f"{ds['seconds']:.0f} s)",
            "",
            "| method | cost l1 | cost l2 | validity | robust validity | LOF | R | guar. | p | fail | (A) | s/CF |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ds["rows"]:
            g = r.get("guarantee_nontrivial", 0.0)
            lines.append(
                f"| {r['method']} | {r['cost_l1']:.3f} | {r['cost_l2']:.3f} | {100 * r['validity']:.0f}% "
                f"| {100 * r['robust_validity']:.1f}% | {r['lof']:+.2f} | {r['stability']:.3f} | {100 * g:.0f}% "
                f"| {r['guarantee_p_median']:.1e} | "
                + (
                    f"{100 * r['observed_failure_where_guaranteed']:.2f}% | {100 * r['assumption_A_holds']:.1f}% "
                    if "assumption_A_holds" in r
                    else "- | - "
                )
                + f"| {r['seconds_per_cf']:.3f} |"
            )
        lines.append("")
    lines.append(f"![cost vs robust validity]({result.get('plot', PLOT)})")
    return "\n".join(lines) + "\n"
