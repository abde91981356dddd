"""Pinned global-bound values (computed with the pre-refactor intake) and the dense-size refusal.

Any change of the model intake or of the layered conversion must keep every global method's value on these nets
(within solver tolerance); a dense matrix above the limit must be refused before it is allocated (the large-conv
run under an address-space limit is in test_global_structured.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from lipbound.errors import InvalidModelError
from lipbound.global_bounds.api import global_lipschitz
from lipbound.global_bounds.network import extract
from lipbound.nn import GroupSort, MaxMin
from lipbound.nn.householder import Householder


class _Res(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.lin(x))


def _mk(layers: Callable[[], list[nn.Module]], seed: int = 0) -> nn.Module:
    """Build the layers after seeding (deterministic weights)."""
    torch.manual_seed(seed)
    return nn.Sequential(*layers()).double().eval()


def _nets() -> dict[str, nn.Module]:
    return {
        "relu_mlp": _mk(lambda: [nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)]),
        "maxmin": _mk(lambda: [nn.Linear(6, 8), MaxMin(), nn.Linear(8, 8), MaxMin(), nn.Linear(8, 3)], seed=1),
        "groupsort": _mk(lambda: [nn.Linear(6, 8), GroupSort(4), nn.Linear(8, 3)], seed=2),
        "householder": _mk(lambda: [nn.Linear(6, 8), Householder(8), nn.Linear(8, 3)], seed=3),
        "residual": _mk(lambda: [nn.Linear(6, 6), _Res(6), nn.Linear(6, 3)], seed=4),
        "conv": _mk(
            lambda: [nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(27, 2)], seed=5
        ),
    }


_SHAPES = {"conv": (2, 5, 5)}
# values of the intake before the one-model-intake refactor (issue 9); SDP values hold to solver tolerance
PINNED = {
    ("relu_mlp", "2", "product"): 0.9005778489835795,
    ("relu_mlp", "2", "lipsdp-layer"): 0.5883562469643819,
    ("relu_mlp", "2", "lipsdp-neuron"): 0.5040556095813025,
    ("relu_mlp", "2", "lipsdp-nsr"): 0.7556613921274595,
    ("relu_mlp", "inf", "product"): 4.955488031047535,
    ("relu_mlp", "inf", "lipsdp-nsr"): 1.477357107998983,
    ("maxmin", "2", "product"): 0.6142783738913603,
    ("maxmin", "2", "lipsdp-nsr"): 0.49406216835710076,
    ("maxmin", "inf", "product"): 5.9237533477617434,
    ("maxmin", "inf", "lipsdp-nsr"): 0.9843392786353864,
    ("groupsort", "2", "product"): 0.6893869721104219,
    ("groupsort", "2", "lipsdp-nsr"): 0.6647429115331903,
    ("groupsort", "inf", "product"): 2.1873455787371547,
    ("groupsort", "inf", "lipsdp-nsr"): 1.175668915147383,
    ("householder", "2", "product"): 0.8100061691401048,
    ("householder", "2", "lipsdp-nsr"): 0.7791968233714945,
    ("householder", "inf", "product"): 2.6206203450637617,
    ("householder", "inf", "lipsdp-nsr"): 1.6640687438607975,
    ("residual", "2", "product"): 1.8959574031329225,
    ("residual", "2", "lipsdp-nsr"): 1.5056574572200616,
    ("residual", "inf", "product"): 8.180586106015806,
    ("residual", "inf", "lipsdp-nsr"): 3.3457457756719626,
    ("conv", "2", "product"): 0.6901253093115275,
    ("conv", "2", "liplt"): 0.4683674668412051,
    ("conv", "2", "eclipse-fast"): 0.5047414317548904,
    ("conv", "2", "lipsdp-layer"): 0.3827754470659051,
    ("conv", "2", "lipsdp-neuron"): 0.31777012009071176,
    ("conv", "2", "lipsdp-nsr"): 0.527527758697809,
    ("conv", "inf", "product"): 7.0535655165836895,
    ("conv", "inf", "liplt"): 4.205883656873485,
    ("conv", "inf", "lipsdp-nsr"): 2.7344510653780656,
}
_EXACT = ("product", "liplt", "eclipse-fast")


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return _nets()


@pytest.mark.parametrize("key", list(PINNED), ids=["-".join(k) for k in PINNED])
def test_pinned_global_values(nets: dict[str, nn.Module], key: tuple[str, str, str]) -> None:
    name, norm, method = key
    r = global_lipschitz(nets[name], norm, method, input_shape=_SHAPES.get(name, (6,)))
    rel = 1e-9 if method in _EXACT else 2e-3
    assert r.upper == pytest.approx(PINNED[key], rel=rel)


def test_dense_refusal_message_in_process() -> None:
    """Segments stay structured in the intake; a dense matrix above MAX_DENSE is refused on first use, with its
    size, and a method that needs it is routed to one that does not (details["fallbacks"] says why)."""
    m = _mk(lambda: [nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16 * 16, 2)])
    from lipbound.global_bounds import segments

    old = segments.MAX_DENSE
    segments.MAX_DENSE = 256 * 511  # the conv's dense matrix (512 x 256) does not fit
    try:
        net = extract(m, (1, 16, 16))  # no dense matrix is formed here
        with pytest.raises(InvalidModelError, match="dense 512 x 256"):
            net.weights[0]
        r = global_lipschitz(m, 2, "lipsdp-neuron", input_shape=(1, 16, 16))
        assert r.method == "liplt" and "dense 512 x 256" in r.details["fallbacks"][0]
        assert "GiB" in r.details["fallbacks"][0]
    finally:
        segments.MAX_DENSE = old
    assert r.upper == pytest.approx(global_lipschitz(m, 2, "liplt", input_shape=(1, 16, 16)).upper, rel=1e-12)
