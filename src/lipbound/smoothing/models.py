"""Bundled models for randomized smoothing on scikit-learn's digits (8x8 images, pixels in [0, 1]).

Registered with :func:`lipbound.models.register_bundled` when :mod:`lipbound.smoothing` is imported, so
``lipbound.models.load_bundled("digits-rs-cnn-0.25")`` and the CLI's ``bundled:digits-rs-cnn-0.25`` work.

* ``digits-rs-cnn-<sigma>`` for sigma in {0.12, 0.25, 0.50}: input 1x8x8, Conv(1->8, 3x3, pad 1)-ReLU-
  Conv(8->16, 3x3, stride 2, pad 1)-ReLU-Flatten-Linear(256->32)-ReLU-Linear(32->10), trained with Gaussian noise
  augmentation x + N(0, sigma^2 I) (pixel units). Certify them with the same sigma.
* ``digits-rs-lip-0.25``: a 1-Lipschitz (l2) network on the flattened image, Linear(64->128)-MaxMin-
  Linear(128->128)-MaxMin-Linear(128->10), each weight rescaled so that its CERTIFIED spectral norm is <= 1
  (lipbound.nn certified spectral parametrisation, baked into plain Linear layers), trained with noise at 0.25.

Weights and the digits test/validation splits (``digits_rs_samples.npz``: ``x``/``y`` the 450-image test split,
``x_val``/``y_val`` 200 validation images from the training part) come from ``scripts/train_smoothing.py``.
The digits images are scikit-learn's (BSD-3-Clause), see ``data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.models import BundledSpec, register_bundled
from lipbound.nn import MaxMin

DATA_PACKAGE = "lipbound.smoothing.data"
SAMPLES = "digits_rs_samples.npz"
CNN_SIGMAS = (0.12, 0.25, 0.50)
LIP_SIGMA = 0.25
INPUT_SHAPE = (1, 8, 8)


class DigitsRSCNN(nn.Sequential):
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


class DigitsRSLip(nn.Sequential):
    """Flatten-Linear(64, 128)-MaxMin-Linear(128, 128)-MaxMin-Linear(128, 10); 1-Lipschitz when every weight has
    spectral norm <= 1 (MaxMin permutes its input)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(64, 128),
            MaxMin(),
            nn.Linear(128, 128),
            MaxMin(),
            nn.Linear(128, 10),
        )


def cnn_name(sigma: float) -> str:
    return f"digits-rs-cnn-{sigma:.2f}"


LIP_NAME = f"digits-rs-lip-{LIP_SIGMA:.2f}"


def bundled_sigma(name: str) -> float | None:
    """The training noise level of a bundled smoothing model (None for other names)."""
    for s in CNN_SIGMAS:
        if name == cnn_name(s):
            return s
    return LIP_SIGMA if name == LIP_NAME else None


def specs() -> list[BundledSpec]:
    out = [
        BundledSpec(
            cnn_name(s), DigitsRSCNN, INPUT_SHAPE, f"digits_rs_cnn_{round(s * 100):03d}.pt", SAMPLES, DATA_PACKAGE
        )
        for s in CNN_SIGMAS
    ]
    out.append(BundledSpec(LIP_NAME, DigitsRSLip, INPUT_SHAPE, "digits_rs_lip_025.pt", SAMPLES, DATA_PACKAGE))
    return out


def register() -> None:
    for spec in specs():
        register_bundled(spec)


def load_digits_split(split: str = "test", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The shipped digits split ``"test"`` (450) or ``"val"`` (200): x (N, 1, 8, 8) in [0, 1], labels (N,)."""
    keys = {"test": ("x", "y"), "val": ("x_val", "y_val")}
    if split not in keys:
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    raw = resources.files(DATA_PACKAGE).joinpath(SAMPLES).read_bytes()
    with np.load(io.BytesIO(raw)) as data:
        x = torch.as_tensor(data[keys[split][0]]).to(dtype)
        y = torch.as_tensor(data[keys[split][1]]).long()
    return x.reshape(x.shape[0], *INPUT_SHAPE), y
