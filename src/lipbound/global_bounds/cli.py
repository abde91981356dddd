"""Compatibility alias: ``lipbound global`` lives in :mod:`lipbound.cli.global_` (the CLI is one package)."""

from lipbound.cli.global_ import global_command

__all__ = ["global_command"]
