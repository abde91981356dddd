"""The task registry: ONE table, task name -> :class:`Task` (a callable ``(graph, x, eps, norm, options) -> dict
of numbers`` for ONE input ``x`` of shape ``(1, *input_shape)``).

An application adds its task with one row in :data:`TASKS`. Every callable uses only lipbound's public API; the
record's numbers keep the API's guarantees:

* ``local``: :func:`lipbound.local_lipschitz`; ``upper`` is CERTIFIED (``L <= upper``) and ``lower`` ATTAINED
  (``lower <= L``) for ``L = sup_{x in B_p(x0, eps)} ||J(x)^T c||_q`` (``c`` None on a vector output: the max over
  output rows, i.e. the ``l_p -> l_inf`` operator norm of the Jacobian).
* ``bab``: :func:`lipbound.local_lipschitz_bab`, the same two numbers tightened by Branch and Bound.
* ``monotone``: :func:`lipbound.certify_monotonicity`; counts of (direction, feature) pairs certified
  non-decreasing / non-increasing on the box and of pairs with a sampled counterexample.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lipbound.local import local_lipschitz, local_lipschitz_bab
from lipbound.monotonicity import certify_monotonicity
from lipbound.runner.errors import RunSpecError

TaskFn = Callable[[Any, Tensor, float, str, dict[str, Any]], dict[str, float]]
# keywords the runner itself passes; a spec's options may not set them
RESERVED = ("model", "x0", "eps", "norm", "x_lower", "x_upper", "dtype", "device")


@dataclass(frozen=True)
class Task:
    fn: TaskFn
    api: Callable[..., Any]  # the public function whose keyword options the task accepts
    summary: str
    headline: str  # the number the summary and plot show


def _local(graph: Any, x: Tensor, eps: float, norm: str, options: dict[str, Any]) -> dict[str, float]:
    r = local_lipschitz(graph, x, eps, norm, **options)
    return {
        "upper": float(r.upper_max[0]),
        "lower": float(r.lower_max[0]),
        "unstable_neurons": int(r.details["unstable_neurons"]),
    }


def _bab(graph: Any, x: Tensor, eps: float, norm: str, options: dict[str, Any]) -> dict[str, float]:
    r = local_lipschitz_bab(graph, x, eps, norm, **options)
    stats = r.details["bab"]
    return {
        "upper": float(r.upper_max[0]),
        "lower": float(r.lower_max[0]),
        "domains": int(sum(s["domains_evaluated"] for s in stats)),
    }


def _monotone(graph: Any, x: Tensor, eps: float, norm: str, options: dict[str, Any]) -> dict[str, float]:
    if norm != "inf":
        raise RunSpecError("task 'monotone' certifies on the l_inf box; use norm inf")
    r = certify_monotonicity(graph, x, eps, **options)
    return {
        "increasing": int(r.increasing.sum()),
        "decreasing": int(r.decreasing.sum()),
        "violated_increasing": int(r.violated_increasing.sum()),
        "violated_decreasing": int(r.violated_decreasing.sum()),
        "pairs": int(r.increasing.numel()),
    }


TASKS: dict[str, Task] = {
    "local": Task(_local, local_lipschitz, "certified upper / attained lower local Lipschitz bound", "upper"),
    "bab": Task(_bab, local_lipschitz_bab, "local bound tightened by Branch and Bound", "upper"),
    "monotone": Task(_monotone, certify_monotonicity, "certified monotone (direction, feature) pairs", "increasing"),
}


def check_options(task: str, options: dict[str, Any]) -> None:
    """Every option must be a keyword of the task's API function (and not one the runner sets itself)."""
    params = inspect.signature(TASKS[task].api).parameters
    accepted = [p for p in params if p not in RESERVED]
    bad = sorted(k for k in options if k not in accepted)
    if bad:
        raise RunSpecError(f"task {task!r} does not accept option(s) {bad}; accepted: {', '.join(accepted)}")


def task_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]
