"""``lipbound global``: compare certified global Lipschitz bounds of a model (wired into the main CLI by the lead)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lipbound.errors import LipboundError


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
    """Certified global Lipschitz upper bounds of MODEL, one row per method (bound, seconds, status)."""
    from lipbound.cli import load_cli_model, write_json_atomic
    from lipbound.global_bounds.api import MAX_LMI_ROWS, METHODS, SDP_METHODS, applicable, lmi_rows, parse_norm
    from lipbound.global_bounds.api import global_lipschitz as run
    from lipbound.global_bounds.network import extract

    console = Console()
    try:
        nrm = parse_norm(norm)
        loaded, shape = load_cli_model(model, weights, _parse_shape(input_shape))
        net = extract(loaded, shape)
        ok = applicable(net, nrm)
        methods = [m for m in METHODS if ok[m] is None] if method == "all" else [method]
    except LipboundError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    rows = []
    for m in methods:
        if method == "all" and m in SDP_METHODS and lmi_rows(net, m) > MAX_LMI_ROWS[m]:
            rows.append({"method": m, "upper": None, "seconds": None, "status": "skipped (too large)"})
            continue
        with console.status(f"running {m} ...", spinner="dots"):
            try:
                r = run(net, norm=nrm, method=m)
                status = r.details.get("status", "ok")
                if r.method != m:
                    status = f"fell back to {r.method}"
                rows.append(
                    {"method": m, "upper": r.upper, "seconds": r.seconds, "status": status, "result": r.to_dict()}
                )
            except LipboundError as e:
                rows.append({"method": m, "upper": None, "seconds": None, "status": f"error: {e}"})
    table = Table(title=f"Certified global Lipschitz bounds (l{nrm}) of {model}")
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
    console.print(table)
    if json_out is not None:
        write_json_atomic(json_out, json.loads(json.dumps({"model": model, "norm": nrm, "results": rows}, default=str)))
        console.print(f"wrote {json_out}")
