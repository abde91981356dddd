"""One worker: builds the model ONCE (trace to the graph IR, cast to the spec's dtype) and certifies single inputs.

:meth:`Worker.run` never raises for a failing input: it returns a record ``{"index", "status", <task numbers>,
"seconds", "attempts", "error"}`` with ``status`` ``"ok"``, ``"error"`` (the task raised; ``error`` holds the
exception type and message) or ``"timeout"`` (the hard per-attempt budget ran out). A failed attempt is retried
``retries`` times. The hard budget uses ``SIGALRM`` (POSIX, main thread only: process-pool and Ray workers
run tasks there); elsewhere only the task's own budget (e.g. BaB ``time_budget``) applies.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from lipbound.runner.spec import RunSpec, build_model
from lipbound.runner.tasks import TASKS, task_dtype


class InputTimeout(Exception):
    """The per-input time budget ran out."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`InputTimeout` in this thread after ``seconds`` (no-op if None or not the main thread)."""
    usable = (
        seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _expire(signum: int, frame: Any) -> None:
        raise InputTimeout(f"time budget of {seconds:g} s exceeded")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Worker:
    """Holds the traced model and the task for a spec (given as a dict so it pickles to any process)."""

    def __init__(self, spec: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        from lipbound.graph import trace

        self.spec = RunSpec(**spec)
        torch.set_num_threads(self.spec.threads)
        self.dtype = task_dtype(self.spec.dtype)
        model, _ = build_model(self.spec.model)
        model = model.to(self.dtype)  # an nn.Module or a lipbound Graph (ONNX); traced once, reused per input
        self.graph = trace(model, tuple(input_shape)) if isinstance(model, torch.nn.Module) else model
        self.task = TASKS[self.spec.task]

    def run(self, index: int, x: np.ndarray) -> dict[str, Any]:
        s = self.spec
        xt = torch.as_tensor(np.asarray(x)).to(self.dtype).unsqueeze(0)
        record: dict[str, Any] = {"index": int(index)}
        t0 = time.perf_counter()
        attempts = 0
        for _ in range(s.retries + 1):
            attempts += 1
            try:
                with time_limit(s.time_budget):
                    numbers = self.task.fn(self.graph, xt, float(s.eps), str(s.norm), dict(s.options))
                record.update(status="ok", **numbers, error=None)
                break
            except InputTimeout as e:
                record.update(status="timeout", error=str(e))
            except Exception as e:  # a failing input is recorded, never stops the run
                record.update(status="error", error=f"{type(e).__name__}: {' '.join(str(e).split())}"[:500])
        record.update(seconds=time.perf_counter() - t0, attempts=attempts)
        return record
