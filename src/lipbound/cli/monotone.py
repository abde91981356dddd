"""``lipbound monotone MODEL --x0 X.npy --eps E``: certified monotonicity verdicts per input and feature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import Tensor

from lipbound.cli.common import (
    InputShapeOption,
    WeightsOption,
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
from lipbound.monotonicity import certify_monotonicity


def monotone_command(
    model: Annotated[str, typer.Argument(help="Model: as for 'lipbound local'.", show_default=False)],
    eps: Annotated[float, typer.Option("--eps", help="Radius of the l_inf box around each input (>= 0).")] = 0.1,
    x0: Annotated[
        Path | None, typer.Option("--x0", help="Inputs (.npy/.npz/.pt); optional for bundled models.")
    ] = None,
    c: Annotated[
        str | None, typer.Option("--c", help="Output direction as for 'lipbound local' (default: every output).")
    ] = None,
    bisections: Annotated[
        int, typer.Option("--bisections", help="Split each box 2^N ways along its widest coordinates (tighter).")
    ] = 0,
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the verdicts as JSON (atomically); '-' prints it on stdout."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N inputs.")] = None,
) -> None:
    """Certify, per input, output direction and feature, that the model is non-decreasing / non-increasing on the
    box (or find a counterexample). Exit codes as for 'lipbound local'."""
    to_stdout = json_out is not None and str(json_out) == "-"
    out = Console(stderr=to_stdout)
    with user_errors():
        if not eps >= 0:
            raise InvalidInputError(f"--eps must be a finite number >= 0, got {eps}")
        if not 0 <= bisections <= 16:
            raise InvalidInputError(f"--bisections must be between 0 and 16, got {bisections}")
        given_shape = parse_shape(input_shape)
        loaded, shape = load_cli_model(model, weights, given_shape)
        xs = shape_inputs(read_cli_inputs(x0, model), shape or given_shape, limit).to(torch.float64)
        graph = to_graph(loaded, tuple(xs.shape[1:]), torch.float64)
        cvec = parse_direction(c, graph.output.numel, torch.float64)
        with stderr_console().status(f"certifying {len(xs)} input(s) x {2**bisections} part(s) ...", spinner="dots"):
            r = certify_monotonicity(graph, xs, eps, cvec, bisections=bisections)
    verdict = _verdicts(r)
    table = Table(title=f"{model}: monotonicity on B_inf(x0, {eps:g}), {r.parts} part(s) per box")
    for col in ("input", "direction", "non-decreasing in", "non-increasing in", "counterexample to both", "unknown"):
        table.add_column(col)
    for row in verdict:
        table.add_row(*(str(row[k]) if not isinstance(row[k], list) else _features(row[k]) for k in row))
    out.print(table)
    payload = {"model": model, "eps": eps, "parts": r.parts, "results": verdict}
    if to_stdout:
        typer.echo(json.dumps(payload, indent=2))
    elif json_out is not None:
        with user_errors():
            write_json_atomic(json_out, payload)
        out.print(f"wrote {json_out}", highlight=False)


def _verdicts(r) -> list[dict]:
    """One row per (input, direction): the feature indices in each verdict class."""
    b, k = r.increasing.shape[:2]
    inc, dec = r.increasing.reshape(b, k, -1), r.decreasing.reshape(b, k, -1)
    both = (r.violated_increasing & r.violated_decreasing).reshape(b, k, -1)
    rows = []
    for i in range(b):
        for j in range(k):
            rows.append(
                {
                    "input": i,
                    "direction": j,
                    "non_decreasing": _ids(inc[i, j]),
                    "non_increasing": _ids(dec[i, j]),
                    "not_monotone": _ids(both[i, j]),
                    "unknown": _ids(~(inc[i, j] | dec[i, j] | both[i, j])),
                }
            )
    return rows


def _ids(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _features(ids: list[int]) -> str:
    if not ids:
        return "-"
    return ",".join(map(str, ids[:12])) + (f",... ({len(ids)})" if len(ids) > 12 else "")
