"""Data-set runs: certify every input of a data set with one of lipbound's analyses, resumably, locally or on Ray.

Modules: :mod:`~lipbound.runner.spec` (the run spec and its validation), :mod:`~lipbound.runner.tasks` (the task
registry), :mod:`~lipbound.runner.store` (the durable JSONL output), :mod:`~lipbound.runner.executors` (process
pool, Ray), :mod:`~lipbound.runner.summary` (table, plot), :mod:`~lipbound.runner.cli` (``lipbound run``).
"""

from lipbound.runner.api import RunResult, run
from lipbound.runner.spec import RunDataError, RunShapeError, RunSpec, RunSpecError, load_spec_file

__all__ = ["RunDataError", "RunResult", "RunShapeError", "RunSpec", "RunSpecError", "load_spec_file", "run"]
