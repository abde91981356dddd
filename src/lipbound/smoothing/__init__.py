"""Randomized smoothing certificates: Cohen CERTIFY/PREDICT and a sound Lipschitz-variance-margin smoothing (LVM-RS).

See :mod:`lipbound.smoothing.stats` (confidence bounds, radii) and :mod:`lipbound.smoothing.maps` (simplex maps).
"""

from lipbound.smoothing.maps import Candidate, default_candidates, sparsemax

__all__ = ["Candidate", "default_candidates", "sparsemax"]
