"""``lipbound demo``: local Lipschitz bounds of the bundled digits MLP and CNN on a few shipped test digits.

For each digit x0 and radius eps it reports, for the l_inf -> l_inf operator norm max_k ||grad f_k||_1 over
B_inf(x0, eps) (every logit row k, then the maximum),

* ``crown``: the certified upper bound with linear relaxations on the Jacobian graph,
* ``interval``: the certified RecurJac-style baseline (never below crown in theory, looser in practice),
* ``lower``: the largest gradient norm actually attained at points of the box (a true value, not a bound).

The true local constant lies in [lower, crown]. Writes ``bounds_vs_eps.png`` (log-log, per model) and
``demo.json`` to the output directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from lipbound.graph import trace
from lipbound.local import local_lipschitz
from lipbound.models import bundled_input_shape, load_bundled, load_samples

DEMO_MODELS = ("digits-mlp", "digits-cnn")
TABLE_EPS = 0.01
EPS_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
QUICK_EPS_GRID = (0.003, 0.01)
PLOT_NAME = "bounds_vs_eps.png"


@dataclass
class DemoRow:
    """Bounds for one (model, digit, eps)."""

    model: str
    digit: int
    label: int
    eps: float
    crown: float
    interval: float
    lower: float
    crown_seconds: float
    interval_seconds: float


def _reduce(t: Tensor) -> Tensor:
    """Per input: the value itself (scalar output) or the maximum over output rows (operator norm)."""
    return t.amax(dim=1) if t.ndim == 2 else t


def bound_model(name: str, n_digits: int, eps_values: tuple[float, ...]) -> list[DemoRow]:
    """Crown, interval and lower bounds for the first ``n_digits`` shipped digits at every eps."""
    graph = trace(load_bundled(name), bundled_input_shape(name))
    x, y = load_samples(name)
    x, y = x[:n_digits], y[:n_digits]
    rows: list[DemoRow] = []
    for eps in eps_values:
        rc = local_lipschitz(graph, x, eps, method="crown")
        ri = local_lipschitz(graph, x, eps, method="interval")
        up_c, up_i = _reduce(rc.upper), _reduce(ri.upper)
        low = torch.maximum(_reduce(rc.lower), _reduce(ri.lower))
        for k in range(len(x)):
            rows.append(
                DemoRow(
                    name,
                    k,
                    int(y[k]),
                    float(eps),
                    float(up_c[k]),
                    float(up_i[k]),
                    float(low[k]),
                    float(rc.seconds) / len(x),
                    float(ri.seconds) / len(x),
                )
            )
    return rows


def render_table(rows: list[DemoRow], eps: float) -> Table:
    """A rich table of the rows at radius ``eps``."""
    table = Table(title=f"local Lipschitz bounds (l_inf -> l_inf, max over logits), eps = {eps:g}")
    for col in ("model", "digit", "label", "crown", "interval", "lower", "gap", "crown s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        if r.eps != eps:
            continue
        ratio = r.crown / r.lower if r.lower > 0 else float("inf")
        table.add_row(
            r.model,
            str(r.digit),
            str(r.label),
            f"{r.crown:.4g}",
            f"{r.interval:.4g}",
            f"{r.lower:.4g}",
            f"{ratio:.2f}",
            f"{r.crown_seconds:.3f}",
        )
    return table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def plot(rows: list[DemoRow], path: Path) -> None:
    """Log-log plot of the mean (over digits) crown, interval and lower value versus eps, one panel per model."""
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r.model for r in rows))
    fig = Figure(figsize=(5 * len(models), 4), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, name in zip(axes, models, strict=True):
        mine = [r for r in rows if r.model == name]
        eps_values = sorted({r.eps for r in mine})
        for key, style in (("crown", "o-"), ("interval", "s--"), ("lower", "^:")):
            means = [
                sum(getattr(r, key) for r in mine if r.eps == e) / sum(r.eps == e for r in mine) for e in eps_values
            ]
            ax.plot(eps_values, means, style, label=key)
        n = len({r.digit for r in mine})
        ax.set(xscale="log", yscale="log", xlabel="eps (l_inf radius)", ylabel="local Lipschitz bound")
        ax.set_title(f"{name} (mean over {n} digits)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110)


def run_demo(out_dir: Path | str = "demo-output", quick: bool = False, console: Console | None = None) -> list[DemoRow]:
    """Run the demo: print the table at eps = TABLE_EPS, write the plot and ``demo.json`` to ``out_dir``."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_digits = 2 if quick else 4
    grid = tuple(sorted(set(QUICK_EPS_GRID if quick else EPS_GRID) | {TABLE_EPS}))
    rows: list[DemoRow] = []
    for name in DEMO_MODELS:
        with console.status(f"bounding {name} on {n_digits} digits at {len(grid)} radii"):
            rows += bound_model(name, n_digits, grid)
    console.print(render_table(rows, TABLE_EPS))
    unsound = [r for r in rows if r.crown < r.lower * (1 - 1e-5) or r.interval < r.lower * (1 - 1e-5)]
    if unsound:
        console.print(f"[bold red]warning: {len(unsound)} upper bounds below an attained value[/]")
    plot(rows, out / PLOT_NAME)
    (out / "demo.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    console.print(f"wrote {out / PLOT_NAME} and {out / 'demo.json'}", highlight=False)
    from lipbound.smoothing.demo import smoothing_section  # randomized smoothing (writes smoothing.json)

    smoothing_section(console, out, quick)
    return rows
