"""The train-mode policy, shared by every intake (API and CLI): a network is bounded as it computes at inference.

BatchNorm in training mode normalises with the statistics of the current batch, and Dropout zeroes random units, so
a training-mode module does not define one function of a single input. Every intake therefore bounds an eval-mode
COPY of a model that has such modules in training mode (the caller's object is never modified) and says so with a
:class:`TrainingModeWarning` (the CLI prints it as a note). Other modules' ``training`` flags do not change what
they compute and are ignored.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn


class TrainingModeWarning(UserWarning):
    """A model with BatchNorm / Dropout in training mode was bounded in eval mode."""


def _mode_dependent(name: str, m: nn.Module) -> bool:
    kind = getattr(m, "original_name", "") or type(m).__name__  # TorchScript keeps the Python class name here
    return m.training and ("BatchNorm" in kind or "Dropout" in kind)


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` itself, or an eval-mode deep copy of it (with a warning) if a BatchNorm/Dropout is training."""
    training = [name or "<root>" for name, m in model.named_modules() if _mode_dependent(name, m)]
    if not training:
        return model
    shown = ", ".join(repr(n) for n in training[:3]) + (" ..." if len(training) > 3 else "")
    warnings.warn(
        f"{len(training)} BatchNorm/Dropout module(s) in training mode ({shown}): bounding the model in eval mode, "
        "the function it computes at inference (call model.eval() to silence this)",
        TrainingModeWarning,
        stacklevel=3,
    )
    return copy.deepcopy(model).eval()
