"""``lipbound exact MODEL --x0 X.npy --eps E``: exact local Lipschitz constants of small ReLU networks (MILP).

For every input x0_i, :func:`lipbound.exact_lipschitz` solves

    L_i = max_{x in B_p(x0_i, E)} ||J(x)^T c||_q      (p = inf -> q = 1, p = 1 -> q = inf)

as a mixed-integer linear program. ``value`` is the exact constant when the status is ``optimal``; ``upper`` (the
solver's dual bound plus its tolerances) is certified in any case and ``lower`` is attained at a returned point.
Exit codes as in :mod:`lipbound.cli.common`: 2 for bad input (a non-ReLU model, ``--norm 2``, a bad ``--eps``), 1
for an internal or solver fault.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import lipbound
from lipbound.cli.common import (
    InputShapeOption,
    Norm,
    WeightsOption,
    cli_errors,
    json_to_stdout,
    load_cli_model,
    parse_direction,
    parse_shape,
    read_cli_inputs,
    shape_inputs,
    solver_output_to_stderr,
    stderr_console,
    to_graph,
    write_json_atomic,
)
from lipbound.errors import InvalidInputError


def exact_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A ReLU network: a .onnx file, a TorchScript .pt file, 'package.module:factory' (with --weights) "
            "or 'bundled:<name>'. Affine layers (Linear, Conv, BatchNorm, Flatten) and ReLU only.",
            show_default=False,
        ),
    ],
    eps: Annotated[float, typer.Option("--eps", help="Radius of the input ball B_p(x0, eps) (>= 0).")] = 0.1,
    x0: Annotated[
        Path | None,
        typer.Option(
            "--x0",
            "--input",
            help="Inputs (.npy/.npz/.pt) with a batch dimension; optional for bundled models (uses shipped samples).",
        ),
    ] = None,
    norm: Annotated[
        Norm, typer.Option("--norm", help="Input norm p: inf (gradient in l1) or 1 (gradient in l_inf); 2 is refused.")
    ] = Norm.inf,
    c: Annotated[
        str | None,
        typer.Option("--c", help="Output direction as for 'lipbound local' (default: every output row)."),
    ] = None,
    time_limit: Annotated[
        float,
        typer.Option(
            "--time-limit",
            help="Seconds per input (all output rows together); on expiry the status is time_limit and upper stays "
            "certified.",
        ),
    ] = 60.0,
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the results as JSON to this file, rewritten (atomically) after every input; '-' prints "
            "the JSON on stdout (the table goes to stderr).",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N inputs.")] = None,
    per_row: Annotated[
        bool, typer.Option("--per-row", help="One table row per input and output row (default: one per input).")
    ] = False,
) -> None:
    """Exact local Lipschitz constant of a small ReLU network around each input, by MILP (HiGHS).

    Exit codes: 0 on success, 2 for bad input (one red line on stderr), 1 for an internal or solver fault.
    """
    to_stdout = json_to_stdout(json_out)
    out = Console(stderr=to_stdout)
    with cli_errors():
        if not (math.isfinite(eps) and eps >= 0):
            raise InvalidInputError(f"--eps must be a finite number >= 0, got {eps}")
        if not (math.isfinite(time_limit) and time_limit > 0):
            raise InvalidInputError(f"--time-limit must be a positive number of seconds, got {time_limit}")
        if norm == Norm.l2:
            raise InvalidInputError(
                "--norm 2 is not supported by 'lipbound exact' (the l2 gradient norm is not exactly "
                "MILP-representable); use --norm inf or 1, or 'lipbound local --norm 2' for certified l2 bounds"
            )
        given_shape = parse_shape(input_shape)
        loaded, shape = load_cli_model(model, weights, given_shape)
        xs = shape_inputs(read_cli_inputs(x0, model), shape or given_shape, limit).to(torch.float64)
        if not torch.isfinite(xs).all():
            raise InvalidInputError("--x0 contains NaN or inf values")
        graph = to_graph(loaded, tuple(xs.shape[1:]), torch.float64)
        cvec = parse_direction(c, graph.output.numel, torch.float64)
        p: str | int = "inf" if norm == Norm.inf else 1
        rows: list[dict[str, Any]] = []

        def payload(done: bool) -> dict:
            return {
                "lipbound_version": lipbound.__version__,
                "model": model,
                "input_shape": list(graph.input_shape),
                "eps": eps,
                "norm": norm.value,
                "c": c,
                "time_limit": time_limit,
                "complete": done,
                "inputs": len(xs),
                "results": rows,
                "total_seconds": sum(r["seconds"] for r in rows),
            }

        if json_out is not None and not to_stdout:
            write_json_atomic(json_out, payload(False))  # fail on an unwritable --json before any work
        columns = (TextColumn("solving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with solver_output_to_stderr(), Progress(*columns, console=stderr_console(), transient=True) as progress:
            task = progress.add_task("inputs", total=len(xs))
            for i in range(len(xs)):
                t0 = time.perf_counter()
                r = lipbound.exact_lipschitz(graph, xs[i : i + 1], eps, norm=p, c=cvec, time_limit=time_limit)
                row = {"input": i, **r.to_dict(), "seconds": time.perf_counter() - t0}
                row["lower_point"] = None if r.lower_point is None else r.lower_point.reshape(-1).tolist()
                rows.append(row)
                progress.advance(task)
                if json_out is not None and not to_stdout:
                    write_json_atomic(json_out, payload(len(rows) == len(xs)))
    out.print(_table(rows, model, eps, norm.value, per_row))
    if to_stdout:
        typer.echo(json.dumps(payload(True), indent=2))
    elif json_out is not None:
        out.print(f"wrote {json_out}", highlight=False)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v + 0.0:.6g}"  # + 0.0: no "-0"


def _table(rows: list[dict[str, Any]], model: str, eps: float, norm: str, per_row: bool) -> Table:
    """One row per input (the maximum over output rows), or per input and output row with ``per_row``."""
    table = Table(title=f"{model}: exact local Lipschitz constants (MILP), eps={eps:g}, norm={norm}")
    names = ["input", "row"] if per_row else ["input"]
    for name in (*names, "value", "upper", "lower", "status", "seconds"):
        table.add_column(name, justify="left" if name == "status" else "right")
    for r in rows:
        if per_row:
            for q in r["rows"]:
                table.add_row(
                    str(r["input"]),
                    str(q["row"]),
                    _fmt(q["value"]),
                    _fmt(q["upper"]),
                    _fmt(q["lower"]),
                    q["status"],
                    f"{q['seconds']:.2f}",
                )
        else:
            table.add_row(
                str(r["input"]),
                _fmt(r["value"]),
                _fmt(r["upper"]),
                _fmt(r["lower"]),
                r["status"],
                f"{r['seconds']:.2f}",
            )
    return table
