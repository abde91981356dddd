"""Train the bundled randomized-smoothing models deterministically into ``src/lipbound/smoothing/data`` (dev only).

Run: ``.venv/bin/python scripts/train_smoothing.py``. Uses scikit-learn's bundled digits (no download), float32 on
CPU, fixed seeds, ``torch.use_deterministic_algorithms(True)`` and one thread.

Data: 1797 8x8 images, pixels / 16 in [0, 1]; the stratified 75/25 train/test split of ``scripts/train_models.py``
(random_state 0), then 200 validation images split off the training part (stratified, random_state 1). The test
split (450) and validation split (200) are shipped in ``digits_rs_samples.npz``.

Models (see :mod:`lipbound.smoothing.models`): CNNs trained on x + N(0, sigma^2 I) for sigma in {0.12, 0.25, 0.5};
a 1-Lipschitz MaxMin network (certified spectral parametrisation, cross-entropy on ``LIP_SCALE * f(x)``) trained
with noise at sigma = 0.25, its certified weights then baked into plain Linear layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import lipbound
from lipbound.nn import spectral_parametrize
from lipbound.smoothing.models import CNN_SIGMAS, LIP_NAME, LIP_SIGMA, DigitsRSCNN, DigitsRSLip, cnn_name, specs

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "lipbound" / "smoothing" / "data"
SEED = 0
EPOCHS_CNN = 80
EPOCHS_LIP = 150
LIP_SCALE = 3.0  # smaller logit scale -> larger margins of the 1-Lipschitz logits (radius from L)


def setup(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)


def digits_splits() -> dict[str, tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=200, random_state=1, stratify=ytr)
    t = torch.from_numpy
    return {"train": (t(xtr), t(ytr)), "val": (t(xva), t(yva)), "test": (t(xte), t(yte))}


def train(model: nn.Module, x: Tensor, y: Tensor, sigma: float, epochs: int, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            idx = perm[i : i + 64]
            xb = x[idx] + sigma * torch.randn(x[idx].shape, generator=g)
            loss = nn.functional.cross_entropy(scale * model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def noisy_accuracy(model: nn.Module, x: Tensor, y: Tensor, sigma: float, seed: int = 123) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    clean = (model(x).argmax(1) == y).float().mean().item()
    noisy = (model(x + sigma * torch.randn(x.shape, generator=g)).argmax(1) == y).float().mean().item()
    return round(clean, 4), round(noisy, 4)


def train_lip(x: Tensor, y: Tensor, seed: int) -> tuple[nn.Module, list[float]]:
    setup(seed)
    net = DigitsRSLip()
    params = [spectral_parametrize(m, 1.0) for m in net if isinstance(m, nn.Linear)]
    train(net, x, y, LIP_SIGMA, EPOCHS_LIP, seed, scale=LIP_SCALE)
    norms = [p.certify() for p in params]
    baked = DigitsRSLip()
    with torch.no_grad():
        for src, dst in zip(net, baked, strict=True):
            if isinstance(src, nn.Linear):
                dst.weight.copy_(src.weight)  # eval mode: the certified, rescaled weight
                dst.bias.copy_(src.bias)
    return baked.eval(), norms


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    splits = digits_splits()
    (xtr, ytr), (xva, yva), (xte, yte) = splits["train"], splits["val"], splits["test"]
    np.savez_compressed(
        DATA_DIR / "digits_rs_samples.npz", x=xte.numpy(), y=yte.numpy(), x_val=xva.numpy(), y_val=yva.numpy()
    )
    files = {s.name: s.weights for s in specs()}
    info: dict = {"seed": SEED, "dtype": "float32", "torch": torch.__version__, "models": {}}
    for i, sigma in enumerate(CNN_SIGMAS):
        setup(SEED + i)
        net = DigitsRSCNN()
        train(net, xtr, ytr, sigma, EPOCHS_CNN, SEED + i)
        name = cnn_name(sigma)
        torch.save(net.state_dict(), DATA_DIR / files[name])
        clean, noisy = noisy_accuracy(net, xte, yte, sigma)
        lip = lipbound.global_lipschitz(net, norm=2, input_shape=(1, 8, 8))
        info["models"][name] = {
            "file": files[name],
            "train_sigma": sigma,
            "epochs": EPOCHS_CNN,
            "seed": SEED + i,
            "test_accuracy": clean,
            "noisy_test_accuracy": noisy,
            "certified_l2_lipschitz": lip.upper,
            "lipschitz_method": lip.method,
        }
        print(name, info["models"][name], flush=True)
    net, norms = train_lip(xtr, ytr, SEED + 10)
    torch.save(net.state_dict(), DATA_DIR / files[LIP_NAME])
    clean, noisy = noisy_accuracy(net, xte, yte, LIP_SIGMA)
    lip = lipbound.global_lipschitz(net, norm=2, input_shape=(1, 8, 8))
    info["models"][LIP_NAME] = {
        "file": files[LIP_NAME],
        "train_sigma": LIP_SIGMA,
        "epochs": EPOCHS_LIP,
        "seed": SEED + 10,
        "loss_scale": LIP_SCALE,
        "layer_certified_norms": norms,
        "test_accuracy": clean,
        "noisy_test_accuracy": noisy,
        "certified_l2_lipschitz": lip.upper,
        "lipschitz_method": lip.method,
    }
    print(LIP_NAME, info["models"][LIP_NAME], flush=True)
    (DATA_DIR / "models.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
