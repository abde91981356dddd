"""``lipbound run``: certify a whole data set from a spec file or flags, resumably, locally or on Ray.

    lipbound run SPEC.yaml
    lipbound run --task local --model digits-mlp --data digits --eps 0.1 --out results.jsonl [--workers 2]
    lipbound run ... --executor ray [--address HOST:6379]

Records (one JSON line per input, fsynced as each finishes) go to ``--out``; re-running the same command resumes.
At the end: a summary table (counts, distribution of the task's numbers, failures) and a histogram PNG.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lipbound.errors import LipboundError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _fail(message: str) -> typer.Exit:
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--option {item!r}: expected KEY=VALUE (e.g. --option method=interval)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_command(
    spec_file: Annotated[Path | None, typer.Argument(help="Spec file (.yaml/.yml/.json); flags override it.")] = None,
    task: Annotated[str | None, typer.Option(help="Task: local, bab, monotone.")] = None,
    model: Annotated[str | None, typer.Option(help="Bundled model (digits-mlp, ...) or a model file.")] = None,
    data: Annotated[str | None, typer.Option(help="Bundled data set (digits, simple) or .npz/.npy/.pt/.csv.")] = None,
    eps: Annotated[float | None, typer.Option(help="Box radius around every input. (default: 0.1)")] = None,
    norm: Annotated[str | None, typer.Option(help="Input norm: inf, 2 or 1. (default: inf)")] = None,
    out: Annotated[str | None, typer.Option(help="Output JSONL. (default: results.jsonl)")] = None,
    executor: Annotated[str | None, typer.Option(help="local (process pool) or ray. (default: local)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes / Ray actors. (default: one per core)")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N inputs.")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Hard seconds per input attempt.")] = None,
    retries: Annotated[int | None, typer.Option(help="Extra attempts for a failing input. (default: 0)")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="On resume, redo failed inputs.")] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads per worker. (default: 1)")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Task option KEY=VALUE (repeat).")] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the summary as JSON to F ('-': stdout).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Histogram PNG. (default: <out stem>.png)")] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write the histogram.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Certify every input of a data set (resumable: re-run the same command to continue after a crash)."""
    from lipbound.runner.api import run
    from lipbound.runner.spec import load_spec_file, spec_from_dict
    from lipbound.runner.summary import plot_histogram, summary_table
    from lipbound.runner.tasks import TASKS

    flags = dict(task=task, model=model, data=data, eps=eps, norm=norm, out=out, executor=executor, workers=workers,
                 limit=limit, time_budget=time_budget, retries=retries, address=address, threads=threads)  # fmt: skip
    if retry_failed:
        flags["retry_failed"] = True
    opts = _parse_options(option)
    console = Console(stderr=json_out == "-")
    try:
        if spec_file is not None:
            spec = load_spec_file(spec_file, **flags)
            if opts:
                spec.options = {**spec.options, **opts}
        else:
            spec = spec_from_dict(
                {k: v for k, v in flags.items() if v is not None} | ({"options": opts} if opts else {})
            )
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[failed]}"), console=console, disable=quiet, transient=False,
        )  # fmt: skip
        state = {"bar": None, "n": 0, "failed": 0}

        def on_start(total: int, todo: int) -> None:
            if todo < total:
                console.print(f"resuming: {total - todo} of {total} inputs already recorded", highlight=False)
            state["bar"] = progress.add_task(spec.task, total=todo, rate="", failed="")

        def on_record(record: dict[str, Any]) -> None:
            state["n"] += 1
            state["failed"] += record["status"] != "ok"
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(
                state["bar"], advance=1, rate=f"{state['n'] / elapsed:.2f} in/s",
                failed=f"[red]{state['failed']} failed[/]" if state["failed"] else "",
            )  # fmt: skip

        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            with progress:
                result = run(spec=spec, on_start=on_start, on_record=on_record)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except KeyboardInterrupt:
        Console(stderr=True).print(
            "[yellow]interrupted[/]: records so far are saved; re-run the same command to resume"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except LipboundError as e:
        raise _fail(" ".join(str(e).split()) or type(e).__name__) from None
    summary = {**result.summary, "path": str(result.path), "key": result.key, "computed": result.computed,
               "skipped": result.skipped, "dropped_lines": result.dropped, "seconds": result.seconds}  # fmt: skip
    if result.dropped:
        console.print(f"[yellow]redone {len(result.dropped)} corrupt/partial line(s)[/]: {result.dropped[0]}")
    if not no_plot:
        png = plot or result.path.with_suffix(".png")
        field = TASKS[spec.task].headline
        written = plot_histogram(result.records, field, png, f"{spec.task} {field}, {spec.model}, eps={spec.eps}")
        summary["plot"] = None if written is None else str(written)
    if not quiet:
        console.print(summary_table(result.summary, f"{spec.task} on {spec.data} -> {result.path}"))
        if summary.get("plot"):
            console.print(f"plot: {summary['plot']}", highlight=False)
    if json_out is not None:
        text = json.dumps(summary, indent=2, default=str)
        if json_out == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(json_out).write_text(text + "\n")


def main() -> None:
    """``python -m lipbound.runner.cli ...``: the same command without loading the other ``lipbound`` commands."""
    typer.run(run_command)


if __name__ == "__main__":
    main()
