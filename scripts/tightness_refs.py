"""Write ``tests/reference/tightness.json``: bound / exact ratios per method on the tiny exact suite.

For every net of ``tests.reference.nets.TINY_EXACT_CASES`` and norm (inf, 2, 1): the exact local Lipschitz constant
(MILP for inf/1, region enumeration for 2) and the ratios ``upper / exact`` of crown, crown+alpha and interval, and
``lower / exact``. ``tests/test_local_exact.py`` asserts that no bound gets looser than stored by more than 1 %.
Re-run only after a deliberate change of the engine's tightness: ``.venv/bin/python scripts/tightness_refs.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_local_exact import CASES, NORMS, case_key, compute  # noqa: E402

OUT = ROOT / "tests" / "reference" / "tightness.json"


def main() -> None:
    torch.set_num_threads(1)
    refs = {}
    for sizes, seed, eps, margin in CASES:
        for norm in NORMS:
            v = compute(sizes, seed, eps, margin, norm)
            e = v["exact"]
            refs[case_key(sizes, seed, eps, margin, norm)] = {
                "exact": e,
                "crown": v["crown"] / e,
                "crown+alpha": v["alpha"] / e,
                "interval": v["interval"] / e,
                "lower": v["lower"] / e,
            }
            print(case_key(sizes, seed, eps, margin, norm), refs[case_key(sizes, seed, eps, margin, norm)])
    OUT.write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
