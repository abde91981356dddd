"""Write the runner's bundled data set ``digits-test`` (dev-time only; no training, no download).

Run: ``.venv/bin/python scripts/train_runner.py``. The 450-image test split of scikit-learn's bundled digits
(``load_digits``, pixel / 16), EXACTLY the split the bundled digits models were evaluated on
(``scripts/train_models.py``: stratified 75/25, ``random_state=0``); its first 16 images are the models' shipped
samples. Written to ``src/lipbound/runner/data/digits_test.npz`` (keys ``x`` (450, 8, 8) float32, ``y`` int64).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_models import digits_data  # noqa: E402

OUT = ROOT / "src" / "lipbound" / "runner" / "data" / "digits_test.npz"


def main() -> None:
    _, _, xte, yte = digits_data()
    np.savez_compressed(OUT, x=xte.numpy(), y=yte.numpy())
    print(f"wrote {OUT} ({xte.shape[0]} images)")


if __name__ == "__main__":
    main()
