"""Global Lipschitz upper bounds: LipSDP family, LipSDP-NSR and certified baselines.

Entry point: :func:`global_lipschitz` (see :mod:`lipbound.global_bounds.api` for the methods and guarantees).
"""

from lipbound.global_bounds.api import METHODS, GlobalResult, global_lipschitz
from lipbound.global_bounds.network import Activation, LayeredNetwork, extract

__all__ = ["METHODS", "Activation", "GlobalResult", "LayeredNetwork", "extract", "global_lipschitz"]
