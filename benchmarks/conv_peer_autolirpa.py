"""Peer column of ``conv_bench.py``: auto_LiRPA's Jacobian bound (plain CROWN) of the local l_inf Lipschitz constant.

Run by ``conv_bench.py`` in a subprocess with the interpreter of a separate environment (``/tmp/alvenv``; never a
lipbound dependency): ``python conv_peer_autolirpa.py CASE.pt OUT.json``. ``CASE.pt`` holds the architecture name,
the state dict, the input and eps (written by the benchmark, so both tools bound the same weights on the same box).
For every output row ``i`` it bounds ``||grad f_i||_1`` over the box (``GradNorm(1)`` of ``JacobianOP``, one
``compute_jacobian_bounds`` call per row, as auto_LiRPA's own example does) and reports the maximum, the seconds
and the peak RSS (ru_maxrss) of this process.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
from torch import nn


def build(arch: str) -> nn.Sequential:
    if arch == "mnist":
        return nn.Sequential(
            nn.Conv2d(1, 8, 4), nn.ReLU(), nn.Conv2d(8, 8, 4), nn.ReLU(), nn.Flatten(),
            nn.Linear(8 * 22 * 22, 100), nn.ReLU(), nn.Linear(100, 10),
        )  # fmt: skip
    if arch == "cifar":
        return nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 8 * 8, 100), nn.ReLU(),
            nn.Linear(100, 10),
        )  # fmt: skip
    raise ValueError(arch)


def main() -> None:
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.jacobian import GradNorm, JacobianOP
    from auto_LiRPA.perturbations import PerturbationLpNorm

    torch.set_num_threads(1)
    case = torch.load(sys.argv[1])
    dtype = torch.float64 if case.get("dtype", "float32") == "float64" else torch.float32
    torch.set_default_dtype(dtype)  # auto_LiRPA's Jacobian ops create tensors in the default dtype
    model = build(case["arch"]).to(dtype)
    model.load_state_dict(case["state"])
    x0 = case["x0"].to(dtype)

    class Lip(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.model, self.grad_norm = m, GradNorm(norm=1)

        def forward(self, x, mask):
            return self.grad_norm(JacobianOP.apply(self.model(x).matmul(mask), x))

    t0, c0 = time.perf_counter(), time.process_time()
    mask = torch.zeros(10, 1, dtype=dtype)
    bm = BoundedModule(Lip(model), (BoundedTensor(x0), mask), device="cpu")
    x = BoundedTensor(x0, PerturbationLpNorm(norm=np.inf, eps=case["eps"]))
    rows, row_seconds = [], []
    for i in case.get("rows", range(10)):
        t1 = time.perf_counter()
        mask.zero_()
        mask[i, 0] = 1
        rows.append(float(bm.compute_jacobian_bounds((x, mask), bound_lower=False)[1].max()))
        row_seconds.append(time.perf_counter() - t1)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(sys.argv[2], "w") as f:
        json.dump(
            {
                "upper_max": max(rows),
                "rows": rows,
                "row_seconds": row_seconds,
                "seconds": secs,
                "cpu_seconds": cpu,
                "peak_mb": peak,
            },
            f,
        )


if __name__ == "__main__":
    main()
