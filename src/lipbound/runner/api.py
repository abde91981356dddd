"""``lipbound.run``: certify a whole data set, resumably, on a local process pool or a Ray cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lipbound.runner.executors import make_executor
from lipbound.runner.spec import RunSpec, prepare
from lipbound.runner.store import JsonlStore, keyed_path
from lipbound.runner.summary import summarize


@dataclass
class RunResult:
    """``path``: the JSONL written; ``records``: one per input (sorted by index); ``computed``: inputs processed
    by THIS call (the rest came from an earlier, interrupted run); ``dropped``: corrupt lines found and redone."""

    path: Path
    key: str
    records: list[dict[str, Any]]
    computed: int
    skipped: int
    dropped: list[str]
    seconds: float
    summary: dict[str, Any]


def run(
    task: str | None = None,
    data: str | None = None,
    out: str | Path = "results.jsonl",
    *,
    model: str | None = None,
    eps: float = 0.1,
    norm: str | int = "inf",
    options: dict[str, Any] | None = None,
    executor: str = "local",
    workers: int | None = None,
    limit: int | None = None,
    time_budget: float | None = None,
    retries: int = 0,
    retry_failed: bool = False,
    address: str | None = None,
    dtype: str = "float64",
    spec: RunSpec | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run ``task`` (a name of :data:`lipbound.runner.tasks.TASKS`: ``local``, ``bab``, ``monotone``) on every
    input of ``data`` (a bundled data set such as ``digits`` or a .npz/.npy/.pt/.csv file) with ``model`` (a
    bundled name or a model file) on the box ``B_norm(x_i, eps)``; records go to the JSONL ``out``.

    Everything is validated before work starts. Re-running the same call resumes: inputs already recorded are
    skipped; a changed spec/model/data writes to ``<out stem>.<key12>.jsonl`` instead (never mixes). Failures are
    recorded (``status`` ``error``/``timeout``) and never stop the run; ``retry_failed=True`` redoes them.
    ``on_start(total, todo)`` and ``on_record(record)`` report progress.
    """
    if spec is None:
        spec = RunSpec(
            task=task, model=model, data=data, out=str(out), eps=eps, norm=str(norm), options=dict(options or {}),
            executor=executor, workers=workers, limit=limit, time_budget=time_budget, retries=retries,
            retry_failed=retry_failed, address=address, dtype=dtype,
        )  # fmt: skip
    t0 = time.perf_counter()
    prep = prepare(spec)
    path = keyed_path(spec.out, prep.key)
    store = JsonlStore(path, prep.key, {"spec": spec.identity()})
    with store:
        done = {i for i, r in store.done.items() if r.get("status") == "ok" or not spec.retry_failed}
        todo = [i for i in prep.indices if i not in done]
        if on_start is not None:
            on_start(len(prep.indices), len(todo))
        computed = 0
        if todo:
            ex = make_executor(spec.executor, spec.workers, spec.address)
            x = prep.x.numpy()
            for record in ex.map(asdict(spec), prep.input_shape, x, todo):
                store.write(record)
                computed += 1
                if on_record is not None:
                    on_record(record)
        wanted = set(prep.indices)
        records = [r for r in store.records() if r["index"] in wanted]
    return RunResult(
        path=path,
        key=prep.key,
        records=records,
        computed=computed,
        skipped=len(prep.indices) - len(todo),
        dropped=store.dropped,
        seconds=time.perf_counter() - t0,
        summary=summarize(records),
    )
