"""The ``lipbound`` command line: ``lipbound local``, ``lipbound demo`` (and ``lipbound global`` when installed).

``lipbound local MODEL --x0 X.npy --eps E`` bounds, for every input x0_i, the local Lipschitz constant

    L_i = sup_{x in B_p(x0_i, E)} ||J(x)^T c||_q      (q the dual of the input norm p)

from above (certified, ``upper``) and from below (a value attained at a point of the box, ``lower``). User errors
(a :class:`~lipbound.errors.LipboundError` or a bad option value) print one red line and exit with code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import Tensor, nn

import lipbound
from lipbound.errors import InvalidInputError, LipboundError, ModelLoadError, ShapeMismatchError
from lipbound.graph.ir import Graph
from lipbound.graph.mode import TrainingModeWarning

app = typer.Typer(
    name="lipbound",
    help="Certified local and global Lipschitz bounds for PyTorch networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2


def _hide_flag_placeholder() -> None:
    """``--help`` shows a type placeholder after every option; a flag takes no value, so it gets none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_hide_flag_placeholder()
BUNDLED_PREFIX = "bundled:"


class Norm(StrEnum):
    inf = "inf"
    l2 = "2"
    l1 = "1"


class Method(StrEnum):
    crown = "crown"
    interval = "interval"


class DType(StrEnum):
    float32 = "float32"
    float64 = "float64"


def _stderr() -> Console:
    return Console(stderr=True)


# API-phrased hints in error messages, reworded for the command line (a CLI user has flags, not keywords)
CLI_WORDING: list[tuple[str, str]] = [
    (r"\(e\.g\. input_shape=\((\d+),\)\)", r"(e.g. --input-shape \1)"),
    (r"pass input_shape=\(C, H, W\)", "pass --input-shape C,H,W"),
    (r"pass input_shape=\(\.\.\.\)( explicitly)?", "pass --input-shape (e.g. --input-shape 1,28,28)"),
    (r"pass input_shape=\.\.\.", "pass --input-shape (e.g. --input-shape 1,28,28)"),
    (r"input_shape is required", "--input-shape is required"),
]


def cli_wording(message: str) -> str:
    """``message`` with Python-API hints (``input_shape=(784,)``) replaced by the CLI flags."""
    for pattern, replacement in CLI_WORDING:
        message = re.sub(pattern, replacement, message)
    return message


def fail(message: str) -> typer.Exit:
    """Print ``message`` as one red line on stderr and return the exit (code 2) to raise."""
    message = cli_wording(message)
    _stderr().print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn lipbound's user-facing exceptions into a one-line message and exit code 2."""
    try:
        yield
    except LipboundError as e:
        raise fail(" ".join(str(e).split()) or type(e).__name__) from None


# ----------------------------------------------------------------------------------------------- model and inputs


def load_cli_model(
    spec: str, weights: Path | None, input_shape: tuple[int, ...] | None
) -> tuple[Any, tuple[int, ...] | None]:
    """Resolve MODEL: ``bundled:<name>`` here, every other form via :func:`lipbound.graph.load.load_model`."""
    if spec.startswith(BUNDLED_PREFIX):
        from lipbound.models import bundled_input_shape, load_bundled

        if weights is not None:
            raise InvalidInputError("--weights cannot be combined with a bundled model")
        name = spec[len(BUNDLED_PREFIX) :]
        return load_bundled(name), bundled_input_shape(name)
    if importlib.util.find_spec("lipbound.graph.load") is None:
        raise ModelLoadError(f"cannot load {spec!r}: model files need lipbound.graph.load, which is not installed")
    from lipbound.graph.load import load_model

    return load_model(spec, weights=None if weights is None else str(weights), input_shape=input_shape)


def read_cli_inputs(path: Path | None, spec: str) -> Tensor:
    """Raw inputs: the ``--x0`` file (via :func:`lipbound.graph.load.load_inputs`) or a bundled model's samples."""
    if path is None:
        if not spec.startswith(BUNDLED_PREFIX):
            raise InvalidInputError("--x0 is required (a .npy/.npz/.pt file of inputs) unless MODEL is bundled:<name>")
        from lipbound.models import load_samples

        return load_samples(spec[len(BUNDLED_PREFIX) :])[0]
    if not path.exists():
        raise InvalidInputError(f"--x0 file {str(path)!r} does not exist")
    from lipbound.graph.load import load_inputs

    return torch.as_tensor(load_inputs(str(path)))


