"""The ``lipbound`` Typer application: one command per module of :mod:`lipbound.cli`, plus the applications'.

``lipbound local | monotone | exact | global | demo | smooth ... | counterfactual | rl ... | run``.
"""

from __future__ import annotations

import warnings
from typing import Any

import typer
from rich.markup import escape

from lipbound.cli.common import stderr_console
from lipbound.cli.demo import demo_command
from lipbound.cli.exact import exact_command
from lipbound.cli.global_ import global_command
from lipbound.cli.local import local_command
from lipbound.cli.monotone import monotone_command
from lipbound.cli.smooth import app as smooth_app
from lipbound.counterfactuals.cli import counterfactual
from lipbound.graph.mode import TrainingModeWarning
from lipbound.rl.cli import app as rl_app
from lipbound.runner.cli import run_command

app = typer.Typer(
    name="lipbound",
    help="Certified local and global Lipschitz bounds for PyTorch networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _hide_flag_placeholder() -> None:
    """``--help`` shows a type placeholder after every option; a flag takes no value, so it gets none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_hide_flag_placeholder()


@app.callback()
def main() -> None:
    """Certified local and global Lipschitz bounds for PyTorch networks."""
    warnings.showwarning = _show_note


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """lipbound's own warnings (e.g. a model bounded in eval mode) as one yellow ``note:`` line on stderr."""
    if issubclass(category, TrainingModeWarning):
        stderr_console().print(f"[yellow]note:[/] {escape(str(message))}", soft_wrap=True, highlight=False)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning

# (command name, function) for single commands; (group name, Typer app) for command groups
COMMANDS: list[tuple[str, Any]] = [
    ("local", local_command),
    ("monotone", monotone_command),
    ("exact", exact_command),
    ("global", global_command),
    ("demo", demo_command),
    ("counterfactual", counterfactual),
    ("run", run_command),
]
GROUPS: list[tuple[str, typer.Typer]] = [("smooth", smooth_app), ("rl", rl_app)]

for _name, _command in COMMANDS:
    app.command(_name)(_command)
for _name, _group in GROUPS:
    app.add_typer(_group, name=_name)
