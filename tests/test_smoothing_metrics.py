"""certified_accuracy / average_certified_radius against hand computations, and the headless plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipbound.errors import InvalidInputError, ShapeMismatchError
from lipbound.smoothing import (
    Smooth,
    average_certified_radius,
    certified_accuracy,
    correct_predictions,
    plot_certified_accuracy,
)


def test_certified_accuracy_and_acr_by_hand():
    radii = [0.0, 0.3, 0.5, 1.2, 0.8]
    correct = [False, True, True, True, False]
    assert certified_accuracy(radii, correct, 0.0) == pytest.approx(3 / 5)
    assert certified_accuracy(radii, correct, 0.5) == pytest.approx(2 / 5)  # radius >= r counts
    np.testing.assert_allclose(certified_accuracy(radii, correct, [0, 0.25, 0.75, 1.0, 2.0]), [0.6, 0.6, 0.2, 0.2, 0])
    assert average_certified_radius(radii, correct) == pytest.approx((0.3 + 0.5 + 1.2) / 5)
    with pytest.raises(ShapeMismatchError):
        certified_accuracy([0.1], [True, False], 0.0)
    with pytest.raises(InvalidInputError, match=">= 0"):
        average_certified_radius([-0.1], [True])


def test_correct_predictions_counts_abstentions_as_wrong():
    class R:
        prediction = torch.tensor([1, -1, 2])

    assert correct_predictions(R(), [1, -1, 0]).tolist() == [True, False, False]


def test_plot_writes_a_png(tmp_path):
    out = plot_certified_accuracy(
        {"a": ([0.1, 0.5], [True, True]), "b": ([0.2, 0.0], [True, False])}, tmp_path / "c.png"
    )
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_on_a_tiny_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3)).eval()
    x = torch.randn(6, 3)
    y = net(x).argmax(1)
    res = Smooth(net, 3, 0.1).certify(x, 10, 200, 0.01, generator=0)
    ok = correct_predictions(res, y)
    assert 0 <= certified_accuracy(res.radius, ok, 0.0) <= 1
    assert average_certified_radius(res.radius, ok) <= float(res.radius.max())
