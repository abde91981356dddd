"""Small bundled models (weights shipped in ``lipbound/data``) for the demo, the tests and the benchmark.

Architectures (all plain ``nn.Sequential`` so they trace into the graph IR without custom rules):

* ``digits-mlp``: f(x) = W_3 relu(W_2 relu(W_1 x + b_1) + b_2) + b_3 with x in [0,1]^64 (8x8 digit flattened),
  layer widths 64-64-32-10.
* ``digits-cnn``: input 1x8x8, Conv(1->8, 3x3, pad 1)-ReLU-Conv(8->16, 3x3, stride 2, pad 1)-ReLU-Flatten-
  Linear(256->32)-ReLU-Linear(32->10).
* ``simple-mlp-<w>`` for w in {16, 64, 128, 256}: 3-layer ReLU MLP d-w-w-2 on the synthetic 2-class "simple" task
  (points in [0,1]^d, d = :data:`SIMPLE_DIM`, labelled by a fixed random teacher network).

Weights were produced by ``scripts/train_models.py`` (deterministic, float32, CPU); ``models.json`` records the
architecture, seed and accuracies. Loading needs only torch (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, ModelLoadError

SIMPLE_DIM = 10
SIMPLE_WIDTHS = (16, 64, 128, 256)
DATA_PACKAGE = "lipbound.data"


class DigitsMLP(nn.Sequential):
    """64-64-32-10 ReLU MLP on flattened 8x8 digits."""

    def __init__(self) -> None:
        super().__init__(
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )


class DigitsCNN(nn.Sequential):
    """Two 3x3 convolutions (the second with stride 2) and two linear layers on 1x8x8 digits."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )


class SimpleMLP(nn.Sequential):
    """3-layer ReLU MLP ``in_dim``-``width``-``width``-``out_dim``."""

    def __init__(self, in_dim: int = SIMPLE_DIM, width: int = 16, out_dim: int = 2) -> None:
        super().__init__(
            nn.Linear(in_dim, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, out_dim),
        )


@dataclass(frozen=True)
class BundledSpec:
    """How to build one bundled model: constructor, per-sample input shape, weight and sample files."""

    name: str
    factory: Any
    input_shape: tuple[int, ...]
    weights: str
    samples: str
    package: str = DATA_PACKAGE  # importable package holding ``weights`` and ``samples``


def _specs() -> dict[str, BundledSpec]:
    specs = {
        "digits-mlp": BundledSpec("digits-mlp", DigitsMLP, (64,), "digits_mlp.pt", "digits_samples.npz"),
        "digits-cnn": BundledSpec("digits-cnn", DigitsCNN, (1, 8, 8), "digits_cnn.pt", "digits_samples.npz"),
    }
    for w in SIMPLE_WIDTHS:
        name = f"simple-mlp-{w}"
        specs[name] = BundledSpec(
            name, lambda w=w: SimpleMLP(SIMPLE_DIM, w, 2), (SIMPLE_DIM,), f"simple_mlp_{w}.pt", "simple_samples.npz"
        )
    return specs


BUNDLED: dict[str, BundledSpec] = _specs()


def register_bundled(spec: BundledSpec) -> None:
    """Make ``spec`` loadable by name (application subpackages ship their own models this way)."""
    if spec.name in BUNDLED and BUNDLED[spec.name] != spec:
        raise ValueError(f"bundled model name {spec.name!r} is already registered")
    BUNDLED[spec.name] = spec


def bundled_names() -> list[str]:
    """Names accepted by :func:`load_bundled` (and by the CLI as ``bundled:<name>``)."""
    return list(BUNDLED)


def _spec(name: str) -> BundledSpec:
    spec = BUNDLED.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown bundled model {name!r}; available: {', '.join(BUNDLED)}")
    return spec


def _read_bytes(filename: str, package: str = DATA_PACKAGE) -> bytes:
    try:
        return resources.files(package).joinpath(filename).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelLoadError(
            f"bundled data file {filename!r} is missing from the lipbound package (run scripts/train_models.py)"
        ) from e


def load_bundled(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build bundled model ``name``, load its shipped state dict (weights only) and return it in eval mode."""
    spec = _spec(name)
    model = spec.factory()
    try:
        state = torch.load(io.BytesIO(_read_bytes(spec.weights, spec.package)), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load bundled weights {spec.weights!r} for {name!r}: {e}") from e
    return model.to(dtype).eval()


def bundled_input_shape(name: str) -> tuple[int, ...]:
    """Per-sample input shape of bundled model ``name`` (no batch dimension)."""
    return _spec(name).input_shape


def load_samples(name: str, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Shipped test inputs for model ``name``, shaped ``(N, *input_shape)``, and their integer labels ``(N,)``."""
    spec = _spec(name)
    with np.load(io.BytesIO(_read_bytes(spec.samples, spec.package))) as data:
        x = torch.as_tensor(data["x"]).to(dtype)
        y = torch.as_tensor(data["y"]).long()
    return x.reshape(x.shape[0], *spec.input_shape), y


@cache
def _info(package: str = DATA_PACKAGE) -> dict[str, Any]:
    return json.loads(_read_bytes("models.json", package).decode())


def model_info(name: str) -> dict[str, Any]:
    """Training record of ``name`` from its package's ``models.json`` (architecture, seed, accuracies, ...)."""
    return dict(_info(_spec(name).package)["models"][name])
