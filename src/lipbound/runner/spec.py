"""Run specification: what to certify (task + options), on which model and data, and how (executor, budget).

A spec comes from a YAML/JSON file (:func:`load_spec_file`) or from keywords (:class:`RunSpec`); :func:`prepare`
validates it completely BEFORE any work starts (task known, options accepted by the task, model loadable, data
file present and shaped like the model's input) and returns a :class:`PreparedRun` holding the loaded inputs and
the run key: ``sha256(canonical spec + model weights + input bytes)``. The key names the output, so a changed spec,
model or data set never mixes with an earlier run's records.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.errors import LipboundError
from lipbound.runner.errors import RunDataError, RunShapeError, RunSpecError

BUNDLED_PREFIX = "bundled:"
# bundled data sets: name -> (package, file) of an .npz with ``x`` (and ``y``); a bundled model's name also works
# (its 16 shipped samples)
DATA_SETS = {
    "digits": ("lipbound.runner.data", "digits_test.npz"),  # the 450-image digits test split (8x8, [0, 1])
    "simple": ("lipbound.data", "simple_samples.npz"),  # 16 points of the synthetic 'simple' task
}
DATA_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".csv")
EXECUTORS = ("local", "ray")
# fields that say HOW to run, not WHAT: they do not enter the run key (a resumed run may change them)
RUN_ONLY_FIELDS = ("out", "executor", "workers", "limit", "address", "retries", "retry_failed", "threads")


@dataclass
class RunSpec:
    """One data-set run. ``options`` go to the task's API call (e.g. ``method``, ``optimize``, ``time_budget``)."""

    task: str
    model: str
    data: str
    out: str = "results.jsonl"
    eps: float = 0.1
    norm: str = "inf"
    options: dict[str, Any] = field(default_factory=dict)
    executor: str = "local"
    workers: int | None = None  # None: one per core (local) / per CPU (ray)
    limit: int | None = None  # first N inputs only
    time_budget: float | None = None  # hard wall-clock seconds per input attempt (None: unlimited)
    retries: int = 0  # extra attempts for an input whose task raised or timed out
    retry_failed: bool = False  # on resume, redo inputs recorded as failed
    address: str | None = None  # Ray cluster address (None: start a local Ray instance)
    dtype: str = "float64"
    threads: int = 1  # torch threads per worker (1: small per-input problems gain nothing from more, and
    # oversubscribed cores slow every worker down)

    def identity(self) -> dict[str, Any]:
        """The fields that define WHAT is computed (hashed into the run key)."""
        d = asdict(self)
        for k in RUN_ONLY_FIELDS:
            d.pop(k)
        return d


@dataclass
class PreparedRun:
    """A validated spec with its inputs ``x`` (N, *input_shape), labels (or None) and run key."""

    spec: RunSpec
    x: Tensor
    labels: Tensor | None
    input_shape: tuple[int, ...]
    key: str
    indices: list[int]


