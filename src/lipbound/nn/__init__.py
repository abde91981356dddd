"""Lipschitz-aware layers. See :mod:`lipbound.nn.activations` for the grouping conventions."""

from lipbound.nn.activations import GroupSort, MaxMin
from lipbound.nn.householder import Householder
from lipbound.nn.spectral import certified_spectral_norm, spectral_parametrize

__all__ = ["GroupSort", "Householder", "MaxMin", "certified_spectral_norm", "spectral_parametrize"]
