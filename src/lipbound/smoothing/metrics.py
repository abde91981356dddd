"""Certified accuracy, average certified radius and the certified-accuracy curve.

For inputs i with certified radius r_i (0 when abstaining) and correct_i = [prediction_i == label_i]:
certified accuracy at radius r = (1/N) sum_i correct_i [r_i >= r]; ACR = (1/N) sum_i correct_i r_i.
An abstention counts as incorrect at every radius.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipbound.errors import InvalidInputError, ShapeMismatchError


def _arrays(radii: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    r = torch.as_tensor(radii).detach().cpu().double().reshape(-1).numpy()
    c = torch.as_tensor(correct).detach().cpu().bool().reshape(-1).numpy()
    if r.shape != c.shape:
        raise ShapeMismatchError(f"radii has {r.shape[0]} entries, correct has {c.shape[0]}")
    if r.size == 0:
        raise InvalidInputError("certified accuracy of an empty set of inputs")
    if np.isnan(r).any() or (r < 0).any():
        raise InvalidInputError("radii must be >= 0 (0 for abstentions) and not NaN")
    return r, c


def correct_predictions(result: Any, labels: Any) -> torch.Tensor:
    """Boolean (B,): the result's prediction equals the label (abstentions are never correct)."""
    pred = torch.as_tensor(result.prediction).cpu()
    y = torch.as_tensor(labels).cpu().long().reshape(-1)
    if y.shape != pred.shape:
        raise ShapeMismatchError(f"{y.shape[0]} labels for {pred.shape[0]} predictions")
    return (pred == y) & (pred != -1)


def certified_accuracy(radii: Any, correct: Any, r: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Fraction of inputs that are correct with certified radius >= r (a float, or an array for a grid of r)."""
    rad, c = _arrays(radii, correct)
    grid = np.asarray(r, dtype=np.float64)
    acc = ((rad[None, :] >= grid.reshape(-1, 1)) & c[None, :]).mean(axis=1)
    return float(acc[0]) if grid.ndim == 0 else acc.reshape(grid.shape)


def average_certified_radius(radii: Any, correct: Any) -> float:
    """ACR = mean over inputs of radius * [correct] (abstentions and wrong predictions contribute 0)."""
    rad, c = _arrays(radii, correct)
    return float((rad * c).mean())


def plot_certified_accuracy(
    curves: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    title: str = "certified accuracy",
    max_radius: float | None = None,
) -> Path:
    """One PNG with certified accuracy against radius for several methods: ``curves[label] = (radii, correct)``.
    Headless (Agg backend); returns the path written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not curves:
        raise InvalidInputError("plot_certified_accuracy needs at least one curve")
    arrays = {k: _arrays(*v) for k, v in curves.items()}
    top = max_radius if max_radius is not None else max(float(r.max()) for r, _ in arrays.values()) * 1.05 + 1e-3
    grid = np.linspace(0.0, top, 300)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (rad, c) in arrays.items():
        ax.plot(grid, certified_accuracy(rad, c, grid), label=label)
    ax.set_xlabel("l2 radius (input units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
