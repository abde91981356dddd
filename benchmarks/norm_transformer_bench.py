"""A tiny post-norm transformer encoder with LayerNorm, BatchNorm or PowerNorm on a padded reversal task.

Task: sequences of tokens 1..10 with lengths uniform in 3..12, padded with 0 to 12; target at position i < n is the
input token at n - 1 - i (reversal of the valid part); padded positions are masked out of the attention, the loss
and every normalization statistic. Model: token + learned position embeddings (d = 32), 2 post-norm encoder layers
(4 heads, FFN 64, ``h = norm(h + attn(h))``, ``h = norm(h + ffn(h))``), a linear read-out; layout (T, B, C).

Norms: LN = ``nn.LayerNorm``; BN = ``nn.BatchNorm1d`` over the non-padded tokens of the batch; PN =
``lipbound.nn.PowerNorm(scaling_groups=4, warmup_iters=100)`` (GroupScaling with one group per head, as in the
paper); PN-noGS = PowerNorm without GroupScaling.
Adam (lr 1e-3), batch 32, ``STEPS`` steps, seed 0 (one seed: the shared CPU budget).

Measured: the training loss every 25 steps, NaN/inf failures, token and whole-sequence accuracy on 1000 held-out
sequences (eval mode), and the gradient-norm probe: on a fixed batch of 64 held-out sequences, in eval mode, the
mean over non-padded tokens of ``||dL/de_t||_2`` with ``L`` the summed token cross-entropy and ``e_t`` the input
embedding (token + position) of token ``t``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipbound.nn import PowerNorm

VOCAB, T_MAX, L_MIN, D_MODEL, HEADS, FFN = 10, 12, 3, 32, 4, 64
STEPS, BATCH, LOG_EVERY = 1500, 32, 25
NORMS = ("LN", "BN", "PN", "PN-noGS")
RESULTS = Path(__file__).resolve().parent / "results"


def make_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens (T, n), targets (T, n), pad (T, n) bool)``; targets of padded positions are -100."""
    lengths = torch.randint(L_MIN, T_MAX + 1, (n,), generator=gen)
    tok = torch.randint(1, VOCAB + 1, (T_MAX, n), generator=gen)
    pos = torch.arange(T_MAX).unsqueeze(1)
    pad = pos >= lengths.unsqueeze(0)
    tok = tok.masked_fill(pad, 0)
    src = (lengths.unsqueeze(0) - 1 - pos).clamp(min=0)
    tgt = torch.gather(tok, 0, src).masked_fill(pad, -100)
    return tok, tgt, pad


