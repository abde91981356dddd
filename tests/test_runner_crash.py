"""lipbound.run with a process pool: an input whose worker process dies (segfault, OOM kill) gets an error record;
every other input, including those in flight when the pool broke, is certified normally."""

from __future__ import annotations

import sys
import textwrap

import numpy as np

import lipbound

FACTORY = textwrap.dedent(
    """
    import os
    import torch
    from lipbound.runner import tasks


    def _maybe_die(graph, x, eps, norm, options):
        v = float(x[0, 0])
        if v > 0.5:
            os._exit(7)  # as a segfault or an OOM kill would: no exception, the process is gone
        return {"value": v}


    def build():
        tasks.TASKS["die"] = tasks.Task(_maybe_die, lambda **k: None, "test", "value")  # in the worker process
        return torch.nn.Linear(3, 1)
    """
)


def test_dying_worker_is_isolated_and_recorded(tmp_path, monkeypatch):
    (tmp_path / "crashy_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    import crashy_factory

    crashy_factory.build()  # registers the task in this process too (the spec is validated here)
    monkeypatch.setitem(lipbound.runner.tasks.TASKS, "die", lipbound.runner.tasks.TASKS["die"])
    x = np.zeros((6, 3))
    x[:, 0] = [0.0, 0.1, 0.9, 0.2, 0.3, 0.4]
    np.save(tmp_path / "x.npy", x)
    res = lipbound.run("die", str(tmp_path / "x.npy"), tmp_path / "d.jsonl", model="crashy_factory:build", eps=0.1,
                       workers=2)  # fmt: skip
    by = {r["index"]: r for r in res.records}
    assert sorted(by) == [0, 1, 2, 3, 4, 5]
    assert by[2]["status"] == "error" and "worker process died" in by[2]["error"]
    for i in (0, 1, 3, 4, 5):
        assert by[i]["status"] == "ok" and by[i]["value"] == x[i, 0]
    assert res.summary["status"] == {"ok": 5, "error": 1}
