"""Bundled models: they load from package data, match their recorded accuracy, and the weights stay small."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from lipbound.errors import InvalidInputError
from lipbound.graph import trace
from lipbound.models import (
    BUNDLED,
    DATA_PACKAGE,
    bundled_input_shape,
    bundled_names,
    load_bundled,
    load_samples,
    model_info,
)

# the core models; applications register their own (tested in their suites, with their own accuracy floors)
NAMES = [n for n in bundled_names() if BUNDLED[n].package == DATA_PACKAGE]


def test_names() -> None:
    assert set(NAMES) == {
        "digits-mlp",
        "digits-cnn",
        "simple-mlp-16",
        "simple-mlp-64",
        "simple-mlp-128",
        "simple-mlp-256",
    }


@pytest.mark.parametrize("name", NAMES)
def test_loads_in_eval_mode_with_recorded_accuracy(name: str) -> None:
    model = load_bundled(name)
    assert not model.training
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    x, y = load_samples(name)
    assert x.shape[1:] == bundled_input_shape(name)
    assert x.min() >= 0 and x.max() <= 1
    info = model_info(name)
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = (pred == y).float().mean().item()
    assert acc == pytest.approx(info["sample_accuracy"], abs=1e-4)
    assert info["sample_size"] == len(y)
    floor = 0.9 if name.startswith("digits") else 0.85
    assert acc >= floor - 0.1
    assert info["test_accuracy"] >= floor
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "simple-mlp-64"])
def test_traces_and_float64(name: str) -> None:
    model = load_bundled(name, dtype=torch.float64)
    x, _ = load_samples(name, dtype=torch.float64)
    g = trace(model, bundled_input_shape(name))
    with torch.no_grad():
        torch.testing.assert_close(g(x), model(x))


def test_weights_total_under_500kb() -> None:
    files = [f for f in resources.files("lipbound.data").iterdir() if f.name.endswith((".pt", ".npz", ".json"))]
    total = sum(len(f.read_bytes()) for f in files)
    assert len(files) == 9
    assert total < 500 * 1024


def test_unknown_name_is_specific_error() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown bundled model 'nope'.*digits-mlp"):
        load_bundled("nope")