def load_spec_file(path: str | Path, **overrides: Any) -> RunSpec:
    """Read a YAML (``.yaml``/``.yml``) or JSON spec; ``overrides`` (not None) replace its fields."""
    p = Path(path)
    if not p.is_file():
        raise RunSpecError(f"spec file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        elif p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            raise RunSpecError(f"spec file {str(p)!r}: expected a .yaml, .yml or .json file")
    except RunSpecError:
        raise
    except Exception as e:
        raise RunSpecError(f"spec file {str(p)!r} is not valid {p.suffix[1:].upper()}: {e}") from None
    if not isinstance(raw, dict):
        raise RunSpecError(f"spec file {str(p)!r} must hold a mapping of fields, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return spec_from_dict(raw)


def spec_from_dict(raw: dict[str, Any]) -> RunSpec:
    """Build a :class:`RunSpec`, naming unknown or missing fields."""
    known = set(RunSpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RunSpecError(f"unknown spec field(s) {unknown}; accepted: {sorted(known)}")
    missing = [k for k in ("task", "model", "data") if raw.get(k) is None]
    if missing:
        raise RunSpecError(f"spec is missing required field(s) {missing}")
    return RunSpec(**raw)


def _check_fields(spec: RunSpec) -> None:
    from lipbound.runner.tasks import TASKS, check_options

    if spec.task not in TASKS:
        raise RunSpecError(f"unknown task {spec.task!r}; available: {', '.join(TASKS)}")
    if not isinstance(spec.options, dict):
        raise RunSpecError(f"options must be a mapping, got {type(spec.options).__name__}")
    check_options(spec.task, spec.options)
    if spec.executor not in EXECUTORS:
        raise RunSpecError(f"unknown executor {spec.executor!r}; available: {', '.join(EXECUTORS)}")
    try:
        eps = float(spec.eps)
    except (TypeError, ValueError):
        raise RunSpecError(f"eps must be a number, got {spec.eps!r}") from None
    if not np.isfinite(eps) or eps < 0:
        raise RunSpecError(f"eps must be finite and >= 0, got {spec.eps!r}")
    if str(spec.norm) not in ("inf", "1", "2"):
        raise RunSpecError(f"norm must be inf, 1 or 2, got {spec.norm!r}")
    for name, lo in (("workers", 1), ("limit", 1), ("threads", 1)):
        v = getattr(spec, name)
        if v is not None and (not isinstance(v, int) or v < lo):
            raise RunSpecError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not isinstance(spec.retries, int) or spec.retries < 0:
        raise RunSpecError(f"retries must be an integer >= 0, got {spec.retries!r}")
    if spec.time_budget is not None and not (isinstance(spec.time_budget, int | float) and spec.time_budget > 0):
        raise RunSpecError(f"time_budget must be a positive number of seconds, got {spec.time_budget!r}")
    if spec.dtype not in ("float32", "float64"):
        raise RunSpecError(f"dtype must be float32 or float64, got {spec.dtype!r}")


def model_name(spec_model: str) -> str:
    return spec_model[len(BUNDLED_PREFIX) :] if spec_model.startswith(BUNDLED_PREFIX) else spec_model


def build_model(spec_model: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The model named by the spec: a bundled name (``digits-mlp`` or ``bundled:digits-mlp``) or a model file /
    ``package.module:factory`` (see :func:`lipbound.graph.load.load_model`), with its input shape if known."""
    from lipbound.models import BUNDLED, bundled_input_shape, load_bundled

    name = model_name(spec_model)
    if name in BUNDLED:
        return load_bundled(name), bundled_input_shape(name)
    if spec_model.startswith(BUNDLED_PREFIX):
        load_bundled(name)  # raises the 'unknown bundled model ... available' error
    from lipbound.graph.load import load_model

    return load_model(spec_model)


def load_data(data: str) -> tuple[Tensor, Tensor | None]:
    """Inputs (N, ...) and labels (or None): a bundled data set (``digits``: the 450-image digits test split,
    ``simple``, or a bundled model's name: its 16 shipped samples) or a .npz/.npy/.pt file (see
    :func:`lipbound.graph.load.load_inputs`) or a CSV of numbers (one input per
    row; a header row and a ``label`` column are recognised)."""
    from lipbound.models import BUNDLED, load_samples

    name = model_name(data)
    if name in DATA_SETS:
        package, filename = DATA_SETS[name]
        with np.load(io.BytesIO(resources.files(package).joinpath(filename).read_bytes())) as z:
            return torch.as_tensor(z["x"]).to(torch.float64), torch.as_tensor(z["y"]).long()
    if name in BUNDLED and not Path(data).suffix:
        return load_samples(name, dtype=torch.float64)
    p = Path(data)
    if p.suffix.lower() not in DATA_SUFFIXES:
        raise RunDataError(
            f"data {data!r} is neither a bundled data set ({', '.join(list(DATA_SETS) + list(BUNDLED))}) "
            f"nor a {'/'.join(DATA_SUFFIXES)} file"
        )
    if not p.is_file():
        raise RunDataError(f"data file {data!r} does not exist")
    if p.suffix.lower() == ".csv":
        return _read_csv(p)
    from lipbound.graph.load import load_inputs

    try:
        x = load_inputs(str(p))
    except LipboundError as e:
        raise RunDataError(str(e)) from None
    return x.to(torch.float64), None


def _read_csv(p: Path) -> tuple[Tensor, Tensor | None]:
    rows = list(csv.reader(io.StringIO(p.read_text())))
    rows = [r for r in rows if r]
    if not rows:
        raise RunDataError(f"CSV {str(p)!r} is empty")
    header = None
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    try:
        arr = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise RunDataError(f"CSV {str(p)!r} holds a non-numeric value: {e}") from None
    labels = None
    if header is not None and "label" in header:
        j = header.index("label")
        labels = torch.as_tensor(arr[:, j]).long()
        arr = np.delete(arr, j, axis=1)
    return torch.as_tensor(arr), labels


def shape_inputs(x: Tensor, input_shape: tuple[int, ...] | None, data: str) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` reshaped to (N, *input_shape); a per-sample size that differs from the model's is an error."""
    if x.ndim < 2 and input_shape is None:
        raise RunShapeError(f"data {data!r} has shape {tuple(x.shape)}; expected a batch (N, *input_shape)")
    if input_shape is None:
        return x, tuple(x.shape[1:])
    per_sample = int(np.prod(input_shape))
    if x.ndim < 1 or x.shape[0] == 0 or x[0].numel() != per_sample:
        raise RunShapeError(
            f"data {data!r} has per-sample shape {tuple(x.shape[1:])} ({x[0].numel() if x.ndim else 0} values); "
            f"the model expects {tuple(input_shape)} ({per_sample} values)"
        )
    return x.reshape(x.shape[0], *input_shape), tuple(input_shape)


def _digest(h: Any, t: Tensor) -> None:
    h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())


def run_key(spec: RunSpec, model: nn.Module, x: Tensor) -> str:
    """``sha256`` over the spec's identity fields, every model parameter/buffer and the input bytes."""
    h = hashlib.sha256(json.dumps(spec.identity(), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items() if isinstance(model, nn.Module) else []:
        h.update(name.encode())
        _digest(h, t)
    _digest(h, x)
    return h.hexdigest()


def prepare(spec: RunSpec) -> PreparedRun:
    """Validate everything and load the inputs; raises a :class:`~lipbound.errors.LipboundError` subclass on the
    first problem, before any input is processed."""
    _check_fields(spec)
    model, input_shape = build_model(spec.model)
    x, labels = load_data(spec.data)
    x, input_shape = shape_inputs(x, input_shape, spec.data)
    if not torch.isfinite(x).all():
        raise RunDataError(f"data {spec.data!r} contains NaN or inf")
    key = run_key(spec, model, x)
    n = x.shape[0] if spec.limit is None else min(spec.limit, x.shape[0])
    return PreparedRun(spec, x, labels, input_shape, key, list(range(n)))
