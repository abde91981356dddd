"""``lipbound demo``: bound the bundled digits MLP and CNN on a few digits (table and plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lipbound.cli.common import user_errors
from lipbound.demo import run_demo


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the plot and the JSON results.")] = Path(
        "demo-output"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer digits and eps values (a smoke test).")] = False,
) -> None:
    """Bound the bundled digits MLP and CNN on a few digits; print a table and plot bound versus eps."""
    with user_errors():
        run_demo(out, quick=quick, console=Console())
