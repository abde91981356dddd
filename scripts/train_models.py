"""Train the bundled models deterministically and write them to ``src/lipbound/data`` (dev-time only).

Run: ``.venv/bin/python scripts/train_models.py``. Needs scikit-learn (its bundled ``load_digits``; no download).
Everything is float32 on CPU with fixed seeds and ``torch.use_deterministic_algorithms(True)``, so re-running
reproduces the shipped files' weights.

Data:
* digits: 1797 8x8 images scaled to [0, 1] (pixel / 16), a fixed stratified 75/25 train/test split.
* simple: x ~ U([0,1]^d), d = SIMPLE_DIM; label y = 1[t(x) > median t] for a fixed random teacher
  t(x) = v^T tanh(A (x - 1/2) * 4) (a 2-class task as in Shi et al. 2022's synthetic data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lipbound.models import SIMPLE_DIM, SIMPLE_WIDTHS, DigitsCNN, DigitsMLP, SimpleMLP

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "lipbound" / "data"
SEED = 0
N_DIGIT_SAMPLES = 16
N_SIMPLE_SAMPLES = 16


def setup_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)


def digits_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)


def simple_data(n_train: int = 4000, n_test: int = 1000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(SEED + 1)
    a = torch.randn(8, SIMPLE_DIM, generator=g)
    v = torch.randn(8, generator=g)
    x = torch.rand(n_train + n_test, SIMPLE_DIM, generator=g)
    t = torch.tanh(4 * (x - 0.5) @ a.T) @ v
    y = (t > t.median()).long()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int, batch: int = 64) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    setup_determinism(SEED)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    record: dict = {"seed": SEED, "dtype": "float32", "torch": torch.__version__, "models": {}}

    xtr, ytr, xte, yte = digits_data()
    xs, ys = xte[:N_DIGIT_SAMPLES], yte[:N_DIGIT_SAMPLES]
    np.savez_compressed(DATA_DIR / "digits_samples.npz", x=xs.numpy(), y=ys.numpy())
    for name, cls, shape, epochs in (
        ("digits-mlp", DigitsMLP, (64,), 60),
        ("digits-cnn", DigitsCNN, (1, 8, 8), 60),
    ):
        torch.manual_seed(SEED)
        model = train(cls(), xtr.reshape(-1, *shape), ytr, epochs=epochs, lr=3e-3, seed=SEED)
        _save(model, name, record, shape, xte.reshape(-1, *shape), yte, xs.reshape(-1, *shape), ys, epochs)

    xtr, ytr, xte, yte = simple_data()
    xs, ys = xte[:N_SIMPLE_SAMPLES], yte[:N_SIMPLE_SAMPLES]
    np.savez_compressed(DATA_DIR / "simple_samples.npz", x=xs.numpy(), y=ys.numpy())
    for w in SIMPLE_WIDTHS:
        torch.manual_seed(SEED)
        model = train(SimpleMLP(SIMPLE_DIM, w, 2), xtr, ytr, epochs=40, lr=2e-3, seed=SEED)
        _save(model, f"simple-mlp-{w}", record, (SIMPLE_DIM,), xte, yte, xs, ys, 40)

    (DATA_DIR / "models.json").write_text(json.dumps(record, indent=2) + "\n")
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.suffix in (".pt", ".npz", ".json"))
    print(f"wrote {DATA_DIR} ({total / 1024:.0f} KB)")


def _save(
    model: nn.Module,
    name: str,
    record: dict,
    shape: tuple[int, ...],
    xte: Tensor,
    yte: Tensor,
    xs: Tensor,
    ys: Tensor,
    epochs: int,
) -> None:
    fname = name.replace("-", "_") + ".pt"
    torch.save(model.state_dict(), DATA_DIR / fname)
    record["models"][name] = {
        "file": fname,
        "architecture": " ".join(str(model).split()),
        "input_shape": list(shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "test_accuracy": round(accuracy(model, xte, yte), 4),
        "test_size": int(yte.numel()),
        "sample_accuracy": round(accuracy(model, xs, ys), 4),
        "sample_size": int(ys.numel()),
    }
    print(name, record["models"][name]["test_accuracy"], record["models"][name]["sample_accuracy"])


if __name__ == "__main__":
    main()
