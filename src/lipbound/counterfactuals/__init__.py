"""Robust counterfactual explanations (Hamman et al., ICML 2023): the Stability measure.

Only :func:`stability` is implemented so far; see :mod:`lipbound.counterfactuals.stability`.
"""

from lipbound.counterfactuals.stability import favourable_probability, stability

__all__ = ["favourable_probability", "stability"]
