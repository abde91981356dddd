"""Global Lipschitz upper bounds: LipSDP family, LipSDP-NSR and certified baselines.

Entry point: :func:`global_lipschitz` (see :mod:`lipbound.global_bounds.api` for the methods and guarantees).
The certified operator norms live one layer down, in :mod:`lipbound.linalg` (shared with :mod:`lipbound.nn`);
``lipbound.global_bounds.norms`` is the same module under its former name.
"""

import sys

from lipbound import linalg as norms

sys.modules[f"{__name__}.norms"] = norms  # `import lipbound.global_bounds.norms` keeps working (same module object)

# after the alias, so that submodules may still import the norms under the old name while the package initialises
from lipbound.global_bounds.api import METHODS, GlobalResult, global_lipschitz  # noqa: E402
from lipbound.global_bounds.network import Activation, LayeredNetwork, extract  # noqa: E402

__all__ = ["METHODS", "Activation", "GlobalResult", "LayeredNetwork", "extract", "global_lipschitz", "norms"]