def shape_inputs(x: Tensor, input_shape: tuple[int, ...] | None, limit: int | None) -> Tensor:
    """Inputs as ``(B, *input_shape)`` (``input_shape`` None: ``x`` is taken as batched), first ``limit`` only.

    A file whose per-sample size equals the model's input size is reshaped (e.g. 8x8 images for a 64-input MLP);
    a single unbatched sample gets a batch dimension.
    """
    if input_shape is None:
        if x.ndim < 2:
            raise ShapeMismatchError(
                f"inputs have shape {tuple(x.shape)}; pass --input-shape or a batched array (B, *input_shape)"
            )
        input_shape = tuple(x.shape[1:])
    per_sample = int(np.prod(input_shape))
    if tuple(x.shape) == tuple(input_shape):
        x = x.unsqueeze(0)
    elif x.ndim >= 1 and x.numel() > 0 and x[0].numel() == per_sample:
        x = x.reshape(x.shape[0], *input_shape)
    else:
        raise ShapeMismatchError(
            f"inputs have shape {tuple(x.shape)}; the model expects (batch, {', '.join(map(str, input_shape))})"
        )
    if limit is not None:
        if limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {limit}")
        x = x[:limit]
    return x


def parse_direction(spec: str | None, n_out: int, dtype: torch.dtype) -> Tensor | None:
    """``--c``: ``margin:i,j`` -> c = e_i - e_j; ``all`` -> the identity (every output row); a .npy file -> its
    vector (m,) or rows (K, m); None -> the engine's default (gradient norm, or every row for a vector output)."""
    if spec is None:
        return None
    s = spec.strip()
    if s == "all":
        return torch.eye(n_out, dtype=dtype)
    if s.startswith("margin:"):
        parts = s[len("margin:") :].split(",")
        try:
            i, j = (int(p) for p in parts)
        except ValueError:
            raise InvalidInputError(f"--c {spec!r}: expected margin:i,j with two integer output indices") from None
        for k in (i, j):
            if not 0 <= k < n_out:
                raise InvalidInputError(f"--c {spec!r}: output index {k} out of range for {n_out} outputs")
        if i == j:
            raise InvalidInputError(f"--c {spec!r}: the two indices must differ")
        c = torch.zeros(n_out, dtype=dtype)
        c[i], c[j] = 1.0, -1.0
        return c
    path = Path(s)
    if path.suffix == ".npy":
        if not path.exists():
            raise InvalidInputError(f"--c file {s!r} does not exist")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise InvalidInputError(f"--c file {s!r} is not a readable .npy array: {e}") from None
        c = torch.as_tensor(np.asarray(arr, dtype=np.float64)).to(dtype)
        if c.ndim not in (1, 2) or c.shape[-1] != n_out:
            raise ShapeMismatchError(f"--c file {s!r} has shape {tuple(c.shape)}; expected ({n_out},) or (K, {n_out})")
        if not torch.isfinite(c).all():
            raise InvalidInputError(f"--c file {s!r} contains NaN or inf")
        return c
    raise InvalidInputError(f"--c {spec!r}: expected margin:i,j, all, or a .npy file")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape 1,8,8`` -> (1, 8, 8)."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise InvalidInputError(f"--input-shape {text!r}: expected comma-separated positive integers") from None
    if not shape or min(shape) < 1:
        raise InvalidInputError(f"--input-shape {text!r}: expected comma-separated positive integers")
    return shape


