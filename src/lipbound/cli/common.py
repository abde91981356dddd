"""What every ``lipbound`` command shares: model loading, input shapes, output directions, JSON output, errors.

The CLI contract (the same for every command):

* exit code 0 on success, 2 for bad input (a :class:`~lipbound.errors.LipboundError` or a bad option value: one
  red ``error:`` line on stderr, worded with the CLI's flag names), 1 for an internal fault;
* ``--json FILE`` is written atomically (and rewritten as partial results complete), ``--json -`` prints the JSON
  on stdout while the table goes to stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
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
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, LipboundError, ModelLoadError, ShapeMismatchError, SolverError
from lipbound.graph.ir import Graph
from lipbound.graph.load import load_inputs, load_model
from lipbound.graph.trace import trace
from lipbound.models import bundled_input_shape, load_bundled, load_samples

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
BUNDLED_PREFIX = "bundled:"


class Norm(StrEnum):
    inf = "inf"
    l2 = "2"
    l1 = "1"


#: options shared by the commands that load one model (the same flag, type and help everywhere)
WeightsOption = Annotated[
    Path | None, typer.Option("--weights", help="A state dict (.pt) loaded into a 'module:factory' model.")
]
InputShapeOption = Annotated[
    str | None, typer.Option("--input-shape", help="Per-sample input shape, e.g. 1,8,8 (for factory models).")
]


class Method(StrEnum):
    crown = "crown"
    interval = "interval"
    lipsdp = "lipsdp"


class DType(StrEnum):
    float32 = "float32"
    float64 = "float64"


def stderr_console() -> Console:
    return Console(stderr=True)


_stderr = stderr_console  # the name the command modules used before the split

# API-phrased hints in error messages, reworded for the command line (a CLI user has flags, not keywords)
CLI_WORDING: list[tuple[str, str]] = [
    (r"\(e\.g\. input_shape=\((\d+),\)\)", r"(e.g. --input-shape \1)"),
    (r"pass input_shape=\(C, H, W\)", "pass --input-shape C,H,W"),
    (r"pass input_shape=\(\.\.\.\)( explicitly)?", "pass --input-shape (e.g. --input-shape 1,28,28)"),
    (r"pass input_shape=\.\.\.", "pass --input-shape (e.g. --input-shape 1,28,28)"),
    (r"input_shape is required", "--input-shape is required"),
    (r"\btime_limit\b", "--time-limit"),
]


def cli_wording(message: str) -> str:
    """``message`` with Python-API hints (``input_shape=(784,)``) replaced by the CLI flags."""
    for pattern, replacement in CLI_WORDING:
        message = re.sub(pattern, replacement, message)
    return message


def fail(message: str) -> typer.Exit:
    """Print ``message`` as one red line on stderr and return the exit (code 2) to raise."""
    message = cli_wording(message)
    stderr_console().print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn lipbound's user-facing exceptions into a one-line message and exit code 2."""
    try:
        yield
    except LipboundError as e:
        raise fail(" ".join(str(e).split()) or type(e).__name__) from None


@contextmanager
def cli_errors() -> Iterator[None]:
    """:func:`user_errors` (exit 2), and any other exception (a :class:`~lipbound.errors.SolverError` included) as
    one ``internal error:`` line with exit code 1.

    ``KeyboardInterrupt`` and ``typer.Exit`` pass through unchanged.
    """
    try:
        try:
            yield
        except SolverError:
            raise  # a solver that failed without fallback is a fault, not bad input
        except LipboundError as e:
            raise fail(" ".join(str(e).split()) or type(e).__name__) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:
        text = " ".join(str(e).split()) or "(no message)"
        stderr_console().print(
            f"[bold red]internal error:[/] [red]{escape(type(e).__name__)}: {escape(text)}[/] "
            "(a bug in lipbound or a solver fault; please report it with the model)",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERNAL_ERROR) from None


@contextmanager
def solver_output_to_stderr() -> Iterator[None]:
    """Send whatever native solvers print on file descriptor 1 (HiGHS prints a banner) to stderr meanwhile, so that
    stdout carries only the command's own output (``--json -`` stays parseable)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def json_to_stdout(json_out: Path | None) -> bool:
    """``--json -``: the JSON goes to stdout (and the table to stderr)."""
    return json_out is not None and str(json_out) == "-"


# ----------------------------------------------------------------------------------------------- model and inputs


def load_cli_model(
    spec: str, weights: Path | None, input_shape: tuple[int, ...] | None
) -> tuple[Any, tuple[int, ...] | None]:
    """Resolve MODEL: ``bundled:<name>`` here, every other form via :func:`lipbound.graph.load.load_model`."""
    if spec.startswith(BUNDLED_PREFIX):
        if weights is not None:
            raise InvalidInputError("--weights cannot be combined with a bundled model")
        name = spec[len(BUNDLED_PREFIX) :]
        return load_bundled(name), bundled_input_shape(name)
    return load_model(spec, weights=None if weights is None else str(weights), input_shape=input_shape)


def read_cli_inputs(path: Path | None, spec: str) -> Tensor:
    """Raw inputs: the ``--x0`` file (via :func:`lipbound.graph.load.load_inputs`) or a bundled model's samples."""
    if path is None:
        if not spec.startswith(BUNDLED_PREFIX):
            raise InvalidInputError("--x0 is required (a .npy/.npz/.pt file of inputs) unless MODEL is bundled:<name>")
        return load_samples(spec[len(BUNDLED_PREFIX) :])[0]
    if not path.exists():
        raise InvalidInputError(f"--x0 file {str(path)!r} does not exist")
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
        return trace(model.to(dtype), tuple(input_shape))
    raise ModelLoadError(f"the model loader returned a {type(model).__name__}, not a module or graph")


# ------------------------------------------------------------------------------------------------------- output


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


def gap(upper: Tensor, lower: Tensor) -> Tensor:
    """``upper / lower`` (>= 1; inf where nothing positive was attained), as ``LocalResult.gap``."""
    return upper / lower.clamp(min=torch.finfo(lower.dtype).tiny)


def as_list(t: Tensor) -> float | list[float]:
    v = t.detach().double().cpu()
    return v.item() if v.ndim == 0 else v.tolist()
