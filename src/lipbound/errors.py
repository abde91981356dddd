"""Errors raised by lipbound. Every user-facing failure is one of these, with a specific message."""

from __future__ import annotations


class LipboundError(Exception):
    """Base class of all lipbound errors."""


class UnsupportedOperatorError(LipboundError):
    """The model contains an operator the bound engine has no rules for."""

    def __init__(self, op: str, where: str, supported: list[str] | None = None, hint: str = "") -> None:
        self.op = op
        self.where = where
        msg = f"unsupported operator {op!r} at {where!r}"
        if hint:
            msg += f" ({hint})"
        if supported:
            msg += ". Supported: " + ", ".join(sorted(supported))
        super().__init__(msg)


class ShapeMismatchError(LipboundError):
    """Two tensors that must agree in shape do not."""


class InvalidInputError(LipboundError, ValueError):
    """An argument has an invalid value (negative eps, NaN inputs, empty box, ...)."""


class InvalidModelError(LipboundError, ValueError):
    """The model has invalid parameters (NaN/inf weights, training-mode BatchNorm, ...)."""


class ModelLoadError(LipboundError):
    """A model file or factory could not be loaded."""


class SolverError(LipboundError):
    """A numerical solver failed and no fallback was possible."""
