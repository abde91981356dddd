"""Benchmark driver (``make bench``): every suite ``benchmarks/<name>_bench.py`` in one run.

A suite module defines ``run(quick: bool = False)`` returning a JSON-serialisable result (a dict or a list of
rows) and, optionally, ``to_markdown(result)`` / ``markdown(result)`` rendering it. The driver writes
``<out>/<name>.json`` and ``<out>/<name>.md`` atomically (temp file, then rename) as each suite finishes, and
``<out>/README.md`` concatenates the Markdown tables of every suite present (suites not re-run keep their tables).
A suite that raises is reported and does not stop the others. ``local`` runs first, then the rest by name.

Usage: ``python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def suites() -> list[str]:
    """Names of the benchmark suites in this directory (``local`` first)."""
    names = sorted(p.name[: -len("_bench.py")] for p in HERE.glob("*_bench.py"))
    return sorted(names, key=lambda n: (n != "local", n))


def _generic_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_suite(name: str, out: Path, quick: bool) -> str:
    """Run ``benchmarks/<name>_bench.py:run()``, write its JSON and Markdown, return the Markdown."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", HERE / f"{name}_bench.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    params = inspect.signature(mod.run).parameters
    kwargs: dict[str, Any] = {"quick": quick} if "quick" in params else {}
    if "progress" in params:
        kwargs["progress"] = _log
    _log(f"{name}: running")
    result = mod.run(**kwargs)
    if isinstance(result, str):
        md = result
    else:
        write_atomic(out / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
        render = getattr(mod, "to_markdown", None) or getattr(mod, "markdown", None)
        if callable(render):
            md = render(result)
        elif isinstance(result, dict) and isinstance(result.get("markdown"), str):
            md = result["markdown"]
        else:
            rows = result.get("rows", []) if isinstance(result, dict) else result
            md = f"## {name}\n\n" + _generic_table(list(rows))
    write_atomic(out / f"{name}.md", md)
    return md


def main(argv: list[str] | None = None) -> int:
    available = suites()
    ap = argparse.ArgumentParser(description="Run lipbound's benchmarks and write JSON + Markdown tables.")
    ap.add_argument("--quick", action="store_true", help="few cases (a smoke test)")
    ap.add_argument("--only", help=f"comma-separated suites to run (default: all of {', '.join(available)})")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    args = ap.parse_args(argv)
    chosen = available if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in available]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(available)}")
    args.out.mkdir(parents=True, exist_ok=True)
    parts, failed = [], []
    for name in chosen:
        try:
            parts.append(run_suite(name, args.out, args.quick))
        except Exception as e:  # one broken suite must not lose the others' results
            _log(f"{name}: FAILED: {type(e).__name__}: {e}")
            failed.append(name)
    print("\n\n".join(parts))
    # the index keeps the tables of suites not re-run this time (--only)
    tables = [(args.out / f"{n}.md").read_text() for n in available if (args.out / f"{n}.md").exists()]
    write_atomic(args.out / "README.md", "# lipbound benchmark results\n\n" + "\n\n".join(tables) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
