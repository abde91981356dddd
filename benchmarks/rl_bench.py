"""Benchmark ``rl``: is one dynamics model + a Lipschitz-regularised critic as good as an ensemble (Zheng et al.,
ICLR 2023), and is the CERTIFIED critic constant lower with the regularisers? CPU-sized MBPO runs.

Variants (all MBPO + SAC, same hyper-parameters otherwise): ``ensemble`` (5 Gaussian members, 3 elites, no critic
regulariser), ``single`` (one Gaussian network), ``single+adversarial`` (PGD state-noise penalty on the critics),
``single+spectral`` (certified spectrally normalised critics, Lip_2(s -> Q) <= scale = 100) and
``single+spectral1000`` (the same with scale 1000, to see whether the cap binds). Tasks: Pendulum-v1 and
InvertedPendulum-v5 (MuJoCo), 3 seeds each. Recorded per evaluation point: deterministic-policy return (fixed
evaluation seeds, the same for every variant), the certified local bound max_b sup_{box(s_b)} ||grad_s Q(s, a_b)||_2
over 64 replay (s_b, a_b) (lipbound.local_lipschitz), the certified global bound (lipbound.global_lipschitz,
product of layer norms), the model's one-step MSE on fixed random-policy transitions; per run the wall time spent
learning (evaluation and probes excluded).

Each finished run is appended to ``results/rl_runs.json`` (atomic rewrite) and skipped when the suite is started
again, so an interrupted suite loses at most the run in progress. ``RL_BENCH_WORKERS=2`` runs two at a time;
``RL_BENCH_NO_NEW_RUNS=1`` only rebuilds tables and plots from the runs file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS_FILE = RESULTS / "rl_runs.json"

VARIANTS = {  # name: (dynamics model, critic regulariser, spectral scale = certified Lip_2 cap of the critic)
    "ensemble": ("ensemble", "none", 100.0),
    "single": ("single", "none", 100.0),
    "single+adversarial": ("single", "adversarial", 100.0),
    "single+spectral": ("single", "spectral", 100.0),
    "single+spectral1000": ("single", "spectral", 1000.0),  # a looser cap: does the scale-100 cap bind?
}
TASKS = {
    # steps, eval interval, SAC updates per step, model refit/rollout period
    "Pendulum-v1": {"steps": 3000, "eval_interval": 250, "updates_per_step": 5, "model_train_freq": 250},
    "InvertedPendulum-v5": {"steps": 2000, "eval_interval": 250, "updates_per_step": 5, "model_train_freq": 250},
}
SEEDS = (0, 1, 2)
QUICK = {"steps": 300, "eval_interval": 150, "updates_per_step": 2, "model_train_freq": 100}


def _config(env_id: str, variant: str, seed: int, task: dict):
    from lipbound.rl.agent import MBPOConfig
    from lipbound.rl.sac import SACConfig

    model, reg, scale = VARIANTS[variant]
    sac = SACConfig(hidden=(64, 64), reg=reg, adv_eps=0.05, adv_lambda=1.0, adv_steps=2, spectral_scale=scale)
    cfg = MBPOConfig(env_id=env_id, model=model, seed=seed, sac=sac, n_members=5, n_elites=3)
    return replace(cfg, init_steps=min(250, task["steps"] // 2), **task)


def _one_run(args: tuple[str, str, int, dict]) -> dict:
    import torch

    torch.set_num_threads(1)
    from lipbound.rl.agent import train_mbpo

    env_id, variant, seed, task = args
    res = train_mbpo(_config(env_id, variant, seed, task)).to_dict()
    res.update(env=env_id, variant=variant, seed=seed)
    return res


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_runs(path: Path, quick: bool) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data["runs"] if data.get("quick") == quick else []


def _summary(runs: list[dict]) -> list[dict]:
    rows = []
    for env_id in TASKS:
        for variant in VARIANTS:
            rs = [r for r in runs if r["env"] == env_id and r["variant"] == variant]
            if not rs:
                continue
            final = np.array([r["evaluations"][-1]["return"] for r in rs])
            mean_curve = np.array([np.mean([e["return"] for e in r["evaluations"]]) for r in rs])
            lip = np.array([r["evaluations"][-1]["critic_lipschitz"] for r in rs])
            lip_max = np.array([max(e["critic_lipschitz"] for e in r["evaluations"]) for r in rs])
            glob = np.array([r["evaluations"][-1]["critic_global_upper"] for r in rs])
            lower = np.array([r["evaluations"][-1]["critic_local_lower"] for r in rs])
            rows.append(
                {
                    "env": env_id,
                    "variant": variant,
                    "seeds": len(rs),
                    "steps": rs[0]["config"]["steps"],
                    "final_return_mean": float(final.mean()),
                    "final_return_std": float(final.std()),
                    "mean_return_over_training": float(mean_curve.mean()),
                    "random_return": float(np.mean([r["random_return"] for r in rs])),
                    "learn_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                    "wall_seconds_mean": float(np.mean([r["wall_seconds"] for r in rs])),
                    "critic_lip_local_final": float(lip.mean()),
                    "critic_lip_local_max_over_training": float(lip_max.mean()),
                    "critic_lip_attained_final": float(lower.mean()),
                    "critic_lip_global_final": float(glob.mean()),
                    "model_mse_final": float(np.mean([r["evaluations"][-1]["model_validation_mse"] for r in rs])),
                }
            )
    return rows


def _plot(runs: list[dict], out_dir: Path, suffix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for env_id in TASKS:
        env_runs = [r for r in runs if r["env"] == env_id]
        if not env_runs:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for variant in VARIANTS:
            rs = [r for r in env_runs if r["variant"] == variant]
            if not rs:
                continue
            n = min(len(r["evaluations"]) for r in rs)
            steps = [e["step"] for e in rs[0]["evaluations"][:n]]
            for ax, key in zip(axes, ("return", "critic_lipschitz", "critic_global_upper"), strict=True):
                vals = np.array([[e[key] for e in r["evaluations"][:n]] for r in rs])
                m, s = vals.mean(0), vals.std(0)
                (line,) = ax.plot(steps, m, marker=".", label=f"{variant} (n={len(rs)})")
                ax.fill_between(steps, m - s, m + s, color=line.get_color(), alpha=0.15)
        axes[0].axhline(np.mean([r["random_return"] for r in env_runs]), color="grey", ls="--", label="random")
        axes[0].set(title=f"{env_id}: evaluation return (mean +- std over seeds)", ylabel="return")
        axes[1].set(title="certified local Lip of s -> Q(s,a) (max over replay)", ylabel="upper bound")
        axes[2].set(title="certified global Lip of s -> Q (product)", ylabel="upper bound")
        for ax in axes:
            ax.set_xlabel("environment steps")
        for ax in axes[1:]:
            ax.set_yscale("log")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"rl_{env_id.split('-')[0].lower()}{suffix}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path.name)
    return written


def _unit_costs(repeats: int) -> dict:
    """Milliseconds per SAC update (batch 256, 2x64) for each critic regulariser and per model-fit epoch on 3000
    Pendulum-sized transitions for one model vs the ensemble, measured back to back in one process (the run wall
    times above are inflated unevenly by other jobs on the shared machine)."""
    import torch

    torch.set_num_threads(1)
    from lipbound.rl.buffer import Batch
    from lipbound.rl.dynamics import GaussianDynamics
    from lipbound.rl.sac import SAC, SACConfig

    gen = torch.Generator().manual_seed(0)
    n = 256
    batch = Batch(torch.randn(n, 3), torch.rand(n, 1) * 4 - 2, -torch.rand(n) * 10, torch.randn(n, 3), torch.zeros(n))
    out: dict = {}
    for reg in ("none", "adversarial", "spectral"):
        torch.manual_seed(0)
        agent = SAC(3, 1, torch.tensor([-2.0]), torch.tensor([2.0]), SACConfig(hidden=(64, 64), reg=reg))
        for _ in range(5):
            agent.update(batch, gen)
        t0 = time.perf_counter()
        for _ in range(repeats):
            agent.update(batch, gen)
        out[f"sac_update_ms_{reg}"] = 1000 * (time.perf_counter() - t0) / repeats
    data = Batch(torch.randn(3000, 3), torch.randn(3000, 1), torch.randn(3000), torch.randn(3000, 3), torch.zeros(3000))
    for name, members, elites in (("single", 1, 1), ("ensemble", 5, 3)):
        model = GaussianDynamics(3, 1, members, elites, (200, 200))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        fit = model.fit(data, opt, gen, max_epochs=5, patience=100)
        out[f"model_epoch_ms_{name}"] = 1000 * (time.perf_counter() - t0) / fit.epochs
    return out


def run(quick: bool = False, progress=None) -> dict:
    log = progress or (lambda m: print(m, file=sys.stderr, flush=True))
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs_file = RESULTS / ("rl_runs_quick.json" if quick else "rl_runs.json")
    runs = _load_runs(runs_file, quick)
    done = {(r["env"], r["variant"], r["seed"]) for r in runs}
    seeds = SEEDS[:1] if quick else SEEDS
    jobs = [
        (env_id, variant, seed, QUICK if quick else task)
        for seed in seeds
        for env_id, task in TASKS.items()
        for variant in VARIANTS
        if (env_id, variant, seed) not in done
    ]
    if os.environ.get("RL_BENCH_NO_NEW_RUNS"):  # only summarise the runs already in the runs file
        jobs = []
    t0 = time.perf_counter()
    workers = max(int(os.environ.get("RL_BENCH_WORKERS", "1")), 1)

    def record(res: dict) -> None:
        runs.append(res)
        _write_atomic(runs_file, json.dumps({"quick": quick, "runs": runs}) + "\n")
        last = res["evaluations"][-1]
        log(
            f"rl: {res['env']} {res['variant']} seed {res['seed']}: return {last['return']:.1f}, certified "
            f"Lip(Q) local {last['critic_lipschitz']:.4g} global {last['critic_global_upper']:.4g}, "
            f"learning {res['train_seconds']:.0f} s ({time.perf_counter() - t0:.0f} s elapsed)"
        )

    if workers == 1:
        for job in jobs:
            record(_one_run(job))
    else:
        import importlib

        sys.path.insert(0, str(HERE))
        worker = importlib.import_module("rl_bench")._one_run  # picklable by reference (the driver loads by path)
        with ProcessPoolExecutor(workers) as pool:
            for res in pool.map(worker, jobs):
                record(res)
    plots = _plot(runs, RESULTS, "_quick" if quick else "")
    costs = _unit_costs(20 if quick else 200)
    return {
        "unit_costs_ms": costs,
        "quick": quick,
        "tasks": {k: (QUICK if quick else v) for k, v in TASKS.items()},
        "variants": {k: {"model": m, "reg": g, "spectral_scale": c} for k, (m, g, c) in VARIANTS.items()},
        "settings": {
            "sac_hidden": [64, 64],
            "ensemble": "5 members, 3 elites",
            "adversarial": "l_inf eps 0.05, lambda 1, 2 PGD steps",
            "spectral_scale": "100 (single+spectral), 1000 (single+spectral1000)",
            "probe": "64 replay (s, a), l_inf box half-width 0.05, gradient in l2",
        },
        "summary": _summary(runs),
        "plots": plots,
        "runs_file": runs_file.name,
    }


def _verdict(rows: list[dict]) -> list[str]:
    lines = []
    for env_id in TASKS:
        by = {r["variant"]: r for r in rows if r["env"] == env_id}
        if "ensemble" not in by:
            continue
        ens = by["ensemble"]
        for v in ("single", "single+adversarial", "single+spectral", "single+spectral1000"):
            if v not in by:
                continue
            r = by[v]
            lines.append(
                f"- {env_id}, {v} vs ensemble: final return {r['final_return_mean']:.1f} vs "
                f"{ens['final_return_mean']:.1f}; learning time {r['learn_seconds_mean']:.0f} s vs "
                f"{ens['learn_seconds_mean']:.0f} s; certified local critic constant {r['critic_lip_local_final']:.3g} "
                f"vs {ens['critic_lip_local_final']:.3g}."
            )
    return lines


def to_markdown(result: dict) -> str:
    rows = result["summary"]
    head = "## rl: single dynamics model + Lipschitz-regularised critic vs ensemble (MBPO, CPU scale)\n\n"
    steps = ", ".join(f"{k} {v['steps']} steps" for k, v in result["tasks"].items())
    head += (
        f"Scale: {steps}; seeds per cell in the table; SAC 2x64, {result['settings']['ensemble']}, "
        f"adversarial {result['settings']['adversarial']}, spectral scale {result['settings']['spectral_scale']}. "
        "Returns: deterministic policy on fixed evaluation seeds. Critic constants: certified upper bounds on "
        "Lip_2(s -> Q(s, a)) (local: max over 64 replay boxes; global: product of layer norms), max over the twin "
        "critics, at the last evaluation; 'attained' is a gradient norm found in the boxes (a lower bound). "
        "Learning seconds exclude evaluation and probes.\n\n"
    )
    cols = [
        ("env", "env"),
        ("variant", "variant"),
        ("seeds", "n"),
        ("final_return_mean", "final return"),
        ("final_return_std", "+-"),
        ("mean_return_over_training", "mean return (curve)"),
        ("random_return", "random"),
        ("learn_seconds_mean", "learn s"),
        ("critic_lip_local_final", "Lip local (cert.)"),
        ("critic_lip_attained_final", "Lip attained"),
        ("critic_lip_local_max_over_training", "Lip local max (train)"),
        ("critic_lip_global_final", "Lip global (cert.)"),
        ("model_mse_final", "model MSE"),
    ]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    plots = "\n".join(f"![{p}]({p})" for p in result["plots"])
    c = result.get("unit_costs_ms", {})
    if c:
        plots = (
            f"Unit costs (ms, one process, back to back): SAC update none {c['sac_update_ms_none']:.2f}, adversarial "
            f"{c['sac_update_ms_adversarial']:.2f}, spectral {c['sac_update_ms_spectral']:.2f}; dynamics-model epoch "
            f"(3000 transitions) single {c['model_epoch_ms_single']:.0f}, ensemble of 5 "
            f"{c['model_epoch_ms_ensemble']:.0f}.\n\n" + plots
        )
    return head + "\n".join(lines) + "\n\n" + "\n".join(_verdict(rows)) + "\n\n" + plots + "\n"
