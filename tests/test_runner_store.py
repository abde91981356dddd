"""lipbound.run: resume, corrupt last lines, changed specs, failures, time budgets and retries."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import lipbound
from lipbound.runner import tasks as task_registry
from lipbound.runner.tasks import Task

KW = dict(model="digits-mlp", eps=0.05, workers=1)


def _numbers(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_skips_done_inputs_and_extends(tmp_path):
    out = tmp_path / "r.jsonl"
    first = lipbound.run("local", "digits", out, limit=3, **KW)
    assert (first.computed, first.skipped) == (3, 0)
    again = lipbound.run("local", "digits", out, limit=3, **KW)
    assert (again.computed, again.skipped) == (0, 3)
    more = lipbound.run("local", "digits", out, limit=5, **KW)
    assert (more.computed, more.skipped) == (2, 3)
    full = lipbound.run("local", "digits", tmp_path / "ref.jsonl", limit=5, **KW)
    assert _numbers(more.records) == _numbers(full.records)
    body = _lines(out)[1:]
    assert sorted(r["index"] for r in body) == [0, 1, 2, 3, 4]  # no duplicates


@pytest.mark.parametrize("damage", ["partial", "garbage"])
def test_corrupt_last_line_is_redone(tmp_path, damage):
    out = tmp_path / "r.jsonl"
    ref = lipbound.run("local", "digits", out, limit=3, **KW)
    text = out.read_text().splitlines(keepends=True)
    last = text[-1]
    text[-1] = last[: len(last) // 2] if damage == "partial" else "}{ not json\n"
    out.write_text("".join(text))
    res = lipbound.run("local", "digits", out, limit=3, **KW)
    assert res.computed == 1 and len(res.dropped) == 1
    assert _numbers(res.records) == _numbers(ref.records)
    body = _lines(out)[1:]  # the file parses again, one record per index
    assert sorted(r["index"] for r in body) == [0, 1, 2]


def test_changed_spec_writes_a_new_file(tmp_path):
    out = tmp_path / "r.jsonl"
    a = lipbound.run("local", "digits", out, limit=2, **KW)
    before = out.read_text()
    b = lipbound.run("local", "digits", out, limit=2, **{**KW, "eps": 0.02})
    assert a.path == out and b.path != out and b.path.name.startswith("r.") and b.computed == 2
    assert out.read_text() == before
    assert [r["upper"] for r in b.records] != [r["upper"] for r in a.records]
    assert lipbound.run("local", "digits", out, limit=2, **{**KW, "eps": 0.02}).path == b.path  # and resumes there


@pytest.fixture
def flaky_task(monkeypatch):
    """A registry row that fails on inputs whose first pixel is bright, sleeps on others, flakes once on a third."""
    calls = {"n": 0}

    def fn(graph, x, eps, norm, options):
        v = float(x[0, 0])
        if v > 0.5:
            raise ValueError(f"bright pixel {v:.2f}")
        if v < -0.5:
            time.sleep(5)
        if 0.2 < v < 0.3:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("transient")
        return {"value": v}

    monkeypatch.setitem(task_registry.TASKS, "flaky", Task(fn, lambda **k: None, "test", "value"))
    return calls


def test_failures_timeouts_and_retries_are_recorded(tmp_path, flaky_task):
    x = np.zeros((4, 64))
    x[1, 0], x[2, 0], x[3, 0] = 0.9, -0.9, 0.25
    np.save(tmp_path / "x.npy", x)
    res = lipbound.run("flaky", str(tmp_path / "x.npy"), tmp_path / "f.jsonl", time_budget=0.3, retries=1, **KW)
    by = {r["index"]: r for r in res.records}
    assert by[0]["status"] == "ok" and by[0]["value"] == 0.0 and by[0]["attempts"] == 1
    assert by[1]["status"] == "error" and "ValueError: bright pixel 0.90" in by[1]["error"] and by[1]["attempts"] == 2
    assert by[2]["status"] == "timeout" and by[2]["attempts"] == 2 and by[2]["seconds"] < 2
    assert by[3]["status"] == "ok" and by[3]["attempts"] == 2
    assert res.summary["status"] == {"ok": 2, "error": 1, "timeout": 1}
    again = lipbound.run("flaky", str(tmp_path / "x.npy"), tmp_path / "f.jsonl", time_budget=0.3, retries=1, **KW)
    assert again.computed == 0  # failures count as done...
    redo = lipbound.run("flaky", str(tmp_path / "x.npy"), tmp_path / "f.jsonl", time_budget=0.3, retry_failed=True,
                        retries=1, **KW)  # fmt: skip
    assert redo.computed == 2 and len(redo.records) == 4  # ...unless asked; the redone record replaces the old
