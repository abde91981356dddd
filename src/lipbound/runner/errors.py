"""The runner's error classes (below :mod:`~lipbound.runner.spec` and :mod:`~lipbound.runner.tasks`, which both
raise them)."""

from lipbound.errors import InvalidInputError, ShapeMismatchError


class RunSpecError(InvalidInputError):
    """The run specification is invalid (unknown task or option, bad value, unreadable spec file)."""


class RunDataError(InvalidInputError):
    """The data set named by the spec is missing or unreadable."""


class RunShapeError(ShapeMismatchError):
    """The data set's per-sample shape does not match the model's input shape."""
