"""``lipbound global MODEL``: compare certified global Lipschitz bounds of a model, one row per method."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lipbound.cli.common import fail, load_cli_model, write_json_atomic
from lipbound.errors import LipboundError
from lipbound.global_bounds import api
from lipbound.global_bounds.api import MAX_LMI_ROWS, METHODS, SDP_METHODS, applicable, lmi_rows, parse_norm
from lipbound.global_bounds.network import extract


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"input shape must look like 3,32,32 (got {text!r})") from None


def global_command(
    model: str = typer.Argument(
        ...,
        help="Model to bound: a .onnx file, a TorchScript .pt file, 'package.module:factory' (with --weights) or "
        "'bundled:<name>'.",
    ),
    norm: str = typer.Option("2", "--norm", help="Norm on input and output: 2 or inf."),
    method: str = typer.Option(
        "all",
        "--method",
        help="product | liplt | eclipse-fast | lipsdp-layer | lipsdp-neuron | lipsdp-nsr | auto | all "
        "(all: every method that applies and fits the size budget).",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Per-sample input shape, e.g. 3,32,32 (required for convolutional models)."
    ),
    weights: Path | None = typer.Option(None, "--weights", help="A state dict (.pt) for a 'module:factory' model."),
) -> None:
    """Certified global Lipschitz upper bounds of MODEL, one row per method (bound, seconds, status).

    Exit codes: 0 when at least one requested method gave a certified bound, 2 for bad input (unknown flag value,
    unreadable model, a method that does not apply to the model), 1 when every requested method failed. With
    ``--json F`` the file is rewritten (atomically) after each method, so an interrupted run keeps what finished;
    ``--json -`` prints the JSON on stdout (the table then goes to stderr).
    """
    to_stdout = json_out is not None and str(json_out) == "-"
    console = Console(stderr=to_stdout)
    choices = (*METHODS, "auto", "all")
    if method not in choices:
        raise fail(f"--method {method!r} is not a method; choose one of {', '.join(choices)}")
    try:
        nrm = parse_norm(norm)
    except LipboundError as e:
        raise fail(f"--norm: {e}") from None
    try:
        loaded, shape = load_cli_model(model, weights, _parse_shape(input_shape))
        net = extract(loaded, shape)
        ok = applicable(net, nrm)
    except LipboundError as e:
        raise fail(str(e)) from None
    if method == "all":
        methods = [m for m in METHODS if ok[m] is None]
    elif method != "auto" and ok[method] is not None:
        raise fail(f"--method {method} does not apply to this model: {ok[method]}")
    else:
        methods = [method]
    rows: list[dict] = []

    def save() -> None:
        if json_out is not None and not to_stdout:
            write_json_atomic(json_out, _payload(model, nrm, rows))

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        for m in methods:
            if method == "all" and m in SDP_METHODS and lmi_rows(net, m) > MAX_LMI_ROWS[m]:
                rows.append({"method": m, "upper": None, "seconds": None, "status": "skipped (too large)"})
                continue
            task = progress.add_task(f"{m} ({len(rows) + 1}/{len(methods)})", total=None)
            try:
                r = api.global_lipschitz(net, norm=nrm, method=m)  # looked up per call (tests patch it)
                status = r.details.get("status", "ok")
                if r.method != m:
                    status = f"fell back to {r.method}"
                rows.append(
                    {"method": m, "upper": r.upper, "seconds": r.seconds, "status": status, "result": r.to_dict()}
                )
            except LipboundError as e:
                rows.append({"method": m, "upper": None, "seconds": None, "status": f"error: {e}"})
            progress.remove_task(task)
            save()
    console.print(_table(rows, nrm, model))
    if to_stdout:
        typer.echo(json.dumps(_payload(model, nrm, rows), indent=2))
    elif json_out is not None:
        console.print(f"wrote {json_out}")
    if not any(r["upper"] is not None and math.isfinite(r["upper"]) for r in rows):
        console.print("[bold red]error:[/] [red]no requested method produced a certified bound[/]")
        raise typer.Exit(1)


def _payload(model: str, norm: str, rows: list[dict]) -> dict:
    return json.loads(json.dumps({"model": model, "norm": norm, "results": rows}, default=str))


def _table(rows: list[dict], norm: str, model: str) -> Table:
    table = Table(title=f"Certified global Lipschitz bounds (l{norm}) of {model}")
    table.add_column("method")
    table.add_column("upper bound", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("status")
    finite = [r["upper"] for r in rows if r["upper"] is not None and math.isfinite(r["upper"])]
    for r in rows:
        up = r["upper"]
        txt = "-" if up is None else f"{up:.6g}"
        if finite and up == min(finite):
            txt = f"[bold green]{txt}[/bold green]"
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        table.add_row(r["method"], txt, sec, str(r["status"]))
    return table
