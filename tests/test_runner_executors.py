"""lipbound.run executors: a killed run (SIGTERM / SIGKILL) resumes to exactly the uninterrupted output; the
process pool and Ray give the same records as the in-process run; the CLI end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lipbound

N = 12
KW = dict(model="digits-mlp", eps=0.05, limit=N)
# the runner's own entry point (python -m lipbound.runner.cli == `lipbound run`, without importing every command)
RUN = [sys.executable, "-m", "lipbound.runner.cli"]
FLAGS = ["--task", "local", "--model", "digits-mlp", "--data", "digits", "--eps", "0.05", "--limit", str(N)]
CLI = [*RUN, *FLAGS, "--quiet", "--no-plot"]


def _numbers(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted in-process run (workers=1)."""
    return lipbound.run("local", "digits", tmp_path_factory.mktemp("ref") / "ref.jsonl", workers=1, **KW)


def _body(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:] if path.exists() else []


@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGTERM, 1), (signal.SIGKILL, 2)])
def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path, reference, sig, workers):
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([*CLI, "--out", str(out), "--workers", str(workers)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(_body(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(sig)
    rc = proc.wait(30)
    assert rc == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    n_before = len([line for line in _body(out) if line.endswith("}")])
    assert 3 <= n_before < N  # really interrupted midway
    res = lipbound.run("local", "digits", out, workers=1, **KW)
    assert res.skipped >= n_before - 1 and res.computed == N - res.skipped
    assert _numbers(res.records) == _numbers(reference.records)
    indices = [json.loads(line)["index"] for line in _body(out)]
    assert sorted(indices) == list(range(N))  # no duplicate, none missing


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_matches_in_process(tmp_path, reference, ray_local):
    res = lipbound.run("local", "digits", tmp_path / "ray.jsonl", executor="ray", workers=2, **KW)
    assert res.computed == N
    assert _numbers(res.records) == _numbers(reference.records)


def test_cli_summary_json_plot_and_bad_input(tmp_path, reference):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"task: local\nmodel: digits-mlp\ndata: digits\neps: 0.05\nout: {reference.path}\n")
    env = {**os.environ, "COLUMNS": "120"}
    args = [str(spec), "--limit", str(N), "--workers", "1", "--json", "-", "--plot", str(tmp_path / "p.png")]
    run = subprocess.run([*RUN, *args], capture_output=True, env=env, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["computed"], summary["skipped"], summary["status"]) == (0, N, {"ok": N})  # resumed: all done
    uppers = [r["upper"] for r in reference.records]
    assert summary["distribution"]["upper"]["max"] == pytest.approx(max(uppers))
    assert (tmp_path / "p.png").stat().st_size > 1000
    lipbound_run = [sys.executable, "-c", "from lipbound.cli import app; app()", "run"]  # the registered command
    bad_flags = [*FLAGS[:1], "nope", *FLAGS[2:], "--out", str(tmp_path / "x.jsonl")]
    bad = subprocess.run([*lipbound_run, *bad_flags], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown task 'nope'" in bad.stderr and not (tmp_path / "x.jsonl").exists()
