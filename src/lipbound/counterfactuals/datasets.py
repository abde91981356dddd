"""Offline tabular data for counterfactuals: German credit, breast cancer, or a user's CSV, encoded into [0, 1]^d.

Encoding (:class:`Schema`): numeric column v -> (v - min) / (max - min) with min/max of the full data (integer
columns keep a grid of step 1 / (max - min)); categorical column -> one-hot block. The favourable class is 1
(German: creditability "good"; breast cancer: benign, scikit-learn's target 1). Train/test: a fixed seeded 50/50
split (the paper's 67/33 split leaves under 100 rejected test points on these sizes).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lipbound.errors import InvalidInputError

DATA_PACKAGE = "lipbound.counterfactuals.data"
SPLIT_SEED = 0
GERMAN_LABEL = "creditability"
GERMAN_NUMERIC = (
    "duration_in_month",
    "credit_amount",
    "installment_rate_in_percentage_of_disposable_income",
    "present_residence_since",
    "age_in_years",
    "number_of_existing_credits_at_this_bank",
    "number_of_people_being_liable_to_provide_maintenance_for",
)
#: attributes a counterfactual may not change (protected or not actionable)
GERMAN_IMMUTABLE = ("personal_status_and_sex", "age_in_years", "foreign_worker")


@dataclass
class Column:
    """One raw column: numeric (``lo``, ``hi``, ``integer``) or categorical (``levels``)."""

    name: str
    levels: tuple[str, ...] = ()
    lo: float = 0.0
    hi: float = 1.0
    integer: bool = False
    immutable: bool = False

    @property
    def width(self) -> int:
        return len(self.levels) if self.levels else 1


@dataclass
class Schema:
    """Raw columns -> encoded features in [0, 1]^d; knows immutable, integer and one-hot features."""

    columns: list[Column]
    label: str | None = None

    @property
    def dim(self) -> int:
        return sum(c.width for c in self.columns)

    def spans(self) -> list[tuple[Column, slice]]:
        out, j = [], 0
        for c in self.columns:
            out.append((c, slice(j, j + c.width)))
            j += c.width
        return out

    @property
    def feature_names(self) -> list[str]:
        names = []
        for c in self.columns:
            names += [f"{c.name}={lv}" for lv in c.levels] if c.levels else [c.name]
        return names

    def immutable_mask(self) -> Tensor:
        m = torch.zeros(self.dim, dtype=torch.bool)
        for c, s in self.spans():
            m[s] = c.immutable
        return m

    def one_hot_groups(self) -> list[list[int]]:
        return [list(range(s.start, s.stop)) for c, s in self.spans() if c.levels]

    def integer_steps(self) -> Tensor:
        """Per feature: grid step in encoded units for integer columns, 0 for continuous ones and one-hot blocks."""
        st = torch.zeros(self.dim, dtype=torch.float64)
        for c, s in self.spans():
            if c.integer and not c.levels and c.hi > c.lo:
                st[s] = 1.0 / (c.hi - c.lo)
        return st

    def check_columns(self, header: list[str], where: str) -> None:
        known = {c.name for c in self.columns} | ({self.label} if self.label else set())
        unknown = [h for h in header if h not in known]
        if unknown:
            raise InvalidInputError(f"{where}: unknown column(s) {unknown}; accepted columns: {sorted(known)}")
        missing = [c.name for c in self.columns if c.name not in header]
        if missing:
            raise InvalidInputError(f"{where}: missing column(s) {missing}")

    def encode(self, rows: list[dict[str, str]], where: str = "data") -> Tensor:
        """Encode raw rows (dicts of strings) into ``(n, d)`` float64 in [0, 1] (values outside the range clamp)."""
        x = torch.zeros(len(rows), self.dim, dtype=torch.float64)
        for c, s in self.spans():
            for i, r in enumerate(rows):
                v = r[c.name].strip()
                if c.levels:
                    if v not in c.levels:
                        raise InvalidInputError(
                            f"{where}, row {i + 1}: {c.name}={v!r} is not a known level; accepted: {list(c.levels)}"
                        )
                    x[i, s.start + c.levels.index(v)] = 1.0
                else:
                    x[i, s.start] = (_number(v, c.name, i, where) - c.lo) / (c.hi - c.lo) if c.hi > c.lo else 0.0
        if not torch.isfinite(x).all():
            raise InvalidInputError(f"{where}: NaN or inf feature values")
        return x.clamp(0.0, 1.0)

    def decode(self, x: Tensor) -> list[dict[str, Any]]:
        """Encoded rows back to raw values (one-hot blocks -> the argmax level)."""
        out = []
        for row in x.detach().cpu().double():
            d: dict[str, Any] = {}
            for c, s in self.spans():
                if c.levels:
                    d[c.name] = c.levels[int(row[s].argmax())]
                else:
                    v = float(row[s.start]) * (c.hi - c.lo) + c.lo
                    d[c.name] = round(v) if c.integer else v
            out.append(d)
        return out


@dataclass
class TabularData:
    """Encoded data set: features ``x`` (n, d) in [0, 1], labels ``y`` (n,), a fixed train/test split."""

    name: str
    x: Tensor
    y: Tensor
    schema: Schema
    train: Tensor
    test: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def x_train(self) -> Tensor:
        return self.x[self.train]

    @property
    def y_train(self) -> Tensor:
        return self.y[self.train]

    @property
    def x_test(self) -> Tensor:
        return self.x[self.test]

    @property
    def y_test(self) -> Tensor:
        return self.y[self.test]

    @property
    def lower(self) -> Tensor:
        """Per-feature data range used to clamp counterfactuals (min over the training split)."""
        return self.x_train.amin(0)

    @property
    def upper(self) -> Tensor:
        return self.x_train.amax(0)


def _number(v: str, col: str, i: int, where: str) -> float:
    try:
        out = float(v)
    except ValueError:
        raise InvalidInputError(f"{where}, row {i + 1}: column {col!r} value {v!r} is not a number") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise InvalidInputError(f"{where}, row {i + 1}: column {col!r} is NaN or inf")
    return out


def _split(n: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half = n // 2
    return perm[:half].sort().values, perm[half:].sort().values


def _build_schema(rows: list[dict[str, str]], label: str, numeric: tuple[str, ...] | None, immutable=()) -> Schema:
    cols = []
    for name in rows[0]:
        if name == label:
            continue
        vals = [r[name].strip() for r in rows]
        is_num = name in numeric if numeric is not None else True
        if is_num:
            nums = [_number(v, name, i, "data") for i, v in enumerate(vals)]
            cols.append(
                Column(
                    name,
                    lo=min(nums),
                    hi=max(nums),
                    integer=all(v == int(v) for v in nums),
                    immutable=name in immutable,
                )
            )
        else:
            cols.append(Column(name, levels=tuple(sorted(set(vals))), immutable=name in immutable))
    return Schema(cols, label)


def load_german() -> TabularData:
    """German credit (UCI Statlog, CC BY 4.0; see data/ATTRIBUTION.md): 1000 rows, 61 encoded features."""
    text = resources.files(DATA_PACKAGE).joinpath("germancredit.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    schema = _build_schema(rows, GERMAN_LABEL, GERMAN_NUMERIC, GERMAN_IMMUTABLE)
    x = schema.encode(rows, "germancredit.csv")
    y = torch.tensor([1 if r[GERMAN_LABEL] == "good" else 0 for r in rows])
    tr, te = _split(len(rows))
    return TabularData("german", x, y, schema, tr, te, {"favourable": "creditability = good"})


def load_breast_cancer() -> TabularData:
    """scikit-learn's Wisconsin breast cancer data: 569 rows, 30 features min-max scaled; favourable = benign."""
    from sklearn.datasets import load_breast_cancer as _load

    raw = _load()
    xr = torch.as_tensor(raw.data, dtype=torch.float64)
    lo, hi = xr.amin(0), xr.amax(0)
    cols = [Column(str(n), lo=float(a), hi=float(b)) for n, a, b in zip(raw.feature_names, lo, hi, strict=True)]
    x = (xr - lo) / (hi - lo)
    tr, te = _split(len(xr))
    schema = Schema(cols, "label")
    return TabularData("breast_cancer", x, torch.as_tensor(raw.target), schema, tr, te, {"favourable": "benign"})


