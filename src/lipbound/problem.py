"""Turn the user's arguments into a validated local-bound problem: graph, input box, output directions.

Every check raises a specific :mod:`lipbound.errors` exception (negative or NaN eps, mismatched shapes, NaN
inputs, wrong-size directions, non-finite weights).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError
from lipbound.graph.ir import Graph
from lipbound.graph.trace import trace

METHODS = ("crown", "interval")
NORMS = {"inf": "inf", float("inf"): "inf", 2: "2", "2": "2", "l2": "2", 1: "1", "1": "1", "l1": "1", "linf": "inf"}


@dataclass
class Problem:
    """A validated problem: ``graph`` in ``dtype``, the box ``[xl, xu]`` ``(B, *in)``, directions ``c``
    ``(B, K, *out)``; ``squeeze``: results drop the K dimension (a single direction was given)."""

    graph: Graph
    xl: Tensor
    xu: Tensor
    c: Tensor
    squeeze: bool
    dtype: torch.dtype


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")


def make_problem(model, x0, eps, x_lower, x_upper, c, dtype: torch.dtype | None, device=None) -> Problem:
    """Validate everything and trace the model (see :func:`lipbound.local.local_lipschitz` for the arguments)."""
    dt = dtype or model_dtype(model)
    ref = torch.as_tensor(x0) if x0 is not None else torch.as_tensor(x_lower) if x_lower is not None else None
    dev = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    xl, xu = input_box(x0, eps, x_lower, x_upper, dt)
    xl, xu = xl.to(dev), xu.to(dev)
    graph = as_graph(model, tuple(xl.shape[1:]), dt, dev)
    cc, squeeze = output_directions(c, graph.output.shape, xl.shape[0], dt, dev)
    return Problem(graph, xl, xu, cc, squeeze, dt)


def parse_norm(norm: Any) -> str:
    key = norm.lower() if isinstance(norm, str) else norm
    if key not in NORMS:
        raise InvalidInputError(f"norm must be 'inf', 2 or 1, got {norm!r}")
    return NORMS[key]


def model_dtype(model: nn.Module | Graph) -> torch.dtype:
    """The floating dtype of the model's parameters (float64 for graphs and parameter-free modules)."""
    if isinstance(model, nn.Module):
        p = next((p for p in model.parameters() if p.is_floating_point()), None)
        if p is not None:
            return p.dtype
    return torch.float64


def _in_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` itself, or a float ``dtype`` copy of it when ``dtype`` is wider than its parameters.

    Tracing folds modules (BatchNorm into an affine map, ...) in the parameters' dtype; folding a float32 model in
    float32 and casting afterwards rounds ``gamma / sqrt(var + eps)`` before the float64 computation starts. The
    float32 values are exact in float64, so the copy is the same real-number network, folded without rounding loss.
    """
    mdt = model_dtype(model)
    if not dtype.is_floating_point or torch.finfo(dtype).bits <= torch.finfo(mdt).bits:
        return model
    try:
        return copy.deepcopy(model).to(dtype)
    except Exception:  # a module that cannot be copied or cast: trace it as it is
        return model


def as_graph(model: nn.Module | Graph, input_shape: tuple[int, ...], dtype: torch.dtype, device) -> Graph:
    if isinstance(model, Graph):
        if model.input_shape != tuple(input_shape):
            raise ShapeMismatchError(
                f"x0 has per-sample shape {tuple(input_shape)}, the model expects {model.input_shape}"
            )
        graph = model
    elif isinstance(model, nn.Module):
        graph = trace(_in_dtype(model, dtype), tuple(input_shape))
    else:
        raise InvalidModelError(f"model must be an nn.Module or a lipbound Graph, got {type(model).__name__}")
    graph.check_finite()
    return graph.to(dtype, device)


def input_box(x0, eps, x_lower, x_upper, dtype) -> tuple[Tensor, Tensor]:
    if x_lower is not None or x_upper is not None:
        if x_lower is None or x_upper is None:
            raise InvalidInputError("pass both x_lower and x_upper")
        xl, xu = torch.as_tensor(x_lower).to(dtype), torch.as_tensor(x_upper).to(dtype)
        if xl.shape != xu.shape:
            raise ShapeMismatchError(f"x_lower has shape {tuple(xl.shape)} but x_upper has {tuple(xu.shape)}")
        if x0 is not None and torch.as_tensor(x0).shape != xl.shape:
            raise ShapeMismatchError("x0 and x_lower/x_upper have different shapes")
    else:
        if x0 is None or eps is None:
            raise InvalidInputError("pass x0 and eps, or x_lower and x_upper")
        x0 = torch.as_tensor(x0).to(dtype)
        if x0.dim() < 1:
            raise ShapeMismatchError("x0 needs a batch dimension: shape (B, *input_shape)")
        e = torch.as_tensor(eps, dtype=dtype)
        if not torch.isfinite(e).all():
            raise InvalidInputError("eps must be finite")
        if (e < 0).any():
            raise InvalidInputError(f"eps must be >= 0, got {eps if e.numel() == 1 else e.min().item()}")
        if e.dim() == 1 and e.numel() == x0.shape[0] and x0.dim() > 1:
            e = e.reshape(-1, *([1] * (x0.dim() - 1)))
        try:
            e = torch.broadcast_to(e, x0.shape)
        except RuntimeError:
            raise ShapeMismatchError(
                f"eps of shape {tuple(e.shape)} does not fit x0 of shape {tuple(x0.shape)}: pass a float, one eps "
                "per input (B,), or a tensor of x0's shape"
            ) from None
        xl, xu = x0 - e, x0 + e
    if not (torch.isfinite(xl).all() and torch.isfinite(xu).all()):
        raise InvalidInputError("the input box contains NaN or inf")
    if (xl > xu).any():
        raise InvalidInputError("x_lower must be <= x_upper everywhere")
    if xl.dim() < 1 or xl.shape[0] == 0:
        raise ShapeMismatchError("inputs need a non-empty batch dimension")
    return xl, xu


def output_directions(c, out_shape: tuple[int, ...], batch: int, dtype, device) -> tuple[Tensor, bool]:
    """Output directions as ``(B, K, *out_shape)`` and whether the K dim is squeezed in results."""
    m = 1
    for s in out_shape:
        m *= s
    if c is None:
        if m == 1:
            return torch.ones(batch, 1, *out_shape, dtype=dtype, device=device), True
        eye = torch.eye(m, dtype=dtype, device=device).reshape(m, *out_shape)
        return eye.unsqueeze(0).expand(batch, m, *out_shape), False
    c = torch.as_tensor(c).to(dtype=dtype, device=device)
    if not torch.isfinite(c).all():
        raise InvalidInputError("output direction c contains NaN or inf")
    squeeze = c.dim() == 1
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if c.dim() == 2:
        if c.shape[1] != m:
            raise ShapeMismatchError(f"output direction c has {c.shape[1]} entries, the model has {m} outputs")
        c = c.unsqueeze(0).expand(batch, *c.shape)
    elif c.dim() == 3:
        if c.shape[0] != batch or c.shape[2] != m:
            raise ShapeMismatchError(
                f"per-input directions c must have shape (B={batch}, K, {m}), got {tuple(c.shape)}"
            )
    else:
        raise ShapeMismatchError(f"c must be a vector ({m},), rows (K, {m}) or (B, K, {m}); got {tuple(c.shape)}")
    return c.reshape(batch, c.shape[1], *out_shape), squeeze
