"""The ``lipbound`` command line, one module per command.

* :mod:`lipbound.cli.common`: model loading, input shapes, output directions, JSON output, error printing and the
  exit-code contract (0 ok, 2 bad input, 1 internal fault) shared by every command;
* :mod:`lipbound.cli.local`, :mod:`~lipbound.cli.monotone`, :mod:`~lipbound.cli.exact`,
  :mod:`~lipbound.cli.global_`, :mod:`~lipbound.cli.demo`, :mod:`~lipbound.cli.smooth`: the commands;
* :mod:`lipbound.cli.main`: the Typer ``app`` (the console script ``lipbound = lipbound.cli:app``), which also
  mounts the applications' own commands (``counterfactual``, ``rl``, ``run``).

The names below are re-exported so that ``from lipbound.cli import app, parse_direction, ...`` keeps working.
"""

from lipbound.cli.common import (
    BUNDLED_PREFIX,
    CLI_WORDING,
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    DType,
    Method,
    Norm,
    cli_errors,
    cli_wording,
    fail,
    gap,
    load_cli_model,
    parse_direction,
    parse_shape,
    read_cli_inputs,
    shape_inputs,
    to_graph,
    user_errors,
    write_json_atomic,
)
from lipbound.cli.demo import demo_command
from lipbound.cli.exact import exact_command
from lipbound.cli.global_ import global_command
from lipbound.cli.local import local_command
from lipbound.cli.main import app
from lipbound.cli.monotone import monotone_command

__all__ = [
    "BUNDLED_PREFIX",
    "CLI_WORDING",
    "EXIT_INTERNAL_ERROR",
    "EXIT_USER_ERROR",
    "DType",
    "Method",
    "Norm",
    "app",
    "cli_errors",
    "cli_wording",
    "demo_command",
    "exact_command",
    "fail",
    "gap",
    "global_command",
    "load_cli_model",
    "local_command",
    "monotone_command",
    "parse_direction",
    "parse_shape",
    "read_cli_inputs",
    "shape_inputs",
    "to_graph",
    "user_errors",
    "write_json_atomic",
]
