"""Robust counterfactual explanations (Hamman et al., ICML 2023) with certified Lipschitz guarantees.

* :func:`stability`: the Monte-Carlo Stability measure R_{k,sigma^2}(x, m).
* :func:`stability_guarantee`: the concentration bound on P(M(x') < R_hat - eps) with a certified gamma.
* generators :func:`closest_counterfactual`, :func:`wachter`, :func:`nearest_neighbour`, :func:`trex_iterative`
  (T-Rex:I), :func:`trex_nn` (T-Rex:NN), all respecting a :class:`FeatureSpace`.
* :func:`load_data` (German credit, breast cancer, a CSV) and the bundled base MLPs (:func:`load_base_model`).
"""

from lipbound.counterfactuals.bundled import load_base_model
from lipbound.counterfactuals.datasets import TabularData, load_data
from lipbound.counterfactuals.generators import (
    CounterfactualResult,
    closest_counterfactual,
    nearest_neighbour,
    trex_iterative,
    trex_nn,
    wachter,
)
from lipbound.counterfactuals.guarantee import GuaranteeResult, stability_guarantee
from lipbound.counterfactuals.space import FeatureSpace
from lipbound.counterfactuals.stability import favourable_probability, stability

__all__ = [
    "CounterfactualResult",
    "FeatureSpace",
    "GuaranteeResult",
    "TabularData",
    "closest_counterfactual",
    "favourable_probability",
    "load_base_model",
    "load_data",
    "nearest_neighbour",
    "stability",
    "stability_guarantee",
    "trex_iterative",
    "trex_nn",
    "wachter",
]
