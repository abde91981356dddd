"""Mutation run: plant one bug at a time in a copy of the package and report which tests catch it.

The suite's strength is measured, not assumed: each *mutant* below is a realistic single-line bug (a looser or an
unsound relaxation, a dropped rounding term, a witness outside the box, a weakened certificate check, a
mis-calibrated confidence bound). For each one the script copies ``src/`` and ``tests/`` to a scratch directory,
applies the edit (an exact string replacement that must match exactly once, so a stale mutant is reported, not
silently skipped), runs the tests that guard that part of the code (``-x``: the first failure decides) and records
whether the mutant was *caught* (some test failed), *missed* (all passed) or *broken* (the edit no longer applies).

Usage: ``python scripts/mutation.py`` (all mutants, ~10-20 min on 2 cores) or ``--only relu-chord-loose,...``;
writes ``benchmarks/results/mutation.md`` and ``.json``. The bar: every mutant caught.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CORE_TESTS = [
    "tests/test_local_exact.py",
    "tests/test_local_soundness.py",
    "tests/test_relaxations.py",
    "tests/test_rounding.py",
    "tests/test_jacobian_graph.py",
]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to src/lipbound
    old: str
    new: str
    what: str  # the bug, in words; "(sound)" marks a bug that only loses tightness
    tests: tuple[str, ...] = tuple(CORE_TESTS)


MUTANTS: list[Mutant] = [
    Mutant(
        "relu-chord-loose",
        "ops/relu.py",
        "ub = torch.where(unstable, -l * u / width, torch.zeros_like(l))",
        "ub = torch.where(unstable, -1.5 * l * u / width, torch.zeros_like(l))",
        "ReLU upper chord intercept 1.5x too high (sound, looser)",
    ),
    Mutant(
        "relu-chord-low",
        "ops/relu.py",
        "ub = torch.where(unstable, -l * u / width, torch.zeros_like(l))",
        "ub = torch.where(unstable, -0.5 * l * u / width, torch.zeros_like(l))",
        "ReLU upper chord intercept halved (unsound)",
    ),
    Mutant(
        "relu-alpha-flipped",
        "ops/relu.py",
        "return (u >= -l).to(l.dtype)",
        "return (u < -l).to(l.dtype)",
        "CROWN lower-slope heuristic inverted (sound, looser)",
    ),
    Mutant(
        "relu-clarke-kink",
        "ops/relu.py",
        "return (l > 0).to(l.dtype), (u >= 0).to(l.dtype)",
        "return (l > 0).to(l.dtype), (u > 0).to(l.dtype)",
        "ReLU derivative range drops the Clarke value 1 when u == 0 (unsound on kink-tied inputs)",
    ),
    Mutant(
        "crown-planes-swapped",
        "engine/crown.py",
        "const = _sum64(pos * ub + neg * lb, k, acc) if upper else",
        "const = _sum64(pos * lb + neg * ub, k, acc) if upper else",
        "back-substitution uses the lower plane's offset for positive coefficients (unsound)",
    ),
    Mutant(
        "crown-concretise-signed",
        "engine/crown.py",
        "const_u + _sum_trailing(au * centre + au.abs() * radius, k),",
        "const_u + _sum_trailing(au * centre + au * radius, k),",
        "box concretisation with signed instead of absolute coefficients (unsound)",
    ),
    Mutant(
        "crown-no-rounding-term",
        "engine/crown.py",
        "const_u, const_l = const_u + err_u, const_l - err_l",
        "const_u, const_l = const_u, const_l",
        "rigorous floating-point error term dropped (unsound under cancellation)",
        (*CORE_TESTS, "tests/test_lower_witness.py"),
    ),
    Mutant(
        "interval-signed-radius",
        "ops/base.py",
        "r = self.abs().apply(*radii)",
        "r = self.apply(*radii).abs()",
        "interval rule of linear ops uses |W r| instead of |W| r (unsound for mixed signs)",
    ),
    Mutant(
        "round-up-dropped",
        "engine/rounding.py",
        "* (y.detach().to(x.dtype) < x)",
        "* 0",
        "float64 -> float32 result rounded to nearest instead of up (unsound in float32)",
        (*CORE_TESTS, "tests/test_lower_witness.py", "tests/test_local_api.py"),
    ),
    Mutant(
        "gate-upper-chord",
        "engine/jacobian.py",
        "uw, ub = chord_relaxation(torch.maximum(dl_l, du_l), torch.maximum(dl_u, du_u), l, u)",
        "uw, ub = chord_relaxation(torch.minimum(dl_l, du_l), torch.minimum(dl_u, du_u), l, u)",
        "McCormick upper plane of the gate product built from the minima (unsound)",
    ),
    Mutant(
        "sshape-tangent-off",
        "ops/_sshape.py",
        "mw, mb = _tangent(f, df, (l + u) / 2)",
        "mw, mb = _tangent(f, df, l)",
        "tanh/sigmoid tangent taken at l instead of the midpoint (sound, looser)",
        ("tests/test_relaxations.py", "tests/test_local_soundness.py", "tests/test_tightness_smooth.py"),
    ),
    Mutant(
        "batchnorm-eps-dropped",
        "ops/batchnorm.py",
        "/ torch.sqrt(var + eps)",
        "/ torch.sqrt(var)",
        "BatchNorm folded without eps (too large a scale: sound but wrong forward; wrong model)",
        ("tests/test_intake.py", "tests/test_local_soundness.py", "tests/test_jacobian_graph.py"),
    ),
    Mutant(
        "lower-witness-unclamped",
        "lower.py",
        "points = torch.minimum(torch.maximum(points, lo), hi)  # lo + width can round above hi",
        "points = points",
        "lower-bound witness may lie outside the box",
        ("tests/test_lower_witness.py", "tests/test_lower.py"),
    ),
    Mutant(
        "monotone-tol-sign",
        "monotonicity.py",
        "increasing=lo >= 0,",
        "increasing=lo >= -1e-3,",
        "monotonicity certified although the derivative bound is slightly negative (unsound)",
        ("tests/test_monotonicity.py",),
    ),
    Mutant(
        "rump-shift-zero",
        "global_bounds/certify.py",
        "return 4.0 * alpha * trace + 4.0 * n * U * float(np.linalg.norm(A)) + (2 * n + 2) * TINY * 4",
        "return 0.0",
        "PSD certificate without the rounding shift (unsound in the last digits)",
        (
            "tests/test_certify_rounding.py",
            "tests/test_global_lipsdp.py",
            "tests/test_global_faults.py",
            "tests/test_global_nsr_fast.py",
        ),
    ),
    Mutant(
        "farkas-no-rounding",
        "farkas.py",
        "    value = s - err_t - err_g - yb - err_b\n",
        "    value = s - yb\n",
        "Farkas emptiness check without its rounding terms (BaB may prune a non-empty domain: unsound)",
        ("tests/test_bab_farkas.py", "tests/test_bab.py"),
    ),
    Mutant(
        "global-segment-error-dropped",
        "global_bounds/segments.py",
        "errs.append(absf(eye) * self.rel if self.rel else torch.zeros_like(rows[-1]))",
        "errs.append(torch.zeros_like(rows[-1]))",
        "dense global segments lose the rounding of BatchNorm/AvgPool/constant scaling (unsound in the last digits)",
        ("tests/test_global_rigor.py",),
    ),
    Mutant(
        "dominating-factor-unchecked",
        "global_bounds/certify.py",
        "return R if is_psd_certified(D - shift * np.eye(m)) else None",
        "return R",
        "LipSDP input reduction without the proof R R^T >= W W^T (unsound if the factor is short)",
        ("tests/test_certify_rounding.py",),
    ),
    Mutant(
        "gelu-pad-dropped",
        "ops/gelu_silu.py",
        "return _PAD * eps * (v.abs() + (1 + a_abs) * z.abs()) + torch.finfo(v.dtype).tiny",
        "return 0.0 * v",
        "GELU/SiLU rules without their rounding widening (unsound in float32)",
        ("tests/test_gelu_silu.py",),
    ),
    Mutant(
        "clopper-pearson-alpha",
        "smoothing/stats.py",
        "out = stats.beta.ppf(a, np.maximum(k, 1e-300), n - k + 1)",
        "out = stats.beta.ppf(2 * a, np.maximum(k, 1e-300), n - k + 1)",
        "Clopper-Pearson lower bound at confidence 1 - 2 alpha (coverage fails)",
        ("tests/test_smoothing_stats.py", "tests/test_smoothing_coverage.py"),
    ),
]


@dataclass
class Outcome:
    name: str
    what: str
    status: str  # caught | missed | broken
    caught_by: str
    seconds: float


def _apply(scratch: Path, m: Mutant) -> str | None:
    path = scratch / "src" / "lipbound" / m.file
    if not path.exists():
        return f"{m.file} does not exist"
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        return f"the edited line occurs {n} times in {m.file} (expected once)"
    path.write_text(text.replace(m.old, m.new))
    return None


def _first_failure(log: str) -> str:
    hit = re.search(r"^(?:FAILED|ERROR) (\S+)", log, re.M)
    if hit:
        return hit.group(1)
    hit = re.search(r"^(tests/\S+::\S+) FAILED", log, re.M)
    return hit.group(1) if hit else "(collection error)"


def run_mutant(m: Mutant, timeout: float) -> Outcome:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"lipbound-mut-{m.name}-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "src", scratch / "src")
        shutil.copytree(ROOT / "tests", scratch / "tests")
        shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
        problem = _apply(scratch, m)
        if problem:
            return Outcome(m.name, m.what, "broken", problem, 0.0)
        tests = [t for t in m.tests if (scratch / t).exists()]
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "2", *tests]
        env = {"PYTHONPATH": f"{scratch / 'src'}:{scratch}", "PATH": "/usr/bin:/bin", "HOME": tmp}
        try:
            proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(m.name, m.what, "caught", "(timeout)", time.perf_counter() - t0)
        log = proc.stdout + proc.stderr
        status = "missed" if proc.returncode == 0 else "caught"
        by = "" if status == "missed" else _first_failure(log)
        return Outcome(m.name, m.what, status, by, time.perf_counter() - t0)


def to_markdown(rows: list[Outcome], total: float) -> str:
    caught = sum(r.status == "caught" for r in rows)
    lines = [
        "# Mutation run (`scripts/mutation.py`)",
        "",
        f"**{caught} of {len(rows)} planted bugs caught** ({total:.0f} s). One bug at a time, in a scratch copy; "
        "the tests listed per mutant in the script run with `-x`.",
        "",
        "| mutant | planted bug | result | first failing test | s |",
        "|---|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.what} | {r.status} | `{r.caught_by}` | {r.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation")
    a = ap.parse_args()
    chosen = [m for m in MUTANTS if not a.only or m.name in a.only.split(",")]
    rows: list[Outcome] = []
    t0 = time.perf_counter()
    for m in chosen:
        r = run_mutant(m, a.timeout)
        rows.append(r)
        print(f"{r.name:28s} {r.status:7s} {r.seconds:6.0f} s  {r.caught_by}", flush=True)
    total = time.perf_counter() - t0
    if not a.only:
        a.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
        a.out.with_suffix(".md").write_text(to_markdown(rows, total))
    sys.exit(0 if all(r.status == "caught" for r in rows) else 1)


if __name__ == "__main__":
    main()
