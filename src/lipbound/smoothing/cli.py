"""Compatibility alias: ``lipbound smooth`` lives in :mod:`lipbound.cli.smooth` (the CLI is one package)."""

from lipbound.cli.smooth import app, certify_command, predict_command

__all__ = ["app", "certify_command", "predict_command"]
