"""Profile plain CROWN local l_inf bounds on conv nets: where time and memory go.

Usage: ``python scripts/conv_profile.py [mnist|cifar] [--batch B] [--rows K]``. Prints per-stage wall time, the
peak RSS (ru_maxrss) and, for every back-substitution target, the coefficient shape and seconds.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

import lipbound
from lipbound.engine import crown, forward


def mnist_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 4),
        nn.ReLU(),
        nn.Conv2d(8, 8, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 22 * 22, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def cifar_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="mnist")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--max-memory", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = mnist_cnn() if args.model == "mnist" else cifar_cnn()
    shape = (1, 28, 28) if args.model == "mnist" else (3, 32, 32)
    x0 = torch.rand(args.batch, *shape, generator=torch.Generator().manual_seed(1))
    log = []
    orig = crown.backsubstitute

    def traced(graph, target, lam, *a, **k):
        t = time.perf_counter()
        out = orig(graph, target, lam, *a, **k)
        log.append((target.name, tuple(lam.shape), time.perf_counter() - t))
        return out

    forward.backsubstitute = traced
    kw = {} if args.max_memory is None else {"max_memory": args.max_memory}
    t0 = time.perf_counter()
    r = lipbound.local_lipschitz(model, x0, args.eps, lower=False, use_global=False, **kw)
    total = time.perf_counter() - t0
    for name, shp, sec in log:
        print(f"  backsub {name:40s} lam={shp} {sec:.2f}s")
    print(f"total {total:.2f}s  upper_max={r.upper_max.tolist()}  unstable={r.details['unstable_neurons']}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
