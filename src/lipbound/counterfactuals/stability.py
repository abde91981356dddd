"""Monte-Carlo Stability of a point under a Gaussian neighbourhood (Hamman et al., ICML 2023).

    R_{k,sigma^2}(x, m) = (1/k) sum_i [ m(x_i) - |m(x) - m(x_i)| ],        x_i ~ N(x, sigma^2 I)   ("absdev")
    R^gamma(x, m)       = (1/k) sum_i [ m(x_i) - gamma ||x - x_i||_2 ]                                ("lipschitz")

m(x) is the favourable-class probability: softmax(z)_1 for two logits, sigmoid(z) for one logit. By the triangle
inequality E R <= m(x). Batched over x (B, d) and samples (no Python loop), differentiable in x.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError

VARIANTS = ("absdev", "lipschitz")


def favourable_probability(model: nn.Module, x: Tensor) -> Tensor:
    """m(x) for a batch ``(B, d)``: two logits -> softmax class 1, one logit -> sigmoid; shape ``(B,)``."""
    z = model(x)
    if z.ndim == 1:
        z = z.unsqueeze(-1)
    if z.shape[-1] == 2:
        return torch.sigmoid(z[..., 1] - z[..., 0])
    if z.shape[-1] == 1:
        return torch.sigmoid(z[..., 0])
    raise InvalidInputError(
        f"model returns {z.shape[-1]} outputs; expected 2 logits (class 1 favourable) or 1 favourable-class logit"
    )


def stability(
    model: nn.Module,
    x: Tensor,
    sigma: float = 0.05,
    k: int = 1000,
    variant: str = "absdev",
    gamma: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Monte-Carlo Stability of each row of ``x`` (B, d); returns ``(B,)``. ``noise`` (B, k, d) fixes the normals."""
    if variant not in VARIANTS:
        raise InvalidInputError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if x.ndim != 2:
        raise InvalidInputError(f"x must be a batch (B, d), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidInputError("x contains NaN or inf features")
    if not sigma > 0 or k < 1:
        raise InvalidInputError(f"need sigma > 0 and k >= 1, got sigma={sigma}, k={k}")
    b, d = x.shape
    if noise is None:
        noise = torch.randn(b, k, d, generator=generator, dtype=x.dtype, device=x.device)
    samples = x.unsqueeze(1) + sigma * noise
    m_s = favourable_probability(model, samples.reshape(-1, d)).reshape(b, -1)
    if variant == "absdev":
        m_x = favourable_probability(model, x).unsqueeze(1)
        return (m_s - (m_x - m_s).abs()).mean(1)
    if gamma is None:
        raise InvalidInputError("variant='lipschitz' needs gamma (an upper bound on the Lipschitz constant of m)")
    dist = (samples - x.unsqueeze(1)).norm(dim=-1)
    g = torch.as_tensor(gamma, dtype=x.dtype, device=x.device).reshape(-1, 1)
    return (m_s - g * dist).mean(1)
