"""Executors: run :class:`~lipbound.runner.worker.Worker` over input indices and yield records as they finish.

* :class:`LocalExecutor`: ``workers == 1`` runs in this process; otherwise a ``spawn`` process pool of ``workers``
  processes (default: one per core), each building the model ONCE in its initializer; at most ``2 * workers``
  inputs are in flight, so an interrupted run loses at most those. A worker process that dies (OOM kill, segfault)
  breaks the pool; its in-flight inputs are rerun one at a time in a fresh pool to isolate the one that kills it.
* :class:`RayExecutor`: Ray actors (one per worker, each building the model once), the spec and the input array
  put ONCE in the object store and shared by reference; ``address=None`` starts a local Ray instance
  (``ray.init()``), otherwise joins an existing cluster (``ray start --head`` prints the address).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch

from lipbound.runner.worker import Worker

_WORKER: Worker | None = None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _init_worker(spec: dict[str, Any], input_shape: tuple[int, ...], parent: int) -> None:
    global _WORKER
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _WORKER = Worker(spec, input_shape)


def _exit_with_parent(parent: int) -> None:
    """A pool worker outlives a SIGKILLed parent (it holds its own queue pipes); end it when the parent is gone."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run_one(index: int, x: np.ndarray) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER.run(index, x)


class LocalExecutor:
    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()

    def map(
        self, spec: dict[str, Any], input_shape: tuple[int, ...], x: np.ndarray, indices: list[int]
    ) -> Iterator[dict[str, Any]]:
        if self.workers == 1:
            threads = torch.get_num_threads()  # the worker sets the spec's thread count; restore the caller's
            try:
                worker = Worker(spec, input_shape)
                for i in indices:
                    yield worker.run(i, x[i])
            finally:
                torch.set_num_threads(threads)
            return
        ctx = mp.get_context("spawn")
        todo = list(reversed(indices))  # popped from the end, in order
        suspects: list[int] = []  # inputs in flight when a worker died: rerun one at a time to find the culprit
        while todo or suspects:
            yield from self._pool_round(ctx, spec, input_shape, x, todo, suspects)

    def _pool_round(
        self, ctx: Any, spec: dict[str, Any], input_shape: tuple[int, ...], x: np.ndarray, todo: list[int],
        suspects: list[int],
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """One process pool, used until the inputs run out or a worker process dies.

        A dead worker (killed by the OS for memory, a segfault in native code) breaks the whole pool and every
        in-flight input with it. Those inputs become *suspects* and are rerun alone in a fresh pool; a suspect that
        breaks the pool alone gets an ``"error"`` record (``worker process died``) and the run goes on.
        """
        with ProcessPoolExecutor(
            self.workers, ctx, initializer=_init_worker, initargs=(spec, input_shape, os.getpid())
        ) as pool:
            pending: dict[Future, int] = {}
            t0: dict[int, float] = {}
            try:
                while True:
                    limit = 1 if suspects else 2 * self.workers
                    while len(pending) < limit and (suspects or todo):
                        i = suspects.pop() if suspects else todo.pop()
                        t0[i] = time.perf_counter()
                        pending[pool.submit(_run_one, i, x[i])] = i
                    if not pending:
                        return
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        i = pending.pop(f)
                        try:
                            record = f.result()
                        except BrokenProcessPool:
                            lost = [i, *pending.values()]
                            if len(lost) == 1 and limit == 1:  # it ran alone: this input kills its worker
                                yield _died_record(i, time.perf_counter() - t0[i])
                            else:
                                suspects.extend(sorted(lost, reverse=True))
                            pending.clear()
                            return
                        yield record
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): drop in-flight inputs now, they are redone on resume
                for f in pending:
                    f.cancel()
                for p in list((getattr(pool, "_processes", None) or {}).values()):
                    p.terminate()
                raise


def _died_record(index: int, seconds: float) -> dict[str, Any]:
    return {
        "index": int(index),
        "status": "error",
        "error": "worker process died while certifying this input (out of memory or a crash in native code); "
        "it was rerun alone and died again",
        "seconds": seconds,
        "attempts": 1,
    }


class RayExecutor:
    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers
        self.address = address

    def map(
        self, spec: dict[str, Any], input_shape: tuple[int, ...], x: np.ndarray, indices: list[int]
    ) -> Iterator[dict[str, Any]]:
        import ray

        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.workers or default_workers(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor_cls = ray.remote(num_cpus=1)(_RayWorker)
        spec_ref = ray.put((spec, tuple(input_shape)))  # shipped once, shared by every actor
        x_ref = ray.put(np.ascontiguousarray(x))
        actors = [actor_cls.remote(spec_ref, x_ref) for _ in range(n)]
        todo = iter(indices)
        pending: dict[Any, Any] = {}
        idle = list(actors)
        try:
            while True:
                while idle:
                    i = next(todo, None)
                    if i is None:
                        break
                    a = idle.pop()
                    pending[a.run.remote(i)] = a
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    idle.append(pending.pop(ref))
                    yield ray.get(ref)
        finally:  # killing the actors drops their in-flight inputs (not recorded, redone on resume)
            for a in actors:
                ray.kill(a)


class _RayWorker:
    """Ray actor body: the model is built once, the inputs array is the shared object-store copy."""

    def __init__(self, spec_and_shape: tuple[dict[str, Any], tuple[int, ...]], x: np.ndarray) -> None:
        spec, shape = spec_and_shape
        self.worker = Worker(spec, shape)
        self.x = x

    def run(self, index: int) -> dict[str, Any]:
        return self.worker.run(index, self.x[index])


def make_executor(name: str, workers: int | None, address: str | None = None) -> LocalExecutor | RayExecutor:
    return RayExecutor(workers, address) if name == "ray" else LocalExecutor(workers)
