"""``lipbound smooth certify|predict``: randomized-smoothing certificates from the command line.

``lipbound smooth certify MODEL --data digits --sigma 0.25 --n0 100 --n 100000 --alpha 0.001 [--method cohen|lvm]
[--select n0|bonferroni|global] [--lipschitz certified|FLOAT] [--json F|-] [--plot F]`` certifies every input
(class and l2 radius in input units, or abstain) and prints a table and a summary (certified accuracy at
r in {0, 0.25, 0.5, 0.75, 1}, average certified radius). Bad input: one red line, exit code 2.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import Tensor

from lipbound.cli.common import BUNDLED_PREFIX, fail, load_cli_model, parse_shape, write_json_atomic
from lipbound.errors import InvalidInputError, LipboundError, ShapeMismatchError

app = typer.Typer(
    name="smooth",
    help="Randomized smoothing: Cohen PREDICT/CERTIFY and the sound LVM-RS certificate (l2 radii, input units).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
MODEL_HELP = (
    "Model: 'bundled:<name>' or a bundled name (digits-rs-cnn-0.12|0.25|0.50, digits-rs-lip-0.25, ...), a .onnx or "
    "TorchScript .pt file, or 'package.module:factory' with --weights. It must return logits (B, num_classes)."
)
DATA_HELP = (
    "'digits' (the shipped 450-image test split of scikit-learn's digits, pixels in [0,1]) or a .npz file with "
    "'x' (N, ...) and optionally 'y' (N,) labels."
)


def _load_model(spec: str, weights: Path | None, input_shape: tuple[int, ...] | None) -> tuple[Any, Any, float | None]:
    import lipbound.smoothing  # noqa: F401  (registers the bundled smoothing models)
    from lipbound.models import bundled_names
    from lipbound.smoothing.models import bundled_sigma

    if not spec.startswith(BUNDLED_PREFIX) and spec in bundled_names():
        spec = BUNDLED_PREFIX + spec
    if not spec.startswith(BUNDLED_PREFIX) and ":" not in spec and not Path(spec).exists():
        raise InvalidInputError(f"model {spec!r} is neither a file nor a bundled model ({', '.join(bundled_names())})")
    model, shape = load_cli_model(spec, weights, input_shape)
    name = spec[len(BUNDLED_PREFIX) :] if spec.startswith(BUNDLED_PREFIX) else None
    return model, input_shape or shape, bundled_sigma(name) if name else None


def _load_data(data: str, split: str = "test") -> tuple[Tensor, Tensor | None]:
    from lipbound.smoothing.models import load_digits_split

    if data == "digits":
        return load_digits_split(split)
    path = Path(data)
    if path.suffix != ".npz":
        raise InvalidInputError(f"--data must be 'digits' or a .npz file with 'x' (and 'y'), got {data!r}")
    if not path.exists():
        raise InvalidInputError(f"--data file {data!r} does not exist")
    with np.load(path) as f:
        if "x" not in f:
            raise InvalidInputError(f"{data!r} has no array 'x' (found: {', '.join(f.files) or 'nothing'})")
        x = torch.as_tensor(np.asarray(f["x"], dtype=np.float32))
        y = torch.as_tensor(np.asarray(f["y"])).long().reshape(-1) if "y" in f else None
    if y is not None and y.shape[0] != x.shape[0]:
        raise ShapeMismatchError(f"{data!r}: 'y' has {y.shape[0]} labels for {x.shape[0]} inputs")
    return x, y


def _shape(x: Tensor, shape: tuple[int, ...] | None) -> Tensor:
    if shape is None or tuple(x.shape[1:]) == tuple(shape):
        return x
    if math.prod(x.shape[1:]) != math.prod(shape):
        raise ShapeMismatchError(f"inputs of shape {tuple(x.shape[1:])} do not fit the model's input shape {shape}")
    return x.reshape(x.shape[0], *shape)


def _setup(
    model: str, data: str, sigma: float | None, weights: Path | None, input_shape: str | None, limit: int | None
):
    from lipbound.smoothing import Smooth

    net, shape, default_sigma = _load_model(model, weights, parse_shape(input_shape))
    if sigma is None:
        if default_sigma is None:
            raise InvalidInputError("--sigma is required (noise std in the model's input units)")
        sigma = default_sigma
    x, y = _load_data(data)
    if limit is not None:
        if limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {limit}")
        x, y = x[:limit], None if y is None else y[:limit]
    x = _shape(x, shape)
    with torch.no_grad():
        p = next(net.parameters(), None) if hasattr(net, "parameters") else None
        out = net(x[:1].to(p.dtype if p is not None else torch.float32))
    if out.ndim != 2:
        raise ShapeMismatchError(f"the model returned shape {tuple(out.shape)}; expected logits (B, num_classes)")
    shape = tuple(x.shape[1:])
    return Smooth(net, int(out.shape[1]), sigma, input_shape=shape), x, y, sigma


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _per_input_seconds(marks: list[tuple[int, float]], b: int, t0: float) -> list[float]:
    out = [0.0] * b
    prev_i, prev_t = 0, t0
    for i, t in marks:
        for j in range(prev_i, i):
            out[j] = (t - prev_t) / max(i - prev_i, 1)
        prev_i, prev_t = i, t
    return out


def _summary(res: Any, y: Tensor | None) -> dict[str, Any]:
    from lipbound.smoothing import average_certified_radius, certified_accuracy, correct_predictions

    out: dict[str, Any] = {
        "inputs": len(res),
        "abstention_rate": float(res.abstained.float().mean()),
        "seconds": res.seconds,
        "seconds_per_input": res.seconds / len(res),
        "samples_per_second": res.samples_per_second,
    }
    if y is not None:
        ok = correct_predictions(res, y)
        out["certified_accuracy"] = {
            str(r): float(a) for r, a in zip(RADII, certified_accuracy(res.radius, ok, RADII), strict=True)
        }
        out["average_certified_radius"] = average_certified_radius(res.radius, ok)
    return out


def _emit(console: Console, to_stdout: bool, json_out: Path | None, payload: dict) -> None:

    payload = json.loads(json.dumps(payload, default=str))
    if to_stdout:
        typer.echo(json.dumps(payload, indent=2))
    elif json_out is not None:
        write_json_atomic(json_out, payload)
        console.print(f"wrote {json_out}")


def _table(title: str, res: Any, y: Tensor | None, seconds: list[float], rows: int, lvm: bool) -> Table:
    table = Table(title=title, show_edge=False, pad_edge=False)
    with_radius = res.method != "predict"
    for col in ("#", "label", "class", "radius", "correct", "seconds"):
        if col != "radius" or with_radius:
            table.add_column(col, justify="right")
    if lvm:
        table.add_column("map")
        table.add_column("radius from")
    for i in range(min(len(res), rows)):
        pred = int(res.prediction[i])
        label = "-" if y is None else str(int(y[i]))
        correct = "-" if y is None else ("[green]yes[/]" if pred == int(y[i]) else "[red]no[/]")
        cells = [str(i), label, "abstain" if pred == -1 else str(pred)]
        cells += [f"{float(res.radius[i]):.4f}"] if with_radius else []
        cells += [correct, f"{seconds[i]:.3f}"]
        if lvm:
            cells += [res.candidate[i], res.radius_source[i]]
        table.add_row(*cells)
    return table


def _print_summary(console: Console, s: dict[str, Any], guarantee: str) -> None:
    if "certified_accuracy" in s:
        ca = "  ".join(f"r={r}: {a:.3f}" for r, a in s["certified_accuracy"].items())
        console.print(f"certified accuracy  {ca}")
        console.print(f"average certified radius {s['average_certified_radius']:.4f}")
    console.print(
        f"abstained {s['abstention_rate']:.1%} of {s['inputs']} inputs; {s['seconds']:.2f} s "
        f"({s['seconds_per_input']:.3f} s/input, {s['samples_per_second']:.3g} samples/s)"
    )
    console.print(guarantee, highlight=False)


def _guarantee(res: Any) -> str:
    if res.method == "predict":
        return f"guarantee: each returned class equals the smoothed classifier's, with probability >= {1 - res.alpha:g}"
    what = (
        "the same smoothed classifier for every input"
        if res.classifier == "fixed"
        else "the smoothed classifier chosen for that input (map and temperature vary with the input)"
    )
    return (
        f"guarantee: per input, with probability >= {1 - res.alpha:g}, the returned class is constant on the l2 ball "
        f"of the given radius for {what}; {res.bounds_per_input} one-sided bound(s) at {res.alpha_per_bound:.3g} each"
    )


def _run_guarded(fn):

    try:
        return fn()
    except (LipboundError, ValueError) as e:
        raise fail(" ".join(str(e).split()) or type(e).__name__) from None


@app.command("certify")
def certify_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str = typer.Option("digits", "--data", help=DATA_HELP),
    sigma: float | None = typer.Option(
        None, "--sigma", help="Noise std in the model's input units (default for bundled models: their training sigma)."
    ),
    n0: int = typer.Option(100, "--n0", help="Selection samples (class, and for lvm the map/temperature)."),
    n: int = typer.Option(100_000, "--n", help="Estimation samples per input (fresh, never the n0 ones)."),
    alpha: float = typer.Option(0.001, "--alpha", help="Failure probability per input (confidence 1 - alpha)."),
    method: str = typer.Option("cohen", "--method", help="cohen (hard votes, Clopper-Pearson) | lvm (LVM-RS)."),
    select: str | None = typer.Option(
        None,
        "--select",
        help="lvm only: n0 (choose map/t on the n0 samples; default) | bonferroni (alpha / #candidates) | global "
        "(one map/t for all inputs, tuned on a validation split: the shipped digits one, or --val FILE.npz).",
    ),
    lipschitz: str | None = typer.Option(
        None,
        "--lipschitz",
        help="lvm only: 'certified' (compute the l2 constant of the logits with lipbound.global_lipschitz) or a "
        "number you vouch for; adds the finite-L radius.",
    ),
    lipschitz_method: str = typer.Option("auto", "--lipschitz-method", help="global_lipschitz method for 'certified'."),
    val: str | None = typer.Option(None, "--val", help="Validation .npz (x, y) for --select global."),
    n_val: int = typer.Option(100, "--n-val", help="Validation inputs used by --select global."),
    limit: int | None = typer.Option(None, "--limit", help="Certify only the first N inputs."),
    batch_size: int = typer.Option(1000, "--batch-size", help="Noisy rows per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise generator."),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON to this file ('-' = stdout)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the certified-accuracy curve (PNG) to this file."),
    rows: int = typer.Option(25, "--rows", help="Rows of the per-input table to print."),
    input_shape: str | None = typer.Option(None, "--input-shape", help="Per-sample input shape, e.g. 1,8,8."),
    weights: Path | None = typer.Option(None, "--weights", help="A state dict (.pt) for a 'module:factory' model."),
) -> None:
    """Certify each input: class and certified l2 radius of the smoothed classifier, or abstain.

    cohen: with probability >= 1 - alpha per input, the smoothed hard classifier is constant on the ball.
    lvm: the same for the smoothed soft classifier of the selected map and temperature, radius max(R_Phi, R_L).
    """
    to_stdout = json_out is not None and str(json_out) == "-"
    console = Console(stderr=to_stdout)

    def run() -> None:
        if method not in ("cohen", "lvm"):
            raise InvalidInputError(f"--method must be cohen or lvm, got {method!r}")
        if method == "cohen" and (select is not None or lipschitz is not None):
            raise InvalidInputError("--select and --lipschitz apply to --method lvm only")
        if select is not None and select not in ("n0", "bonferroni", "global"):
            raise InvalidInputError(f"--select must be n0, bonferroni or global, got {select!r}")
        lip: float | str | None = lipschitz
        if lipschitz is not None and lipschitz != "certified":
            try:
                lip = float(lipschitz)
            except ValueError:
                raise InvalidInputError(f"--lipschitz must be 'certified' or a number, got {lipschitz!r}") from None
        smooth, x, y, sig = _setup(model, data, sigma, weights, input_shape, limit)
        smooth.lipschitz_method = lipschitz_method
        if lip == "certified" and method == "lvm":
            with console.status(f"certified l2 Lipschitz constant of the logits ({lipschitz_method}) ..."):
                t_lip = time.perf_counter()
                value = smooth.lipschitz_constant(lip)  # cached for tune and certify
            console.print(f"certified L_f = {value:.6g} ({lipschitz_method}, {time.perf_counter() - t_lip:.1f} s)")
        extra: dict[str, Any] = {}
        if method == "lvm" and select == "global":
            from lipbound.smoothing import tune

            if val is None and data != "digits":
                raise InvalidInputError("--select global needs a validation split: --val FILE.npz (x, y)")
            xv, yv = _load_data(val or "digits", "val")
            if yv is None:
                raise InvalidInputError("the validation file needs labels 'y'")
            xv, yv = _shape(xv[:n_val], smooth.input_shape), yv[:n_val]
            with _progress(console) as progress:
                task = progress.add_task("tune map/temperature (validation)", total=xv.shape[0])
                tuned = tune(
                    smooth,
                    xv,
                    yv,
                    n0=n0,
                    n=n,
                    alpha=alpha,
                    lipschitz=lip,
                    batch_size=batch_size,
                    generator=seed,
                    progress=lambda done, total: progress.update(task, completed=done),
                )
            extra = {"candidate": tuned}
            console.print(
                f"global candidate: {tuned.candidate.label()} (validation ACR {max(tuned.scores.values()):.4f})"
            )
        marks: list[tuple[int, float]] = []
        with _progress(console) as progress:
            task = progress.add_task(f"certify ({method})", total=x.shape[0])

            def tick(done: int, total: int) -> None:
                marks.append((done, time.perf_counter()))
                progress.update(task, completed=done)

            t0 = time.perf_counter()
            res = smooth.certify(
                x,
                n0=n0,
                n=n,
                alpha=alpha,
                batch_size=batch_size,
                method=method,
                select=select,
                lipschitz=lip,
                generator=seed + 1,
                progress=tick,
                **extra,
            )
        per = _per_input_seconds(marks, len(res), t0)
        summary = _summary(res, y)
        title = f"{method}{'' if method == 'cohen' else ' / ' + str(res.select)} certificates, sigma={sig:g}, {model}"
        console.print(_table(title, res, y, per, rows, method == "lvm"))
        if len(res) > rows:
            console.print(f"... {len(res) - rows} more rows (--rows, or --json for all)")
        _print_summary(console, summary, _guarantee(res))
        if plot is not None:
            if y is None:
                raise InvalidInputError("--plot needs labels ('y' in the data file)")
            from lipbound.smoothing import correct_predictions, plot_certified_accuracy

            plot_certified_accuracy(
                {f"{method} ({res.select})": (res.radius, correct_predictions(res, y))},
                plot,
                title=f"{model}, sigma={sig:g}",
            )
            console.print(f"wrote {plot}")
        payload = {
            "command": "certify",
            "model": model,
            "data": data,
            "summary": summary,
            "labels": None if y is None else y.tolist(),
            "seconds_per_input": per,
            "result": res.to_dict(),
        }
        if extra:
            payload["tuned"] = extra["candidate"].to_dict()
        _emit(console, to_stdout, json_out, payload)

    _run_guarded(run)


@app.command("predict")
def predict_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str = typer.Option("digits", "--data", help=DATA_HELP),
    sigma: float | None = typer.Option(None, "--sigma", help="Noise std in the model's input units."),
    n: int = typer.Option(1000, "--n", help="Samples per input."),
    alpha: float = typer.Option(0.001, "--alpha", help="Probability of returning a wrong (non-abstain) class."),
    limit: int | None = typer.Option(None, "--limit", help="Predict only the first N inputs."),
    batch_size: int = typer.Option(1000, "--batch-size", help="Noisy rows per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise generator."),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON to this file ('-' = stdout)."),
    rows: int = typer.Option(25, "--rows", help="Rows of the per-input table to print."),
    input_shape: str | None = typer.Option(None, "--input-shape", help="Per-sample input shape, e.g. 1,8,8."),
    weights: Path | None = typer.Option(None, "--weights", help="A state dict (.pt) for a 'module:factory' model."),
) -> None:
    """Cohen PREDICT: the smoothed classifier's class, or abstain (two-sided binomial test of the top two counts)."""
    to_stdout = json_out is not None and str(json_out) == "-"
    console = Console(stderr=to_stdout)

    def run() -> None:
        smooth, x, y, sig = _setup(model, data, sigma, weights, input_shape, limit)
        marks: list[tuple[int, float]] = []
        with _progress(console) as progress:
            task = progress.add_task("predict", total=x.shape[0])

            def tick(done: int, total: int) -> None:
                marks.append((done, time.perf_counter()))
                progress.update(task, completed=done)

            t0 = time.perf_counter()
            res = smooth.predict(x, n=n, alpha=alpha, batch_size=batch_size, generator=seed, progress=tick)
        per = _per_input_seconds(marks, len(res), t0)
        summary = _summary(res, y)
        summary.pop("certified_accuracy", None)
        summary.pop("average_certified_radius", None)
        if y is not None:
            from lipbound.smoothing import correct_predictions

            summary["accuracy"] = float(correct_predictions(res, y).float().mean())
        console.print(_table(f"predict, sigma={sig:g}, {model}", res, y, per, rows, False))
        if len(res) > rows:
            console.print(f"... {len(res) - rows} more rows (--rows, or --json for all)")
        if "accuracy" in summary:
            console.print(f"accuracy (abstentions count as wrong) {summary['accuracy']:.3f}")
        _print_summary(console, summary, _guarantee(res))
        payload = {
            "command": "predict",
            "model": model,
            "data": data,
            "summary": summary,
            "labels": None if y is None else y.tolist(),
            "result": res.to_dict(),
        }
        _emit(console, to_stdout, json_out, payload)

    _run_guarded(run)