def to_graph(model: Any, input_shape: tuple[int, ...], dtype: torch.dtype) -> Graph:
    """Trace once (so batches do not re-trace) and cast to ``dtype``."""
    if isinstance(model, Graph):
        return model.to(dtype)
    if isinstance(model, nn.Module):
        from lipbound.graph import trace

        return trace(model.to(dtype), tuple(input_shape))
    raise ModelLoadError(f"the model loader returned a {type(model).__name__}, not a module or graph")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, payload: dict) -> None:
    """Serialise first, write a temp file in the same directory, then rename: no half-written file on error."""
    text = json.dumps(payload, indent=2) + "\n"
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidInputError(f"--json directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------- commands


def gap(upper: Tensor, lower: Tensor) -> Tensor:
    """``upper / lower`` (>= 1; inf where nothing positive was attained), as ``LocalResult.gap``."""
    return upper / lower.clamp(min=torch.finfo(lower.dtype).tiny)


def _as_list(t: Tensor) -> float | list[float]:
    v = t.detach().double().cpu()
    return v.item() if v.ndim == 0 else v.tolist()


@app.command("local")
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
        Method, typer.Option("--method", help="crown: linear relaxations (tight); interval: RecurJac-style baseline.")
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
    weights: Annotated[
        Path | None, typer.Option("--weights", help="A state dict (.pt) loaded into a 'module:factory' model.")
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Per-sample input shape, e.g. 1,8,8 (for factory models).")
    ] = None,
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
            raise InvalidInputError("--bab refines the crown bound; it cannot be combined with --method interval")
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
    with Progress(*columns, console=_stderr(), transient=True) as progress:
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
                row: dict[str, Any] = {"input": start + k, "upper": _as_list(up), "lower": _as_list(lo)}
                row["gap"] = _as_list(gap(up, lo))
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


@app.command("monotone")
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
    weights: Annotated[Path | None, typer.Option("--weights", help="State dict for a 'module:factory' model.")] = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Per-sample input shape, e.g. 1,8,8.")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the verdicts as JSON (atomically); '-' prints it on stdout."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N inputs.")] = None,
) -> None:
    """Certify, per input, output direction and feature, that the model is non-decreasing / non-increasing on the
    box (or find a counterexample). Exit codes as for 'lipbound local'."""
    from lipbound.monotonicity import certify_monotonicity

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
        with _stderr().status(f"certifying {len(xs)} input(s) x {2**bisections} part(s) ...", spinner="dots"):
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


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the plot and the JSON results.")] = Path(
        "demo-output"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer digits and eps values (a smoke test).")] = False,
) -> None:
    """Bound the bundled digits MLP and CNN on a few digits; print a table and plot bound versus eps."""
    from lipbound.demo import run_demo

    with user_errors():
        run_demo(out, quick=quick, console=Console())


@app.callback()
def main() -> None:
    """Certified local and global Lipschitz bounds for PyTorch networks."""
    warnings.showwarning = _show_note


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """lipbound's own warnings (e.g. a model bounded in eval mode) as one yellow ``note:`` line on stderr."""
    if issubclass(category, TrainingModeWarning):
        _stderr().print(f"[yellow]note:[/] {escape(str(message))}", soft_wrap=True, highlight=False)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _register_global() -> None:
    """Add ``lipbound global`` when the global-bounds package is present (it is optional in this build)."""
    if importlib.util.find_spec("lipbound.global_bounds") is None:
        return
    if importlib.util.find_spec("lipbound.global_bounds.cli") is None:
        return
    from lipbound.global_bounds.cli import global_command

    app.command("global")(global_command)


# Application subcommands, one row each: (command name, "module:attribute", kind). kind "app" mounts a typer.Typer
# (a group such as ``lipbound smooth certify``), kind "command" registers a single function as ``lipbound NAME``.
APPLICATION_COMMANDS: list[tuple[str, str, str]] = [
    ("smooth", "lipbound.smoothing.cli:app", "app"),
    ("rl", "lipbound.rl.cli:app", "app"),
    ("counterfactual", "lipbound.counterfactuals.cli:counterfactual", "command"),
    ("run", "lipbound.runner.cli:run_command", "command"),
]


def _register_applications() -> None:
    for name, target, kind in APPLICATION_COMMANDS:
        module_name, attribute = target.split(":")
        obj = getattr(importlib.import_module(module_name), attribute)
        if kind == "app":
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


_register_global()
_register_applications()
