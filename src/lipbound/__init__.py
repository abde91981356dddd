"""lipbound: certified Lipschitz bounds for PyTorch networks.

Local bounds (certified upper, attained lower) by bound propagation through the Jacobian graph:
:func:`local_lipschitz`, :func:`jacobian_bounds`, :func:`local_lipschitz_bab`; exact constants of ReLU nets:
:func:`exact_lipschitz`; global bounds: :func:`global_lipschitz`; monotonicity: :func:`certify_monotonicity`.
:class:`Bounded` traces a model once and offers all of them as methods.

Package layers, bottom-up (a module imports only its own layer and those below; :mod:`lipbound._layers` holds the
table that ``tests/test_layers.py`` enforces)::

    errors -> linalg -> nn -> ir (graph.ir, ops.base) -> ops -> frontends (graph.*, problem, models)
           -> engine -> analyses (local, lower, bab, exact, monotonicity, local_sdp, global_bounds) -> bounded
           -> applications (smoothing, counterfactuals, rl, runner, demo) -> lipbound (this facade) -> cli
"""

from lipbound.bounded import Bounded
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
    "Bounded",
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
