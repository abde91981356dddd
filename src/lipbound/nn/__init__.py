"""Lipschitz-aware layers. See :mod:`lipbound.nn.activations` for the grouping conventions."""

from lipbound.nn.activations import GroupSort, MaxMin

__all__ = ["GroupSort", "MaxMin"]
