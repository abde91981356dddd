"""Seeded builders and hypothesis strategies for random test architectures (float64, eval mode).

Builders: :func:`mlp` (depth 1-4, width 1-32), :func:`cnn` (Conv2d with stride/padding, optional BatchNorm2d in
eval mode and AvgPool2d, Flatten, Linear), :func:`residual_mlp` and :func:`residual_cnn` (blocks
``y = x + body(x)``). Activations: ReLU, LeakyReLU, Tanh, Sigmoid and ``lipbound.nn.MaxMin`` (widths/channels are
made even for MaxMin). Weights are ``N(0, gain^2 / fan_in)``, biases ``N(0, 0.5^2)`` so that boxes of radius
``1e-3 .. 1`` around ``N(0, 1)`` centres have a mix of stable and unstable neurons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from lipbound.nn import MaxMin

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "maxmin")
KINDS = ("mlp", "cnn", "resmlp", "rescnn")
DTYPE = torch.float64


class Residual(nn.Module):
    """``y = shortcut(x) + body(x)`` (``shortcut=None`` is the identity)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.body(x)


def activation(name: str, slope: float = 0.1) -> nn.Module:
    """Activation module by name (``slope``: LeakyReLU negative slope)."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "maxmin":
        return MaxMin()
    raise ValueError(f"unknown activation {name!r}")


def _even(n: int, act: str) -> int:
    return n + (n % 2) if act == "maxmin" else n


def randomize(model: nn.Module, seed: int, gain: float = 1.5) -> nn.Module:
    """Re-draw all parameters (and BatchNorm running statistics) from a seeded generator; float64, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(DTYPE)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen, dtype=DTYPE) * gain / fan_in**0.5)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen, dtype=DTYPE) * 0.5)
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen, dtype=DTYPE) * 0.3)
                mod.running_var.copy_(torch.rand(n, generator=gen, dtype=DTYPE) * 1.5 + 0.5)
                sign = torch.where(torch.rand(n, generator=gen, dtype=DTYPE) < 0.2, -1.0, 1.0)
                mod.weight.copy_(sign * (torch.rand(n, generator=gen, dtype=DTYPE) + 0.5))
                mod.bias.copy_(torch.randn(n, generator=gen, dtype=DTYPE) * 0.3)
    return model.eval()


