"""Build once, bound many times: :class:`Bounded` traces, validates and casts a model once.

Every one-call function (:func:`~lipbound.local.local_lipschitz`, :func:`~lipbound.local.jacobian_bounds`,
:func:`~lipbound.local.local_lipschitz_bab`, :func:`~lipbound.exact.exact_lipschitz`,
:func:`~lipbound.monotonicity.certify_monotonicity`, :func:`~lipbound.global_bounds.global_lipschitz`) takes an
``nn.Module`` and traces it (torch.fx), checks the traced graph against the module, checks its weights are finite
and casts it, on every call. An application that bounds the same model many times (a smoothing run, a
counterfactual search, a training log) pays that each time. ``Bounded(model, input_shape)`` does it once: the
methods run the same functions on the stored graph, so they return the same numbers as the one-call API.

The global bounds read the model through their own layered form (:func:`~lipbound.global_bounds.extract`); it is
extracted on the first global call and kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError, InvalidModelError, ShapeMismatchError
from lipbound.exact import ExactResult, exact_lipschitz
from lipbound.global_bounds import GlobalResult, LayeredNetwork, extract, global_lipschitz
from lipbound.graph.ir import Graph
from lipbound.local import LocalResult, jacobian_bounds, local_lipschitz, local_lipschitz_bab
from lipbound.monotonicity import MonotonicityResult, certify_monotonicity
from lipbound.problem import as_graph, model_dtype

F64 = torch.float64


class Bounded:
    """A model traced, validated and cast once; bound it with :meth:`local`, :meth:`jacobian`, :meth:`bab`,
    :meth:`exact`, :meth:`monotonicity` and :meth:`global_lipschitz`.

    Args:
        model: an ``nn.Module`` of supported ops or a lipbound ``Graph``.
        input_shape: per-sample input shape, e.g. ``(784,)`` or ``(1, 28, 28)`` (optional for a ``Graph``).
        dtype: computation dtype (float64, the default, is rigorous and tight; ``None`` keeps the model's).
        device: where the graph and the bounds live (default: the CPU).

    ``graph`` is the traced graph in ``dtype``. The exact MILP always computes in float64: for another ``dtype`` a
    float64 graph is traced on the first :meth:`exact` call and kept.
    """

    def __init__(
        self,
        model: nn.Module | Graph,
        input_shape: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = F64,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, (nn.Module, Graph)):
            raise InvalidModelError(f"model must be an nn.Module or a lipbound Graph, got {type(model).__name__}")
        if input_shape is None:
            if not isinstance(model, Graph):
                raise InvalidInputError("input_shape is required for an nn.Module (e.g. input_shape=(784,))")
            input_shape = model.input_shape
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise InvalidInputError(f"input_shape must be a tuple of positive integers, got {input_shape!r}") from None
        if not shape or min(shape) < 1:
            raise InvalidInputError(f"input_shape must be a tuple of positive integers, got {input_shape!r}")
        if isinstance(model, Graph) and model.input_shape != shape:
            raise ShapeMismatchError(f"input_shape {shape} does not match the graph's input shape {model.input_shape}")
        self.model = model
        self.input_shape = shape
        self.dtype = dtype or model_dtype(model)
        self.device = torch.device(device) if device is not None else None
        self.graph: Graph = as_graph(model, shape, self.dtype, self.device)
        self._graphs: dict[torch.dtype, Graph] = {self.dtype: self.graph}
        self._layered: LayeredNetwork | None = None

    def __repr__(self) -> str:
        kind = type(self.model).__name__
        return f"Bounded({kind}, input_shape={self.input_shape}, dtype={self.dtype}, nodes={len(self.graph.nodes)})"

    def _graph_in(self, dtype: torch.dtype) -> Graph:
        """The graph in ``dtype`` (traced again from the module at most once per dtype, like the one-call API)."""
        if dtype not in self._graphs:
            self._graphs[dtype] = as_graph(self.model, self.input_shape, dtype, self.device)
        return self._graphs[dtype]

    def local(
        self,
        x0: Tensor | None = None,
        eps: float | Tensor | None = None,
        norm: str | int = "inf",
        c: Tensor | None = None,
        method: str = "crown",
        optimize: bool = False,
        **options: Any,
    ) -> LocalResult:
        """:func:`lipbound.local_lipschitz` on the stored graph (same arguments except ``model``/``dtype``)."""
        return local_lipschitz(
            self.graph, x0, eps, norm, c, method, optimize, dtype=self.dtype, device=self.device, **options
        )

    def jacobian(
        self,
        x0: Tensor | None = None,
        eps: float | Tensor | None = None,
        c: Tensor | None = None,
        method: str = "crown",
        optimize: bool = False,
        **options: Any,
    ) -> tuple[Tensor, Tensor]:
        """:func:`lipbound.jacobian_bounds` on the stored graph: elementwise Jacobian bounds ``(lo, hi)``."""
        return jacobian_bounds(self.graph, x0, eps, c, method, optimize, dtype=self.dtype, **options)

    def bab(
        self,
        x0: Tensor | None = None,
        eps: float | Tensor | None = None,
        norm: str | int = "inf",
        c: Tensor | None = None,
        **options: Any,
    ) -> LocalResult:
        """:func:`lipbound.local_lipschitz_bab` on the stored graph (``time_budget=``, ``max_domains=``, ...)."""
        return local_lipschitz_bab(self.graph, x0, eps, norm, c, dtype=self.dtype, **options)

    def exact(
        self,
        x0: Tensor | None = None,
        eps: float | None = None,
        norm: str | int = "inf",
        c: Tensor | None = None,
        time_limit: float = 60.0,
        **options: Any,
    ) -> ExactResult:
        """:func:`lipbound.exact_lipschitz` (MILP, ReLU networks, float64) on the stored graph."""
        return exact_lipschitz(self._graph_in(F64), x0, eps, norm, c, time_limit, **options)

    def monotonicity(
        self,
        x0: Tensor | None = None,
        eps: float | Tensor | None = None,
        c: Tensor | None = None,
        **options: Any,
    ) -> MonotonicityResult:
        """:func:`lipbound.certify_monotonicity` on the stored graph (``bisections=``, ``samples=``, ...)."""
        return certify_monotonicity(self.graph, x0, eps, c, dtype=self.dtype, **options)

    def global_lipschitz(
        self,
        norm: Any = 2,
        method: str = "auto",
        solver: str | None = None,
        time_budget: float | None = None,
    ) -> GlobalResult:
        """:func:`lipbound.global_lipschitz` of the model, from its layered form extracted once."""
        if self._layered is None:
            self._layered = extract(self.model, self.input_shape)
        return global_lipschitz(self._layered, norm, method, solver=solver, time_budget=time_budget)
