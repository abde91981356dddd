"""``lipbound counterfactual MODEL --data german|breast_cancer|FILE.csv --method ...``: robust counterfactuals.

For the test points MODEL rejects, generate counterfactuals with each method, retrain ``--changed-models`` MLPs
(other seeds) and print per method: cost (l1, l2), validity under MODEL, robust validity under the retrained
models, LOF realism, mean Stability, and the certified guarantee (share of counterfactuals where it is
non-trivial, median bound p on the failure probability under assumption (A), see ``stability_guarantee``).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from lipbound.counterfactuals.bundled import BASE_MODELS, load_base_model, register_base_models
from lipbound.counterfactuals.datasets import TabularData, load_data
from lipbound.counterfactuals.protocol import ProtocolResult, ProtocolSettings, parse_methods, run_protocol
from lipbound.errors import InvalidInputError, LipboundError, ModelLoadError
from lipbound.models import load_bundled

EXIT_USER_ERROR = 2


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


def load_model(spec: str, data: TabularData, weights: Path | None) -> nn.Module:
    """``auto`` (the data set's bundled MLP), ``bundled:<name>``, a TorchScript file, or ``pkg.module:factory``."""
    if spec == "auto":
        if data.name not in BASE_MODELS:
            raise InvalidInputError("MODEL 'auto' needs --data german or breast_cancer; give a model for a CSV")
        return load_base_model(data.name)
    if spec.startswith("bundled:"):
        register_base_models()
        return load_bundled(spec[len("bundled:") :])
    path = Path(spec)
    if path.is_file():
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise ModelLoadError(f"cannot load {spec!r} as a TorchScript archive: {e}") from None
    if ":" in spec:
        mod, attr = spec.split(":", 1)
        try:
            model = getattr(importlib.import_module(mod), attr)()
        except Exception as e:
            raise ModelLoadError(f"cannot build model from factory {spec!r}: {e}") from None
        if weights is not None:
            try:
                model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            except Exception as e:
                raise ModelLoadError(f"cannot load --weights {str(weights)!r} into {spec!r}: {e}") from None
        return model.eval()
    raise ModelLoadError(
        f"cannot load model {spec!r}: use 'auto', 'bundled:<name>', a TorchScript file or 'package.module:factory'"
    )


def render_table(result: ProtocolResult) -> Table:
    t = Table(
        title=f"counterfactuals on {result.data} ({result.factuals.shape[0]} rejected test points)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption="robust: valid under the retrained models; R: Stability; guar.: share with a non-trivial certified "
        "guarantee; p: its median failure bound under assumption (A)",
    )
    for col in ("method", "l1", "l2", "valid", "robust", "LOF", "R", "guar.", "p", "s/CF"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for row in result.table():
        rv = row.get("robust_validity")
        gn = row.get("guarantee_nontrivial")
        t.add_row(
            row["method"],
            f"{row['cost_l1']:.3f}",
            f"{row['cost_l2']:.3f}",
            f"{100 * row['validity']:.0f}%",
            "-" if rv is None else f"{100 * rv:.1f}%",
            f"{row['lof']:+.2f}",
            f"{row['stability']:.3f}",
            "-" if gn is None else f"{100 * gn:.0f}%",
            "-" if gn is None or gn == 0 else f"{row['guarantee_p_median']:.1e}",
            f"{row.get('seconds_per_cf', 0.0):.3f}",
        )
    return t


def save_plot(result: ProtocolResult, path: Path) -> None:
    """Cost (l1) vs robust validity, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for row in result.table():
        if "robust_validity" in row:
            ax.scatter(row["cost_l1"], 100 * row["robust_validity"], s=40)
            ax.annotate(
                row["method"],
                (row["cost_l1"], 100 * row["robust_validity"]),
                fontsize=8,
                xytext=(4, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("mean l1 cost")
    ax.set_ylabel("robust validity (%)")
    ax.set_title(f"{result.data}: cost vs robust validity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def counterfactual(
    model: Annotated[
        str,
        typer.Argument(
            help="'auto' (the bundled MLP of --data), 'bundled:<name>', a TorchScript file, or "
            "'package.module:factory' (with --weights)."
        ),
    ] = "auto",
    data: Annotated[str, typer.Option(help="german, breast_cancer, or a CSV with a 0/1 'label' column.")] = "german",
    method: Annotated[
        str, typer.Option(help="Comma-separated: closest, wachter, nn, trex-i, trex-nn, or 'all'.")
    ] = "all",
    n: Annotated[int, typer.Option("--n", help="Number of rejected test points (factuals); 0 = all.")] = 20,
    tau: Annotated[float, typer.Option(help="Stability threshold of T-Rex (guarantee margin eps = tau - 1/2).")] = 0.75,
    sigma: Annotated[float, typer.Option(help="Std of the Gaussian neighbourhood (features are in [0, 1]).")] = 0.05,
    k: Annotated[int, typer.Option(help="Monte-Carlo samples per Stability estimate.")] = 1000,
    norm: Annotated[int, typer.Option(help="Cost norm of the closest counterfactual (1 or 2).")] = 2,
    changed_models: Annotated[int, typer.Option(help="Retrained models for robust validity (0: skip).")] = 50,
    bootstrap: Annotated[bool, typer.Option(help="Retrain on bootstrap resamples too.")] = False,
    guarantee: Annotated[bool, typer.Option(help="Compute the certified guarantee.")] = True,
    trex_steps: Annotated[int, typer.Option(help="T-Rex:I gradient steps (step 0.01).")] = 100,
    relax_categorical: Annotated[
        bool, typer.Option(help="Treat one-hot/integer features as continuous (the paper's code; not legal records).")
    ] = False,
    weights: Annotated[Path | None, typer.Option(help="State dict for a 'package.module:factory' MODEL.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Monte-Carlo noise and the changed models.")] = 0,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the results as JSON to F ('-': stdout).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Save a cost vs robust-validity PNG to F.")] = None,
) -> None:
    """Robust counterfactuals (Stability, T-Rex:I, T-Rex:NN) with a certified-Lipschitz guarantee."""
    torch.set_num_threads(1)
    try:
        ds = load_data(data)
        net = load_model(model, ds, weights)
        methods = parse_methods(method)
        settings = ProtocolSettings(
            tau=tau,
            sigma=sigma,
            k=k,
            norm=norm,
            trex_steps=trex_steps,
            n_changed=changed_models,
            bootstrap=bootstrap,
            guarantee=guarantee,
            relax_categorical=relax_categorical,
            seed=seed,
        )
        settings.check()
        if n < 0:
            raise InvalidInputError(f"--n must be >= 0, got {n}")
        quiet = json_out == "-"
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=quiet,
            transient=True,
        ) as bar:
            task = bar.add_task("counterfactuals", total=1 + 2 * len(methods))
            result = run_protocol(
                net,
                ds,
                methods,
                n or None,
                settings,
                progress=lambda msg: bar.update(task, advance=1, description=msg),
            )
    except LipboundError as e:
        raise _fail(" ".join(str(e).split())) from None
    payload = result.to_dict(per_row=True)
    if json_out == "-":
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        Console().print(render_table(result))
        if json_out:
            Path(json_out).write_text(json.dumps(payload, indent=1))
    if plot is not None:
        save_plot(result, plot)
