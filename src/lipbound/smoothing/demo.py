"""The randomized-smoothing section of ``lipbound demo``: Cohen vs LVM-RS (+ certified Lipschitz radius) on a few
digits with the bundled 1-Lipschitz network (small n so that it stays fast). Writes ``smoothing.json``."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lipbound.models import load_bundled
from lipbound.smoothing.metrics import average_certified_radius, correct_predictions
from lipbound.smoothing.models import INPUT_SHAPE, LIP_NAME, LIP_SIGMA, load_digits_split
from lipbound.smoothing.smooth import Smooth


def smoothing_section(console: Console, out: Path, quick: bool = False) -> list[dict]:
    n_digits, n = (4, 500) if quick else (8, 2000)
    x, y = load_digits_split("test")
    x, y = x[:n_digits], y[:n_digits]
    sm = Smooth(load_bundled(LIP_NAME), 10, LIP_SIGMA, input_shape=INPUT_SHAPE, lipschitz_method="product")
    runs = [
        ("cohen", {}),
        ("lvm (n0)", {"method": "lvm"}),
        ("lvm (n0) + certified L", {"method": "lvm", "lipschitz": "certified"}),
    ]
    rows = []
    with console.status(f"randomized smoothing of {LIP_NAME} on {n_digits} digits, n={n}"):
        for label, kw in runs:
            res = sm.certify(x, n0=50, n=n, alpha=0.001, generator=0, **kw)
            ok = correct_predictions(res, y)
            rows.append(
                {
                    "method": label,
                    "radii": [round(float(r), 4) for r in res.radius],
                    "correct": ok.tolist(),
                    "acr": average_certified_radius(res.radius, ok),
                    "radius_from_L": res.radius_source.count("lipschitz"),
                    "seconds": res.seconds,
                }
            )
    table = Table(title=f"Randomized smoothing, {LIP_NAME}, sigma={LIP_SIGMA}, n={n}, alpha=0.001 (l2 radii)")
    for col in ("method", "certified radii (0 = abstain/wrong)", "ACR", "radius from L", "seconds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        radii = " ".join(f"{v:.2f}" if c else "0" for v, c in zip(r["radii"], r["correct"], strict=True))
        table.add_row(r["method"], radii, f"{r['acr']:.3f}", str(r["radius_from_L"]), f"{r['seconds']:.2f}")
    console.print(table)
    (out / "smoothing.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
