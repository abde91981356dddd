"""Append-only JSONL store: a header line naming the run key, then one record per input.

Durability: every record is written as ONE line, then ``flush`` + ``os.fsync``, so a kill (SIGTERM, SIGKILL,
power loss after fsync) loses at most the inputs in flight. On open, the file is scanned: a line that does not
parse as a JSON object with an integer ``index`` or that lacks its final newline (a partial write) is reported
and, if it is the last line, truncated away so the input is redone. Indices with a valid record are ``done``;
a later record for the same index (a failed input redone with ``retry_failed``) replaces the earlier one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lipbound.errors import InvalidInputError

HEADER_KIND = "lipbound-run"


def keyed_path(out: str | Path, key: str) -> Path:
    """``out`` if it is new or holds run ``key``; otherwise the sibling ``<stem>.<key[:12]><suffix>``, so a
    changed spec/model/data never appends to another run's file."""
    out = Path(out)
    if not out.exists() or _header_key(out) == key:
        return out
    return out.with_name(f"{out.stem}.{key[:12]}{out.suffix or '.jsonl'}")


def _header_key(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline()
        head = json.loads(first)
        return head.get("key") if isinstance(head, dict) and head.get("kind") == HEADER_KIND else None
    except (OSError, ValueError):
        return None


class JsonlStore:
    """Records of one run (``key``) in ``path``; open with :meth:`open`, append with :meth:`write`."""

    def __init__(self, path: str | Path, key: str, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.meta = meta or {}
        self.done: dict[int, dict[str, Any]] = {}
        self.dropped: list[str] = []  # descriptions of corrupt lines found on open
        self._f: Any = None

    def open(self) -> JsonlStore:
        if not self.path.parent.is_dir():
            raise InvalidInputError(f"output directory {str(self.path.parent)!r} does not exist")
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            self._scan()
        self._f = open(self.path, "ab")  # noqa: SIM115 (kept open across writes; closed by close())
        if fresh:
            self._append({"kind": HEADER_KIND, "key": self.key, **self.meta})
        return self

    def _scan(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # ``tail`` is b"" when the file ends with a newline
        offset = 0
        for n, line in enumerate(complete):
            rec = _parse(line)
            if n == 0:
                if rec is None or rec.get("kind") != HEADER_KIND or rec.get("key") != self.key:
                    raise InvalidInputError(f"{str(self.path)!r} is not the output of this run (header mismatch)")
            elif rec is None or not isinstance(rec.get("index"), int):
                self.dropped.append(f"line {n + 1}: {line[:80]!r}")
                if n == len(complete) - 1 and not tail:
                    break  # corrupt LAST line: truncated away below, its input redone
            else:
                self.done[rec["index"]] = rec
            offset += len(line) + 1
        else:
            if tail:
                self.dropped.append(f"partial last line: {tail[:80]!r}")
        if offset < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())

    def _append(self, obj: dict[str, Any]) -> None:
        self._f.write((json.dumps(obj, allow_nan=True) + "\n").encode())
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` durably (one line, flushed and fsynced) and mark its index done."""
        self._append(record)
        self.done[int(record["index"])] = record

    def records(self) -> list[dict[str, Any]]:
        """Every record, sorted by index (one per index)."""
        return [self.done[i] for i in sorted(self.done)]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> JsonlStore:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
