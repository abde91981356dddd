"""The check every intake runs: a converted graph must reproduce the model it came from on random inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidModelError, LipboundError
from lipbound.graph.ir import Graph


def check_against(graph: Graph, model: nn.Module, input_shape: tuple[int, ...], atol: float = 1e-4) -> None:
    """Raise if the traced graph does not reproduce ``model`` on random inputs."""
    gen = torch.Generator().manual_seed(0)
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float64
    x = torch.randn(3, *input_shape, generator=gen, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        ref = model(x)
        got = graph(x)
    if isinstance(ref, Tensor) and not torch.isfinite(ref).all():
        raise InvalidModelError(
            "the model returns NaN or inf on random inputs (for example a normalization with eps=0 over a group "
            "that is constant); fix the model before bounding it"
        )
    if ref.shape != got.shape or not torch.allclose(ref, got, atol=atol, rtol=1e-4):
        err = (ref - got).abs().max().item() if ref.shape == got.shape else f"shape {tuple(got.shape)}"
        raise LipboundError(f"internal error: traced graph differs from the model (max error {err})")
