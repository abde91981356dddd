"""Memory caps for bound propagation: parse ``max_memory``, estimate the bytes of a back-substitution, chunk rows.

A back-substitution of ``S`` specification rows holds coefficient tensors whose size is proportional to ``S``
(rows are independent: every bound is computed from its own row only), so splitting the rows into chunks and
concatenating the results gives the same bounds. The estimate is measured, not guessed: the first chunk is a
probe of :data:`PROBE_ROWS` rows whose back-substitution reports the largest number of coefficient elements held
at once (``stats["peak_elements"]`` of :func:`lipbound.engine.crown.backsubstitute`); a row then costs about

    bytes_per_row = WORKING_FACTOR * itemsize * peak_elements / rows

(:data:`WORKING_FACTOR` covers the temporaries of one relaxation step: positive/negative parts, relaxation
lines read at the windows, rounding terms), and the remaining rows go in chunks of ``floor(cap / bytes_per_row)``.
"""

from __future__ import annotations

import re

from lipbound.errors import InvalidInputError

#: live row-sized temporaries per coefficient element counted by ``peak_elements`` (measured: see
#: benchmarks/results/conv.md, memory vs cap)
WORKING_FACTOR = 10
#: default ``max_memory`` of :func:`lipbound.local_lipschitz` and :func:`lipbound.jacobian_bounds`
DEFAULT_MAX_MEMORY = "256MB"  # measured fastest on the CIFAR-size CNN (benchmarks/results/conv.md)
#: rows of the probe chunk that measures the per-row cost
PROBE_ROWS = 8

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_memory(value: int | float | str | None) -> int | None:
    """``max_memory`` in bytes: an int / float (bytes) or a string ``"2GB"``, ``"512MB"``, ``"1.5g"`` (binary
    units); ``None`` means no cap."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInputError(f"max_memory must be bytes or a string like '2GB', got {value!r}")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise InvalidInputError(f"max_memory must be bytes or a string like '2GB' or '512MB', got {value!r}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not n > 0:
        raise InvalidInputError(f"max_memory must be positive, got {value!r}")
    return int(n)


def rows_per_chunk(cap: int, peak_elements: int, rows: int, itemsize: int) -> int:
    """Rows that fit under ``cap`` bytes, from a probe of ``rows`` rows that held ``peak_elements`` elements."""
    per_row = WORKING_FACTOR * itemsize * max(peak_elements, 1) / max(rows, 1)
    return max(1, int(cap // per_row))
