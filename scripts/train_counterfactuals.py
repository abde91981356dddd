"""Train the bundled counterfactual base models deterministically (dev-time only).

Run: ``.venv/bin/python scripts/train_counterfactuals.py``. Writes ``cf_german_mlp.pt``,
``cf_breast_cancer_mlp.pt``, the test splits (``<data>_test.npz``) and ``models.json`` into
``src/lipbound/counterfactuals/data``. Protocol of the paper's code: d-128-128-2 ReLU MLP, Adam lr 1e-3, 50 epochs,
batch 256, seed 0, on the fixed 50/50 training split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lipbound.counterfactuals.bundled import BASE_MODELS, WIDTH
from lipbound.counterfactuals.datasets import load_data
from lipbound.counterfactuals.training import train_mlps

OUT = Path(__file__).resolve().parents[1] / "src" / "lipbound" / "counterfactuals" / "data"
SEED = 0


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    info = {}
    for data, (name, d) in BASE_MODELS.items():
        ds = load_data(data)
        assert ds.x.shape[1] == d, (data, ds.x.shape)
        (model,) = train_mlps(ds.x_train, ds.y_train, [SEED], width=WIDTH)
        torch.save(model.state_dict(), OUT / f"{name.replace('-', '_')}.pt")
        np.savez_compressed(OUT / f"{data}_test.npz", x=ds.x_test.float().numpy(), y=ds.y_test.numpy())
        with torch.no_grad():
            acc = {
                split: float((model(xs.float()).argmax(1) == ys).double().mean())
                for split, xs, ys in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test))
            }
            pred = model(ds.x_test.float()).argmax(1)
        rejected = int(((pred == 0) & (ds.y_test == 0)).sum())
        info[name] = {
            "data": data,
            "architecture": f"{d}-{WIDTH}-{WIDTH}-2 ReLU MLP (logit 1 favourable)",
            "seed": SEED,
            "epochs": 50,
            "batch_size": 256,
            "lr": 1e-3,
            "train_rows": len(ds.train),
            "test_rows": len(ds.test),
            "accuracy": acc,
            "rejected_test_factuals": rejected,
        }
        print(name, info[name])
    (OUT / "models.json").write_text(json.dumps({"models": info}, indent=2) + "\n")


if __name__ == "__main__":
    main()