def load_csv(path: str | Path, label: str = "label", schema: Schema | None = None) -> TabularData:
    """A user's CSV: a 0/1 ``label`` column (1 favourable) and feature columns.

    With ``schema`` (e.g. ``load_german().schema`` for raw German-credit rows) the columns must be exactly the
    schema's; otherwise every non-label column must be numeric and is min-max scaled over the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"data file {str(path)!r} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InvalidInputError(f"{path.name}: no data rows")
    header = list(rows[0])
    if label not in header:
        raise InvalidInputError(f"{path.name}: no label column {label!r} (columns: {header})")
    if schema is not None:
        schema.check_columns(header, path.name)
    else:
        schema = _build_schema(rows, label, None)
        for c in schema.columns:
            if c.hi == c.lo:
                c.hi = c.lo + 1.0
    x = schema.encode(rows, path.name)
    labels = [r[label].strip() for r in rows]
    bad = sorted(set(labels) - {"0", "1", "0.0", "1.0"})
    if bad:
        raise InvalidInputError(f"{path.name}: label column {label!r} must be 0/1, found {bad[:5]}")
    y = torch.tensor([int(float(v)) for v in labels])
    tr, te = _split(len(rows))
    return TabularData(path.stem, x, y, schema, tr, te, {"favourable": f"{label} = 1"})


def load_data(name: str | Path) -> TabularData:
    """``"german"``, ``"breast_cancer"`` or a path to a CSV (see :func:`load_csv`)."""
    if str(name) == "german":
        return load_german()
    if str(name) in ("breast_cancer", "breast-cancer"):
        return load_breast_cancer()
    if str(name).endswith(".csv"):
        return load_csv(name)
    raise InvalidInputError(f"unknown data {str(name)!r}; use 'german', 'breast_cancer' or a path to a .csv file")