class MaskedBatchNorm(nn.Module):
    """``nn.BatchNorm1d`` over the non-padded tokens of a (T, B, C) batch (padded outputs are zero)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = ~mask
        out = torch.zeros_like(x)
        out[keep] = self.bn(x[keep])
        return out


class LayerNormMasked(nn.LayerNorm):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


def make_norm(kind: str) -> nn.Module:
    if kind == "LN":
        return LayerNormMasked(D_MODEL)
    if kind == "BN":
        return MaskedBatchNorm(D_MODEL)
    return PowerNorm(D_MODEL, warmup_iters=100, scaling_groups=HEADS if kind == "PN" else None)


class EncoderLayer(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D_MODEL, HEADS)
        self.ffn = nn.Sequential(nn.Linear(D_MODEL, FFN), nn.ReLU(), nn.Linear(FFN, D_MODEL))
        self.norm1, self.norm2 = make_norm(kind), make_norm(kind)

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(h, h, h, key_padding_mask=pad.T, need_weights=False)
        h = self.norm1(h + a, pad)
        return self.norm2(h + self.ffn(h), pad)


class Encoder(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB + 1, D_MODEL)
        self.pos = nn.Parameter(0.1 * torch.randn(T_MAX, 1, D_MODEL))
        self.layers = nn.ModuleList([EncoderLayer(kind), EncoderLayer(kind)])
        self.out = nn.Linear(D_MODEL, VOCAB + 1)

    def embed(self, tok: torch.Tensor) -> torch.Tensor:
        return self.tok(tok) + self.pos[: tok.shape[0]]

    def from_embedding(self, e: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = e
        for layer in self.layers:
            h = layer(h, pad)
        return self.out(h)

    def forward(self, tok: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.from_embedding(self.embed(tok), pad)


def _loss(logits: torch.Tensor, tgt: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB + 1), tgt.reshape(-1), reduction=reduction)


def evaluate(model: Encoder, data) -> dict:
    tok, tgt, pad = data
    model.eval()
    with torch.no_grad():
        pred = model(tok, pad).argmax(-1)
    ok = (pred == tgt) | pad
    return {"token_acc": float(((pred == tgt) & ~pad).sum() / (~pad).sum()), "seq_acc": float(ok.all(0).float().mean())}


def grad_probe(model: Encoder, data) -> float:
    tok, tgt, pad = data
    m = copy.deepcopy(model).eval()
    e = m.embed(tok).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_loss(m.from_embedding(e, pad), tgt, "sum"), e)
    return float(g.norm(dim=-1)[~pad].mean())


def train_one(kind: str, seed: int, steps: int, test, probe) -> dict:
    torch.manual_seed(seed)
    model = Encoder(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(100 + seed)
    curve, probes, failed_at = [], [], None
    t0 = time.perf_counter()
    running = 0.0
    for step in range(1, steps + 1):
        model.train()
        tok, tgt, pad = make_batch(BATCH, gen)
        loss = _loss(model(tok, pad), tgt)
        if not torch.isfinite(loss):
            failed_at = step
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
        if step % LOG_EVERY == 0:
            curve.append(running / LOG_EVERY)
            running = 0.0
            if step % (LOG_EVERY * 10) == 0:
                probes.append(grad_probe(model, probe))
    res = {"norm": kind, "seed": seed, "curve": curve, "probe_curve": probes, "nan_step": failed_at}
    res.update(evaluate(model, test) if failed_at is None else {"token_acc": None, "seq_acc": None})
    res["final_probe"] = grad_probe(model, probe) if failed_at is None else None
    res["train_s"] = time.perf_counter() - t0
    return res


def _plot(result: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = dict(zip(NORMS, ("C0", "C1", "C2", "C3"), strict=True))
    for r in result["runs"]:
        x = np.arange(1, len(r["curve"]) + 1) * LOG_EVERY
        lab = r["norm"] if r["seed"] == 0 else None
        axes[0].plot(x, r["curve"], color=colors[r["norm"]], alpha=0.8, lw=1, label=lab)
        xp = np.arange(1, len(r["probe_curve"]) + 1) * LOG_EVERY * 10
        axes[1].plot(xp, r["probe_curve"], color=colors[r["norm"]], alpha=0.8, lw=1, marker=".", label=lab)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="reversal task: training loss")
    axes[1].set(xlabel="step", ylabel="mean ||dL/de_t||_2", yscale="log", title="input-gradient probe (eval)")
    for a in axes:
        a.legend()
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "norm_transformer.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    steps = 100 if quick else STEPS
    seeds = (0,)
    test = make_batch(1000, torch.Generator().manual_seed(1))
    probe = make_batch(64, torch.Generator().manual_seed(2))
    runs = [train_one(kind, s, steps, test, probe) for kind in NORMS for s in seeds]
    summary = []
    for kind in NORMS:
        rs = [r for r in runs if r["norm"] == kind]
        ok = [r for r in rs if r["nan_step"] is None]
        summary.append(
            {
                "norm": kind,
                "runs": len(rs),
                "nan_runs": len(rs) - len(ok),
                "token_acc": float(np.mean([r["token_acc"] for r in ok])) if ok else None,
                "seq_acc": float(np.mean([r["seq_acc"] for r in ok])) if ok else None,
                "final_loss": float(np.mean([r["curve"][-1] for r in ok])) if ok else None,
                "final_probe": float(np.mean([r["final_probe"] for r in ok])) if ok else None,
                "train_s": float(np.mean([r["train_s"] for r in rs])),
            }
        )
    result = {"steps": steps, "seeds": list(seeds), "batch": BATCH, "runs": runs, "summary": summary}
    result["plot"] = _plot(result)
    return result


def to_markdown(result: dict) -> str:
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = [
        "## Tiny transformer encoder: LayerNorm vs BatchNorm vs PowerNorm (padded reversal)",
        "",
        f"{result['steps']} Adam steps of batch {result['batch']}, seeds {result['seeds']}; accuracy on 1000 held-out "
        "sequences (eval mode, mean over runs without NaN); input-gradient probe = mean over tokens of "
        "||dL/de_t||_2 (summed token loss, eval mode, 64 held-out sequences). "
        f"Curves: `{result['plot']}`.",
        "",
        "| norm | runs | NaN runs | token acc | sequence acc | final train loss | grad probe | train s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        lines.append(
            f"| {s['norm']} | {s['runs']} | {s['nan_runs']} | {f(s['token_acc'])} | {f(s['seq_acc'])} | "
            f"{f(s['final_loss'], 4)} | {f(s['final_probe'], 4)} | {s['train_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"
