"""lipbound: certified Lipschitz bounds for PyTorch networks.

Local bounds (certified upper, attained lower) by bound propagation through the Jacobian graph:
:func:`local_lipschitz`, :func:`jacobian_bounds`. Global bounds: :func:`global_lipschitz`.
"""

from lipbound.errors import (
    InvalidInputError,
    InvalidModelError,
    LipboundError,
    ModelLoadError,
    ShapeMismatchError,
    UnsupportedOperatorError,
)
from lipbound.exact import ExactResult, exact_lipschitz
from lipbound.graph import Graph, trace
from lipbound.local import LocalResult, jacobian_bounds, local_lipschitz, local_lipschitz_bab
from lipbound.monotonicity import MonotonicityResult, certify_monotonicity

__version__ = "0.1.0"


def global_lipschitz(*args, **kwargs):
    """Certified global Lipschitz upper bound; see :func:`lipbound.global_bounds.api.global_lipschitz`."""
    from lipbound.global_bounds.api import global_lipschitz as _impl

    return _impl(*args, **kwargs)


def run(*args, **kwargs):
    """Certify a whole data set, resumably, locally or on Ray; see :func:`lipbound.runner.api.run`."""
    from lipbound.runner.api import run as _impl

    return _impl(*args, **kwargs)


__all__ = [
    "ExactResult",
    "Graph",
    "InvalidInputError",
    "InvalidModelError",
    "LipboundError",
    "LocalResult",
    "ModelLoadError",
    "MonotonicityResult",
    "ShapeMismatchError",
    "UnsupportedOperatorError",
    "certify_monotonicity",
    "exact_lipschitz",
    "global_lipschitz",
    "jacobian_bounds",
    "local_lipschitz",
    "local_lipschitz_bab",
    "run",
    "trace",
]