def mlp(
    in_dim: int, widths: Sequence[int], out_dim: int = 1, act: str = "relu", seed: int = 0, slope: float = 0.1
) -> nn.Sequential:
    """``Linear - act - ... - Linear`` with hidden ``widths`` (``len(widths)`` activation layers)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for w in widths:
        w = _even(w, act)
        layers += [nn.Linear(prev, w), activation(act, slope)]
        prev = w
    layers.append(nn.Linear(prev, out_dim))
    return randomize(nn.Sequential(*layers), seed)


def cnn(
    in_shape: tuple[int, int, int] = (1, 6, 6),
    channels: Sequence[int] = (4,),
    out_dim: int = 1,
    act: str = "relu",
    seed: int = 0,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 1,
    batchnorm: bool = True,
    pool: bool = True,
    slope: float = 0.1,
) -> nn.Sequential:
    """``[Conv2d - (BatchNorm2d) - act] x len(channels) - (AvgPool2d(2)) - Flatten - Linear``.

    The first convolution uses ``stride``/``padding``; later ones use stride 1 and padding 1 (kernel 3).
    """
    layers: list[nn.Module] = []
    c_prev = in_shape[0]
    for i, ch in enumerate(channels):
        ch = _even(ch, act)
        if i == 0:
            layers.append(nn.Conv2d(c_prev, ch, kernel, stride=stride, padding=padding))
        else:
            layers.append(nn.Conv2d(c_prev, ch, 3, stride=1, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(ch))
        layers.append(activation(act, slope))
        c_prev = ch
    probe = nn.Sequential(*layers).to(DTYPE)
    with torch.no_grad():
        shape = tuple(probe.eval()(torch.zeros(1, *in_shape, dtype=DTYPE)).shape[1:])
    if pool and min(shape[1:]) >= 2:
        layers.append(nn.AvgPool2d(2))
        shape = (shape[0], shape[1] // 2, shape[2] // 2)
    layers += [nn.Flatten(), nn.Linear(int(np.prod(shape)), out_dim)]
    return randomize(nn.Sequential(*layers), seed)


def residual_mlp(
    in_dim: int, width: int, blocks: int = 1, out_dim: int = 1, act: str = "relu", seed: int = 0, slope: float = 0.1
) -> nn.Sequential:
    """``Linear - [x + Linear(act(Linear(x)))] x blocks - act - Linear``."""
    width = _even(width, act)
    layers: list[nn.Module] = [nn.Linear(in_dim, width)]
    for _ in range(blocks):
        body = nn.Sequential(nn.Linear(width, width), activation(act, slope), nn.Linear(width, width))
        layers.append(Residual(body))
    layers += [activation(act, slope), nn.Linear(width, out_dim)]
    model = randomize(nn.Sequential(*layers), seed)
    with torch.no_grad():  # keep residual branches moderate so the depth does not blow the scale up
        for blk in model:
            if isinstance(blk, Residual):
                blk.body[-1].weight.mul_(0.5)
    return model


def residual_cnn(
    in_shape: tuple[int, int, int] = (1, 5, 5),
    channels: int = 2,
    blocks: int = 1,
    out_dim: int = 1,
    act: str = "relu",
    seed: int = 0,
    slope: float = 0.1,
) -> nn.Sequential:
    """``Conv - [x + Conv(act(Conv(x)))] x blocks - act - Flatten - Linear`` (3x3 convolutions, padding 1)."""
    ch = _even(channels, act)
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], ch, 3, padding=1)]
    for _ in range(blocks):
        body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), activation(act, slope), nn.Conv2d(ch, ch, 3, padding=1))
        layers.append(Residual(body))
    layers += [activation(act, slope), nn.Flatten(), nn.Linear(ch * in_shape[1] * in_shape[2], out_dim)]
    return randomize(nn.Sequential(*layers), seed)


# ----------------------------------------------------------------------------------------------------------------
# boxes and cases
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class NetCase:
    """A model with a batch of boxes ``[x0 - eps, x0 + eps]``."""

    model: nn.Module
    input_shape: tuple[int, ...]
    x0: Tensor
    eps: float
    out_dim: int
    label: str

    @property
    def x_lower(self) -> Tensor:
        return self.x0 - self.eps

    @property
    def x_upper(self) -> Tensor:
        return self.x0 + self.eps


def random_centres(input_shape: Sequence[int], batch: int, seed: int) -> Tensor:
    """``N(0, 1)`` centres of shape ``(batch, *input_shape)``."""
    gen = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(batch, *input_shape, generator=gen, dtype=DTYPE)


def eps_values() -> st.SearchStrategy[float]:
    """Box radii log-uniform in ``[1e-3, 1]``."""
    return st.floats(-3.0, 0.0).map(lambda e: float(10.0**e))


def build_case(
    seed: int,
    kind: str,
    act: str,
    max_depth: int = 4,
    max_width: int = 32,
    max_out: int = 3,
    batch: int = 2,
) -> NetCase:
    """A random architecture of ``kind`` with activation ``act``; every size and the box radius come from ``seed``
    (so a failing case is reproduced by ``build_case(seed, kind, act, ...)``)."""
    rng = np.random.default_rng(seed)
    out_dim = int(rng.integers(1, max_out + 1))
    slope = float(rng.choice([0.01, 0.3, -0.2, 2.0])) if act == "leaky_relu" else 0.1
    if kind == "mlp":
        in_dim = int(rng.integers(1, 7))
        widths = [int(w) for w in rng.integers(1, max_width + 1, size=int(rng.integers(1, max_depth + 1)))]
        model = mlp(in_dim, widths, out_dim, act, seed, slope)
        shape: tuple[int, ...] = (in_dim,)
        label = f"mlp {in_dim}-{'-'.join(map(str, widths))}-{out_dim}"
    elif kind == "cnn":
        shape = (int(rng.integers(1, 3)), int(rng.integers(4, 8)), int(rng.integers(4, 8)))
        channels = [int(ch) for ch in rng.integers(1, 5, size=int(rng.integers(1, 3)))]
        stride, padding = int(rng.integers(1, 3)), int(rng.integers(0, 2))
        bn, pool = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        model = cnn(shape, channels, out_dim, act, seed, 3, stride, padding, bn, pool, slope)
        label = f"cnn {shape} ch={channels} stride={stride} pad={padding} bn={bn} pool={pool} -> {out_dim}"
    elif kind == "resmlp":
        in_dim, width, blocks = int(rng.integers(1, 7)), int(rng.integers(2, 17)), int(rng.integers(1, 3))
        model = residual_mlp(in_dim, width, blocks, out_dim, act, seed, slope)
        shape = (in_dim,)
        label = f"resmlp {in_dim} w={width} blocks={blocks} -> {out_dim}"
    elif kind == "rescnn":
        shape = (int(rng.integers(1, 3)), int(rng.integers(3, 6)), int(rng.integers(3, 6)))
        blocks = int(rng.integers(1, 3))
        model = residual_cnn(shape, 2, blocks, out_dim, act, seed, slope)
        label = f"rescnn {shape} blocks={blocks} -> {out_dim}"
    else:
        raise ValueError(f"unknown kind {kind!r}")
    eps = float(10.0 ** rng.uniform(-3.0, 0.0))
    x0 = random_centres(shape, batch, seed)
    slope_txt = f"({slope:g})" if act == "leaky_relu" else ""
    return NetCase(model, shape, x0, eps, out_dim, f"{label} {act}{slope_txt} seed={seed} eps={eps:.3g}")


@st.composite
def net_cases(
    draw,
    kinds: Sequence[str] = KINDS,
    activations: Sequence[str] = ACTIVATIONS,
    max_depth: int = 4,
    max_width: int = 32,
    max_out: int = 3,
    batch: int = 2,
) -> NetCase:
    """Hypothesis strategy: kind, activation and a seed are drawn; the seed fixes everything else
    (:func:`build_case`), so the examples stay diverse under hypothesis' deterministic generation."""
    kind = draw(st.sampled_from(list(kinds)))
    act = draw(st.sampled_from(list(activations)))
    seed = draw(st.integers(0, 2**20))
    return build_case(seed, kind, act, max_depth, max_width, max_out, batch)


