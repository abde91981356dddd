"""``lipbound rl train``: MBPO with one dynamics model or an ensemble and a Lipschitz-regularised critic, logging
returns next to the CERTIFIED Lipschitz constant of the critic in the state.

At every evaluation point the JSON (rewritten atomically) gains a row: ``step``, ``return`` (mean over fixed-seed
deterministic evaluation episodes), ``critic_lipschitz`` = max over replay (s_b, a_b) of a certified upper bound of
sup_{||s - s_b||_inf <= eps} ||grad_s Q_j(s, a_b)||_2 (lipbound.local_lipschitz; max over the twin critics), the
attained lower bound, and ``critic_global_upper`` (lipbound.global_lipschitz: valid for every state and action).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lipbound.errors import InvalidInputError, LipboundError

app = typer.Typer(
    name="rl",
    help="Model-based RL (MBPO + SAC) with Lipschitz-regularised critics and certified critic constants.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2


class ModelKind(StrEnum):
    single = "single"
    ensemble = "ensemble"


class Reg(StrEnum):
    none = "none"
    adversarial = "adversarial"
    spectral = "spectral"


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] [red]{escape(message)}[/]", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` through a temp file in the same directory and a rename (never half-written)."""
    text = json.dumps(payload, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_training(payload: dict, path: Path) -> None:
    """Two panels: evaluation return vs step (random-policy line) and certified critic constants vs step (log y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["evaluations"]
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(steps, [r["return"] for r in rows], marker="o", label="policy (deterministic)")
    ax1.axhline(payload["random_return"], color="grey", ls="--", label="random actions")
    ax1.set(xlabel="environment steps", ylabel="evaluation return", title=payload["config"]["env_id"])
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r["critic_lipschitz"] for r in rows], marker="o", label="local upper (certified, max)")
    ax2.plot(steps, [r["critic_local_lower"] for r in rows], marker="x", ls=":", label="local lower (attained)")
    ax2.plot(steps, [r["critic_global_upper"] for r in rows], marker="s", ls="--", label="global upper (certified)")
    ax2.set_yscale("log")
    ax2.set(xlabel="environment steps", ylabel="Lip of s -> Q(s, a)", title="critic Lipschitz constant")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _eval_table(payload: dict) -> Table:
    cfg = payload["config"]
    title = (
        f"{cfg['env_id']}, model={cfg['model']}, reg={cfg['sac']['reg']}, seed={cfg['seed']} "
        f"(random actions: {payload['random_return']:.1f})"
    )
    table = Table(title=title)
    for col in ("step", "return", "Lip local upper", "Lip local lower", "Lip global upper", "model MSE", "wall s"):
        table.add_column(col, justify="right")
    for r in payload["evaluations"]:
        table.add_row(
            str(r["step"]),
            f"{r['return']:.1f}",
            f"{r['critic_lipschitz']:.4g}",
            f"{r['critic_local_lower']:.4g}",
            f"{r['critic_global_upper']:.4g}",
            f"{r['model_validation_mse']:.3g}",
            f"{r['wall_seconds']:.0f}",
        )
    return table


@app.command("train")
def train_command(
    env: Annotated[str, typer.Option("--env", help="gymnasium id with a continuous (Box) action space.")] = (
        "Pendulum-v1"
    ),
    model: Annotated[
        ModelKind, typer.Option("--model", help="single: one Gaussian dynamics network; ensemble: N with elites.")
    ] = ModelKind.single,
    reg: Annotated[
        Reg,
        typer.Option(
            "--reg",
            help="Critic regulariser: none, adversarial (PGD state noise penalty), spectral (certified "
            "spectrally normalised critic).",
        ),
    ] = Reg.none,
    steps: Annotated[int, typer.Option("--steps", help="Real environment steps.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of everything (same seed, same run).")] = 0,
    eval_interval: Annotated[int, typer.Option("--eval-interval", help="Evaluate and probe every N steps.")] = 250,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", help="Fixed-seed evaluation episodes.")] = 3,
    updates_per_step: Annotated[int, typer.Option("--updates-per-step", help="SAC updates per real step.")] = 5,
    init_steps: Annotated[int, typer.Option("--init-steps", help="Random-action steps before learning.")] = 250,
    model_train_freq: Annotated[
        int, typer.Option("--model-train-freq", help="Refit the model and roll out every N steps.")
    ] = 250,
    rollout_length: Annotated[int, typer.Option("--rollout-length", help="Model steps per branched rollout.")] = 1,
    hidden: Annotated[int, typer.Option("--hidden", help="Width of the two hidden layers of actor and critics.")] = 64,
    members: Annotated[int, typer.Option("--members", help="Ensemble size (with --model ensemble).")] = 5,
    elites: Annotated[int, typer.Option("--elites", help="Elite members used for rollouts.")] = 3,
    adv_eps: Annotated[float, typer.Option("--adv-eps", help="Adversarial radius (l_inf, raw state units).")] = 0.05,
    adv_lambda: Annotated[float, typer.Option("--adv-lambda", help="Weight of the adversarial penalty.")] = 1.0,
    spectral_scale: Annotated[
        float, typer.Option("--spectral-scale", help="Spectral critic: Q = scale * f, f 1-Lipschitz (certified).")
    ] = 100.0,
    probe_eps: Annotated[
        float, typer.Option("--probe-eps", help="Half-width of the state box of the certified local probe.")
    ] = 0.05,
    probe_states: Annotated[int, typer.Option("--probe-states", help="Replay states probed per evaluation.")] = 64,
    json_out: Annotated[
        str | None, typer.Option("--json", help="JSON file, rewritten atomically at each evaluation ('-': stdout).")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of returns and certified constants.")] = None,
) -> None:
    """Train MBPO (SAC on model rollouts) and log the certified critic Lipschitz constant next to the returns."""
    import torch

    from lipbound.rl.agent import MBPOConfig, train_mbpo
    from lipbound.rl.env import make_continuous_env
    from lipbound.rl.sac import SACConfig

    torch.set_num_threads(1)
    err = Console(stderr=True)
    json_path = None if json_out in (None, "-") else Path(json_out)
    try:
        if json_path is not None and not json_path.parent.is_dir():
            raise InvalidInputError(f"--json directory {str(json_path.parent)!r} does not exist")
        if plot is not None and not plot.parent.is_dir():
            raise InvalidInputError(f"--plot directory {str(plot.parent)!r} does not exist")
        if hidden < 1:
            raise InvalidInputError(f"--hidden must be >= 1, got {hidden}")
        sac = SACConfig(
            hidden=(hidden, hidden),
            reg=reg.value,
            adv_eps=adv_eps,
            adv_lambda=adv_lambda,
            spectral_scale=spectral_scale,
        )
        cfg = MBPOConfig(
            env_id=env,
            model=model.value,
            steps=steps,
            seed=seed,
            sac=sac,
            n_members=members,
            n_elites=elites,
            init_steps=min(init_steps, steps),
            model_train_freq=model_train_freq,
            rollout_length=rollout_length,
            updates_per_step=updates_per_step,
            eval_interval=eval_interval,
            eval_episodes=eval_episodes,
            probe_states=probe_states,
            probe_eps=probe_eps,
        )
        cfg.validate()
        make_continuous_env(env, seed).close()  # a bad --env fails here, before the progress bar starts
        payload: dict = {"config": None, "random_return": None, "evaluations": []}
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task(f"{env} {model.value}/{reg.value}", total=steps, info="")
            state = {"episode": float("nan"), "eval": float("nan"), "lip": float("nan")}

            def on_event(event: dict) -> None:
                kind = event["type"]
                if kind == "step":
                    progress.update(task, completed=event["step"])
                    return
                if kind == "episode":
                    state["episode"] = event["return"]
                elif kind == "eval":
                    state["eval"], state["lip"] = event["return"], event["critic_lipschitz"]
                    row = {k: v for k, v in event.items() if k != "type"}
                    payload["evaluations"].append(row)
                    progress.console.print(
                        f"step {row['step']:>7}: return {row['return']:9.1f}   certified Lip(Q) local <= "
                        f"{row['critic_lipschitz']:.4g} (attained {row['critic_local_lower']:.4g}), "
                        f"global <= {row['critic_global_upper']:.4g}",
                        highlight=False,
                    )
                    if json_path is not None:
                        write_json_atomic(json_path, payload)
                else:
                    return
                progress.update(
                    task,
                    info=f"episode {state['episode']:.1f} | eval {state['eval']:.1f} | Lip(Q) <= {state['lip']:.3g}",
                )

            result = train_mbpo(cfg, on_event)
    except LipboundError as e:
        raise _fail(" ".join(str(e).split()) or type(e).__name__) from None
    payload = result.to_dict()
    if json_out != "-":
        Console().print(_eval_table(payload))
    Console(stderr=True).print(
        f"wall {result.wall_seconds:.1f} s (learning {result.train_seconds:.1f} s, the rest evaluation and probes)",
        highlight=False,
    )
    if json_out == "-":
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    elif json_path is not None:
        write_json_atomic(json_path, payload)
        err.print(f"wrote {json_path}", highlight=False)
    if plot is not None:
        plot_training(payload, plot)
        err.print(f"wrote {plot}", highlight=False)
