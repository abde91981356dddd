"""``lipbound local MODEL --x0 X.npy --eps E``: certified local Lipschitz bounds around every input.

For every input x0_i it bounds

    L_i = sup_{x in B_p(x0_i, E)} ||J(x)^T c||_q      (q the dual of the input norm p)

from above (certified, ``upper``) and from below (a value attained at a point of the box, ``lower``); ``--bab S``
tightens the upper bound by Branch and Bound. Exit codes as in :mod:`lipbound.cli.common`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import Tensor

import lipbound
from lipbound.cli.common import (
    DType,
    InputShapeOption,
    Method,
    Norm,
    WeightsOption,
    as_list,
    gap,
    load_cli_model,
    parse_direction,
    parse_shape,
    read_cli_inputs,
    shape_inputs,
    stderr_console,
    to_graph,
    user_errors,
    write_json_atomic,
)
from lipbound.errors import InvalidInputError
from lipbound.graph.ir import Graph


def local_command(
    model: Annotated[
        str,
        typer.Argument(
            help="Model: a .onnx file, a TorchScript .pt file, 'package.module:factory' (with --weights), "
            "or 'bundled:<name>' (digits-mlp, digits-cnn, simple-mlp-16/64/128/256).",
            show_default=False,
        ),
    ],
    eps: Annotated[float, typer.Option("--eps", help="Radius of the input ball B_p(x0, eps) (>= 0).")] = 0.1,
    x0: Annotated[
        Path | None,
        typer.Option(
            "--x0",
            help="Inputs (.npy/.npz/.pt) with a batch dimension; optional for bundled models (uses shipped samples).",
        ),
    ] = None,
    norm: Annotated[Norm, typer.Option("--norm", help="Input norm p of the ball; the bound is on the dual norm.")] = (
        Norm.inf
    ),
    c: Annotated[
        str | None,
        typer.Option(
            "--c",
            help="Output direction: 'margin:i,j' (c = e_i - e_j), 'all' (every output row), or a .npy file with "
            "a vector (m,) or rows (K, m). Default: the gradient norm for a scalar output, every row otherwise.",
        ),
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="crown: linear relaxations (tight); interval: the RecurJac/Fast-Lip baseline; lipsdp: local "
            "LipSDP-Neuron, one certified SDP per input and direction (--norm 2 only; seconds to minutes each).",
        ),
    ] = Method.crown,
    optimize: Annotated[
        bool, typer.Option("--optimize", help="Optimise the relaxation slopes by gradient ascent (slower, tighter).")
    ] = False,
    bab: Annotated[
        float | None,
        typer.Option(
            "--bab",
            help="Tighten with Branch and Bound on ReLU phases for up to this many seconds of wall time per input "
            "(all its directions share it; the bound stays certified at any time).",
        ),
    ] = None,
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the results as JSON to this file, rewritten (atomically) after every batch so an "
            "interrupted run keeps what finished; '-' prints the JSON on stdout (the table goes to stderr).",
        ),
    ] = None,
    dtype: Annotated[
        DType,
        typer.Option(
            "--dtype", help="Precision of the computation (both are rigorous; float32 is faster, slightly looser)."
        ),
    ] = DType.float64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inputs bounded together per engine call.")] = 1,
    limit: Annotated[int | None, typer.Option("--limit", help="Bound only the first N inputs.")] = None,
    per_row: Annotated[
        bool,
        typer.Option("--per-row", help="One table row per input and output row (default: one row per input)."),
    ] = False,
) -> None:
    """Certified upper and attained lower bounds on the local Lipschitz constant around each input.

    Exit codes: 0 on success, 2 for bad input (one red line on stderr), 1 for an internal fault.
    """
    to_stdout = json_out is not None and str(json_out) == "-"
    out = Console(stderr=to_stdout)
    with user_errors():
        if not eps >= 0:
            raise InvalidInputError(f"--eps must be a finite number >= 0, got {eps}")
        if batch_size < 1:
            raise InvalidInputError(f"--batch-size must be >= 1, got {batch_size}")
        if bab is not None and not bab > 0:
            raise InvalidInputError(f"--bab must be a positive number of seconds, got {bab}")
        if bab is not None and method != Method.crown:
            raise InvalidInputError(
                f"--bab refines the crown bound; it cannot be combined with --method {method.value}"
            )
        if method == Method.lipsdp and norm.value != "2":
            raise InvalidInputError(
                f"--method lipsdp bounds the l2 constant only: use --norm 2 (got --norm {norm.value})"
            )
        tdtype = torch.float64 if dtype == DType.float64 else torch.float32
        given_shape = parse_shape(input_shape)
        loaded, shape = load_cli_model(model, weights, given_shape)
        xs = shape_inputs(read_cli_inputs(x0, model), shape or given_shape, limit).to(tdtype)
        graph = to_graph(loaded, tuple(xs.shape[1:]), tdtype)
        if not torch.isfinite(xs).all():
            raise InvalidInputError("--x0 contains NaN or inf values")
        n_out = graph.output.numel
        cvec = parse_direction(c, n_out, tdtype)
        p: str | int = "inf" if norm == Norm.inf else int(norm.value)
        shown = method.value + ("+bab" if bab is not None else "")

        def payload(rows: list[dict], done: bool) -> dict:
            return {
                "lipbound_version": lipbound.__version__,
                "model": model,
                "input_shape": list(graph.input_shape),
                "eps": eps,
                "norm": norm.value,
                "c": c,
                "method": shown,
                "optimize": optimize,
                "bab_seconds": bab,
                "dtype": dtype.value,
                "complete": done,
                "inputs": len(xs),
                "results": rows,
                "total_seconds": sum(r["seconds"] for r in rows),
            }

        def save(rows: list[dict]) -> None:
            if json_out is not None and not to_stdout:
                write_json_atomic(json_out, payload(rows, len(rows) == len(xs)))

        if json_out is not None and not to_stdout:
            save([])  # fail on an unwritable --json before any work
        rows = _run_local(graph, xs, eps, p, cvec, method.value, optimize, batch_size, tdtype, bab, save)
    _print_local(out, rows, model, eps, norm.value, shown, optimize, per_row)
    if to_stdout:
        typer.echo(json.dumps(payload(rows, True), indent=2))
    elif json_out is not None:
        out.print(f"wrote {json_out}", highlight=False)


def _run_local(
    graph: Graph,
    xs: Tensor,
    eps: float,
    norm: str | int,
    c: Tensor | None,
    method: str,
    optimize: bool,
    batch_size: int,
    dtype: torch.dtype,
    bab: float | None = None,
    on_batch: Any = None,
) -> list[dict]:
    """Bound every input (in chunks of ``batch_size``) with a progress bar on stderr; one dict per input.

    ``on_batch(rows)`` is called with the rows so far after every batch (to save partial results)."""
    rows: list[dict] = []
    columns = (TextColumn("bounding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task("inputs", total=len(xs))
        for start in range(0, len(xs), batch_size):
            xb = xs[start : start + batch_size]
            t0 = time.perf_counter()
            if bab is None:
                r = lipbound.local_lipschitz(
                    graph, xb, eps, norm=norm, c=c, method=method, optimize=optimize, dtype=dtype
                )
            else:
                r = lipbound.local_lipschitz_bab(
                    graph, xb, eps, norm=norm, c=c, time_budget=bab * len(xb), optimize=optimize, dtype=dtype
                )
            secs = float(getattr(r, "seconds", time.perf_counter() - t0)) / len(xb)
            for k in range(len(xb)):
                up, lo = r.upper[k], r.lower[k]
                row: dict[str, Any] = {"input": start + k, "upper": as_list(up), "lower": as_list(lo)}
                row["gap"] = as_list(gap(up, lo))
                if up.ndim == 1:
                    row["max_upper"], row["max_lower"] = r.upper_max[k].item(), r.lower_max[k].item()
                    row["max_gap"] = gap(r.upper_max[k], r.lower_max[k]).item()
                row["seconds"] = secs
                rows.append(row)
            progress.advance(task, len(xb))
            if on_batch is not None:
                on_batch(rows)
    return rows


def _print_local(
    out: Console,
    rows: list[dict],
    model: str,
    eps: float,
    norm: str,
    method: str,
    optimize: bool,
    per_row: bool = False,
) -> None:
    title = f"{model}: local Lipschitz bounds, eps={eps:g}, norm={norm}, {method}{'+optimize' if optimize else ''}"
    multi = bool(rows) and isinstance(rows[0]["upper"], list)
    if multi and not per_row:  # compact: one row per input, the max over output rows
        k = len(rows[0]["upper"])
        table = Table(title=title, caption=f"max over the {k} output rows; --per-row for each")
        for name in ("input", "upper", "lower", "gap (upper/lower)", "seconds"):
            table.add_column(name, justify="right")
        for r in rows:
            table.add_row(
                str(r["input"]),
                f"{r['max_upper']:.5g}",
                f"{r['max_lower']:.5g}",
                f"{r['max_gap']:.4g}",
                f"{r['seconds']:.3f}",
            )
        out.print(table)
        return
    table = Table(title=title)
    table.add_column("input", justify="right")
    if multi:
        table.add_column("row", justify="right")
    for name in ("upper", "lower", "gap (upper/lower)", "seconds"):
        table.add_column(name, justify="right")
    for r in rows:
        if multi:
            for k, (u, lo) in enumerate(zip(r["upper"], r["lower"], strict=True)):
                table.add_row(
                    str(r["input"]), str(k), f"{u:.5g}", f"{lo:.5g}", f"{r['gap'][k]:.4g}", f"{r['seconds']:.3f}"
                )
            table.add_row(
                str(r["input"]),
                "max",
                f"{r['max_upper']:.5g}",
                f"{r['max_lower']:.5g}",
                f"{r['max_gap']:.4g}",
                "",
                end_section=True,
            )
        else:
            table.add_row(
                str(r["input"]), f"{r['upper']:.5g}", f"{r['lower']:.5g}", f"{r['gap']:.4g}", f"{r['seconds']:.3f}"
            )
    out.print(table)
