"""Benchmark driver (``make bench``): local bounds (``local_bench.py``) and, when present, global bounds.

Writes ``<out>/local.json`` + ``<out>/local.md`` and, if ``benchmarks/global_bench.py`` exists, its ``run()``
result as ``<out>/global.json`` + ``<out>/global.md``; ``<out>/README.md`` concatenates the Markdown tables.
JSON files are written atomically (temp file, then rename).

Usage: ``python benchmarks/run.py [--quick] [--only local|global] [--out DIR]``.
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

import local_bench  # noqa: E402


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


def run_local(out: Path, quick: bool) -> str:
    result = local_bench.run(quick=quick, progress=_log)
    md = local_bench.to_markdown(result)
    write_atomic(out / "local.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "local.md", md)
    return md


def _generic_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_global(out: Path, quick: bool) -> str | None:
    """Call ``benchmarks/global_bench.py:run()`` if that file exists; its ``to_markdown``/``markdown(result)``
    renders the table (else a str result, a dict's ``markdown`` entry, or a generic table of its rows)."""
    path = HERE / "global_bench.py"
    if not path.exists():
        _log("global: benchmarks/global_bench.py not present, skipped")
        return None
    spec = importlib.util.spec_from_file_location("global_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kwargs = {"quick": quick} if "quick" in inspect.signature(mod.run).parameters else {}
    _log("global: running global_bench.run()")
    result = mod.run(**kwargs)
    if isinstance(result, str):
        md = result
    else:
        write_atomic(out / "global.json", json.dumps(result, indent=2, default=str) + "\n")
        render = getattr(mod, "to_markdown", None) or getattr(mod, "markdown", None)
        if callable(render):
            md = render(result)
        elif isinstance(result, dict) and isinstance(result.get("markdown"), str):
            md = result["markdown"]
        else:
            rows = result.get("rows", []) if isinstance(result, dict) else result
            md = "## Global Lipschitz bounds\n\n" + _generic_table(list(rows))
    write_atomic(out / "global.md", md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run lipbound's benchmarks and write JSON + Markdown tables.")
    ap.add_argument("--quick", action="store_true", help="few cases (a smoke test)")
    ap.add_argument("--only", choices=("local", "global"), help="run only one suite")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.only in (None, "local"):
        parts.append(run_local(args.out, args.quick))
    if args.only in (None, "global"):
        md = run_global(args.out, args.quick)
        if md:
            parts.append(md)
    print("\n\n".join(parts))
    # the index keeps the tables of suites not re-run this time (--only)
    tables = [(args.out / name).read_text() for name in ("local.md", "global.md") if (args.out / name).exists()]
    write_atomic(args.out / "README.md", "# lipbound benchmark results\n\n" + "\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
