"""Tightness guard for the S-shaped relaxations (tanh, sigmoid): plain CROWN local l_inf bounds on seeded float64
MLPs may get tighter, never looser, than the stored values (regenerate them on purpose, with a reason, if a
relaxation changes). Sound bugs that only loosen a relaxation pass every soundness test; this catches them (e.g. the
mid-point tangent of the mixed case moved to ``l``: up to 1.7 % looser here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lipbound

#: (activation, seed, eps) -> plain CROWN upper bound per output row (x0 = 0.2 * ones(3))
REFERENCE = {
    ("tanh", 0, 0.3): (0.24294728334278784, 0.40270519606878985),
    ("tanh", 0, 1.0): (0.36378328652590164, 0.6541921984236619),
    ("tanh", 1, 0.3): (0.13987165066074597, 0.21868326465205432),
    ("tanh", 1, 1.0): (0.2613599590680023, 0.4691446853517878),
    ("sigmoid", 0, 0.3): (0.014977042801169505, 0.02124942911362229),
    ("sigmoid", 0, 1.0): (0.016459048226518676, 0.026768493114005906),
    ("sigmoid", 1, 0.3): (0.006619253973845134, 0.008920721100797108),
    ("sigmoid", 1, 1.0): (0.007913620517210836, 0.01409796339141039),
}


def _net(act: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    a = nn.Tanh() if act == "tanh" else nn.Sigmoid()
    return nn.Sequential(nn.Linear(3, 12), a, nn.Linear(12, 12), a, nn.Linear(12, 2)).double().eval()


@pytest.mark.parametrize("key", list(REFERENCE), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_smooth_relaxations_never_looser_than_reference(key):
    act, seed, eps = key
    model = _net(act, seed)
    x0 = torch.full((1, 3), 0.2, dtype=torch.float64)
    r = lipbound.local_lipschitz(model, x0, eps, lower=True)
    for k, ref in enumerate(REFERENCE[key]):
        assert float(r.upper[0, k]) <= ref * (1 + 1e-9), f"row {k} looser than the reference {ref}"
        assert float(r.upper[0, k]) >= float(r.lower[0, k])  # and still above an attained value