# ----------------------------------------------------------------------------------------------------------------
# tiny ReLU MLPs for the exact references
# ----------------------------------------------------------------------------------------------------------------


def relu_mlp_params(model: nn.Sequential) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(weights, biases)`` as numpy float64 arrays of a ``Linear - ReLU - ... - Linear`` Sequential."""
    lin = [m for m in model if isinstance(m, nn.Linear)]
    others = [m for m in model if not isinstance(m, (nn.Linear, nn.ReLU))]
    if others:
        raise TypeError(f"not a ReLU MLP: contains {type(others[0]).__name__}")
    return (
        [m.weight.detach().double().numpy().copy() for m in lin],
        [m.bias.detach().double().numpy().copy() for m in lin],
    )


def tiny_relu_mlp(sizes: Sequence[int], seed: int) -> tuple[nn.Sequential, list[np.ndarray], list[np.ndarray]]:
    """ReLU MLP with layer sizes ``sizes = (in, hidden..., out)``, its numpy weights and biases."""
    model = mlp(sizes[0], list(sizes[1:-1]), sizes[-1], "relu", seed)
    w, b = relu_mlp_params(model)
    return model, w, b


def margin_vector(out_dim: int, i: int, j: int) -> Tensor:
    """``e_i - e_j`` (a logit margin direction)."""
    c = torch.zeros(out_dim, dtype=DTYPE)
    c[i], c[j] = 1.0, -1.0
    return c


def tiny_margin_problem(sizes: Sequence[int], seed: int) -> tuple[nn.Sequential, list, list, Tensor, Tensor]:
    """A seeded tiny ReLU MLP, its numpy weights and biases, a centre ``x0`` (1, in) in [0, 1) and the direction
    ``c = e_0 - e_1`` (``e_0`` for a scalar output) -- the setup shared by the Branch and Bound tests."""
    model, w, b = tiny_relu_mlp(sizes, seed)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, sizes[0], generator=gen, dtype=DTYPE)
    c = torch.zeros(sizes[-1], dtype=DTYPE)
    c[0] = 1.0
    if sizes[-1] > 1:
        c[1] = -1.0
    return model, w, b, x0, c


#: tiny ReLU nets with exact references: (layer sizes, seed, eps, margin (i, j) or None)
TINY_EXACT_CASES = [
    ((2, 8, 8, 1), 0, 0.1, None),
    ((2, 8, 8, 1), 1, 0.5, None),
    ((2, 8, 8, 1), 2, 1.0, None),
    ((3, 6, 6, 2), 3, 0.2, (0, 1)),
    ((3, 6, 6, 2), 4, 0.8, (1, 0)),
    ((3, 8, 8, 8, 3), 5, 0.3, (0, 2)),
    ((2, 5, 5, 5, 5, 1), 6, 0.6, None),
]
