"""Robust counterfactual explanations (Hamman et al., ICML 2023) with certified Lipschitz guarantees.

* :func:`stability`: the Monte-Carlo Stability measure R_{k,sigma^2}(x, m).
* :func:`stability_guarantee`: the concentration bound on P(M(x') < R_hat - eps) with a certified gamma.
"""

from lipbound.counterfactuals.guarantee import GuaranteeResult, stability_guarantee
from lipbound.counterfactuals.stability import favourable_probability, stability

__all__ = ["GuaranteeResult", "favourable_probability", "stability", "stability_guarantee"]
