"""Randomized smoothing certificates: Cohen CERTIFY/PREDICT and a sound Lipschitz-variance-margin smoothing (LVM-RS).

``Smooth(model, num_classes, sigma).certify(x, n0, n, alpha, method="cohen"|"lvm", select=..., lipschitz=...)``;
see :mod:`lipbound.smoothing.smooth` for what each radius guarantees, :mod:`lipbound.smoothing.stats` for the
confidence bounds and radii and :mod:`lipbound.smoothing.maps` for the simplex maps.
"""

from lipbound.smoothing.maps import Candidate, default_candidates, sparsemax
from lipbound.smoothing.metrics import (
    average_certified_radius,
    certified_accuracy,
    correct_predictions,
    plot_certified_accuracy,
)
from lipbound.smoothing.models import load_digits_split, register
from lipbound.smoothing.smooth import ABSTAIN, Smooth, SmoothingInputError, SmoothResult, TuneResult, tune

__all__ = [
    "ABSTAIN",
    "Candidate",
    "Smooth",
    "SmoothResult",
    "SmoothingInputError",
    "TuneResult",
    "average_certified_radius",
    "certified_accuracy",
    "correct_predictions",
    "default_candidates",
    "load_digits_split",
    "plot_certified_accuracy",
    "sparsemax",
    "tune",
]

register()  # bundled digits models: lipbound.models.load_bundled("digits-rs-cnn-0.25"), ...
