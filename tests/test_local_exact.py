"""The engine against exact local Lipschitz values of tiny ReLU nets (independent MILP / region enumeration).

For each net, box and norm with exact value ``E``:

* soundness: ``crown >= E``, ``crown+optimize >= E``, ``interval >= E`` and ``lower <= E`` (``lower`` is attained
  at a point of the box);
* ordering: ``interval >= crown >= crown+optimize`` (alpha-optimisation starts from the plain CROWN slopes and keeps
  the best bound, so it is never looser);
* tightness: no ratio ``upper / E`` gets looser than the value stored in ``tests/reference/tightness.json`` by more
  than ``TIGHTNESS_RTOL`` (and ``lower / E`` not smaller). A relaxation that becomes looser (a shifted chord, a
  dropped plane) fails here even though it stays sound. After a deliberate change of the engine's tightness
  re-generate the file with ``scripts/tightness_refs.py`` and say why in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.reference.exact import exact_by_enumeration, exact_local_lipschitz_milp
from tests.reference.nets import TINY_EXACT_CASES, tiny_relu_mlp

TOL = 1e-6
TIGHTNESS_RTOL = 0.01
CASES = TINY_EXACT_CASES
NORMS = ("inf", 2, 1)
TIGHTNESS_FILE = Path(__file__).parent / "reference" / "tightness.json"


def case_key(sizes, seed, eps, margin, norm) -> str:
    return f"{'-'.join(map(str, sizes))}|seed={seed}|eps={eps}|c={margin}|norm={norm}"


def _exact(w, b, lo, hi, c, norm) -> float:
    if norm == 2:  # not MILP-representable: enumerate regions (nets here have <= 24 ReLUs)
        return exact_by_enumeration(w, b, lo, hi, c, norm)
    return exact_local_lipschitz_milp(w, b, lo, hi, c, norm)


def compute(sizes, seed, eps, margin, norm) -> dict[str, float]:
    """Exact value and every method's bound for one case (also used by ``scripts/tightness_refs.py``)."""
    import lipbound as lip

    model, w, b = tiny_relu_mlp(sizes, seed)
    x0 = torch.tensor(np.random.default_rng(seed).normal(size=(1, sizes[0])))
    lo, hi = (x0 - eps)[0].numpy(), (x0 + eps)[0].numpy()
    c = None
    if margin is not None:
        c = torch.zeros(sizes[-1], dtype=torch.float64)
        c[margin[0]], c[margin[1]] = 1.0, -1.0
    exact = _exact(w, b, lo, hi, None if c is None else c.numpy(), norm)
    crown = lip.local_lipschitz(model, x0, eps, norm=norm, c=c)
    interval = lip.local_lipschitz(model, x0, eps, norm=norm, c=c, method="interval", lower=False)
    alpha = lip.local_lipschitz(model, x0, eps, norm=norm, c=c, optimize=True, lower=False)
    return {
        "exact": exact,
        "crown": crown.upper.item(),
        "interval": interval.upper.item(),
        "alpha": alpha.upper.item(),
        "lower": crown.lower.item(),
    }


@pytest.fixture(scope="module")
def tightness() -> dict:
    if not TIGHTNESS_FILE.exists():
        pytest.fail(f"{TIGHTNESS_FILE} is missing: run scripts/tightness_refs.py")
    return json.loads(TIGHTNESS_FILE.read_text())


@pytest.mark.parametrize(("sizes", "seed", "eps", "margin"), CASES)
@pytest.mark.parametrize("norm", NORMS)
def test_engine_against_exact_value(lip, tightness, sizes, seed, eps, margin, norm):
    v = compute(sizes, seed, eps, margin, norm)
    exact, up, ib, op, low = v["exact"], v["crown"], v["interval"], v["alpha"], v["lower"]
    name = case_key(sizes, seed, eps, margin, norm)
    print(
        f"\n{name}: exact {exact:.6f} | crown {up:.6f} ({up / exact:.3f}x) | crown+opt {op:.6f} ({op / exact:.3f}x)"
        f" | interval {ib:.6f} ({ib / exact:.3f}x) | lower {low:.6f} ({low / exact:.3f}x)"
    )
    assert up >= exact - TOL * max(1.0, exact), f"UNSOUND crown: {name}: {up} < exact {exact}"
    assert op >= exact - TOL * max(1.0, exact), f"UNSOUND crown+optimize: {name}: {op} < exact {exact}"
    assert ib >= exact - TOL * max(1.0, exact), f"UNSOUND interval: {name}: {ib} < exact {exact}"
    assert ib >= up - 1e-9 * max(1.0, up), f"interval tighter than crown: {name}: {ib} < {up}"
    assert op <= up + 1e-9 * max(1.0, up), f"alpha-optimised looser than plain crown: {name}: {op} > {up}"
    assert low <= exact + TOL * max(1.0, exact), f"lower not attained: {name}: {low} > exact {exact}"

    ref = tightness[name]
    assert abs(exact - ref["exact"]) <= 1e-6 * max(1.0, exact), f"exact reference changed: {name}"
    for key, val in (("crown", up), ("crown+alpha", op), ("interval", ib)):
        assert val / exact <= ref[key] * (1 + TIGHTNESS_RTOL), (
            f"{key} got looser on {name}: {val / exact:.4f}x exact, stored {ref[key]:.4f}x"
        )
    assert low / exact >= ref["lower"] * (1 - TIGHTNESS_RTOL) - 1e-12, (
        f"lower got weaker on {name}: {low / exact:.4f}x exact, stored {ref['lower']:.4f}x"
    )
