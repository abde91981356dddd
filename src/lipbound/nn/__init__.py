"""Lipschitz-aware layers. See :mod:`lipbound.nn.activations` for the grouping conventions."""

from lipbound.nn.activations import GroupSort, MaxMin
from lipbound.nn.batch_channel_norm import BatchChannelNorm2d
from lipbound.nn.householder import Householder
from lipbound.nn.power_norm import PowerNorm
from lipbound.nn.spectral import certified_spectral_norm, spectral_parametrize
from lipbound.nn.weight_standardization import WSConv2d, WSLinear, standardize_weight

__all__ = [
    "BatchChannelNorm2d",
    "GroupSort",
    "Householder",
    "MaxMin",
    "PowerNorm",
    "WSConv2d",
    "WSLinear",
    "certified_spectral_norm",
    "spectral_parametrize",
    "standardize_weight",
]
