"""Bundled smoothing models: loadable by name, the recorded accuracies, a certified 1-Lipschitz network."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

import lipbound
from lipbound.models import load_bundled
from lipbound.smoothing import Smooth, load_digits_split
from lipbound.smoothing.models import LIP_NAME, bundled_sigma, specs

INFO = json.loads(resources.files("lipbound.smoothing.data").joinpath("models.json").read_text())["models"]


def test_splits_are_digits_in_the_unit_box():
    x, y = load_digits_split("test")
    xv, yv = load_digits_split("val")
    assert yv.shape == (200,)
    assert x.shape == (450, 1, 8, 8) and xv.shape == (200, 1, 8, 8)
    assert x.min() >= 0 and x.max() <= 1 and set(y.tolist()) == set(range(10))
    # pixel values are multiples of 1/16 (scikit-learn's 0..16 counts)
    assert torch.allclose(x * 16, (x * 16).round())
    with pytest.raises(ValueError, match="split"):
        load_digits_split("train")


@pytest.mark.parametrize("spec", specs(), ids=lambda s: s.name)
def test_bundled_models_reproduce_their_recorded_accuracy(spec):
    net = load_bundled(spec.name)
    x, y = load_digits_split("test")
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(INFO[spec.name]["test_accuracy"], abs=1e-4) and acc > 0.9
    assert bundled_sigma(spec.name) == INFO[spec.name]["train_sigma"]


def test_lipschitz_network_is_certified_one_lipschitz():
    net = load_bundled(LIP_NAME)
    bound = lipbound.global_lipschitz(net, norm=2, method="product", input_shape=(1, 8, 8)).upper
    assert bound <= 1.0
    # the certified constant is what certify(lipschitz="certified") uses
    x, y = load_digits_split("test")
    sm = Smooth(net, 10, 0.25, input_shape=(1, 8, 8), lipschitz_method="product")
    res = sm.certify(x[:4], 20, 400, 0.01, method="lvm", lipschitz="certified", generator=0)
    assert res.lipschitz == pytest.approx(bound)
    assert (res.prediction[res.prediction >= 0] == y[:4][res.prediction >= 0]).all()
