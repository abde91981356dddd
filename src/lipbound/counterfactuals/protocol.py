"""One evaluation run, shared by the CLI and the benchmark: factuals, generators, changed models, metrics.

Factuals are the test points the base model rejects (m(x) < 1/2). Methods: ``closest`` (CC, l1 or l2),
``wachter``, ``nn``, ``trex-i`` (T-Rex:I started from CC with the same norm) and ``trex-nn``; every method sees the
same factuals and the same changed models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.counterfactuals.datasets import TabularData
from lipbound.counterfactuals.evaluation import Evaluation, changed_models, evaluate
from lipbound.counterfactuals.generators import (
    METHODS,
    CounterfactualResult,
    closest_counterfactual,
    nearest_neighbour,
    probability,
    trex_iterative,
    trex_nn,
    wachter,
)
from lipbound.counterfactuals.space import FeatureSpace
from lipbound.errors import InvalidInputError


@dataclass
class ProtocolSettings:
    """Hyper-parameters of a run (defaults: the paper's code; ``trex_steps`` is ours, see the README)."""

    tau: float = 0.75
    sigma: float = 0.05
    k: int = 1000
    norm: int = 2
    trex_step: float = 0.01
    trex_steps: int = 100
    trex_radius: float = 1.0
    n_changed: int = 50
    changed_width: int = 128
    bootstrap: bool = False
    guarantee: bool = True
    k_mu: int = 10_000
    relax_categorical: bool = False  # the paper's treatment: one-hot/integer features as continuous [0, 1]
    batch: int = 64
    seed: int = 0

    def check(self) -> None:
        if not 0 < self.tau < 1:
            raise InvalidInputError(f"tau must lie in (0, 1) (a Stability threshold on a probability), got {self.tau}")
        if not self.sigma > 0 or self.k < 1:
            raise InvalidInputError(f"need sigma > 0 and k >= 1, got sigma={self.sigma}, k={self.k}")
        if self.norm not in (1, 2):
            raise InvalidInputError(f"norm must be 1 or 2, got {self.norm}")
        if self.n_changed < 0:
            raise InvalidInputError(f"the number of changed models must be >= 0, got {self.n_changed}")


@dataclass
class ProtocolResult:
    data: str
    factuals: Tensor
    results: dict[str, CounterfactualResult]
    evaluations: dict[str, Evaluation]
    settings: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [{"method": m, **ev.summary} for m, ev in self.evaluations.items()]

    def to_dict(self, per_row: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data": self.data,
            "n_factuals": int(self.factuals.shape[0]),
            "settings": self.settings,
            "seconds": self.seconds,
            "table": self.table(),
        }
        if per_row:
            out["methods"] = {
                m: {**self.results[m].to_dict(), "evaluation": ev.to_dict()} for m, ev in self.evaluations.items()
            }
        return out


def parse_methods(spec: str | list[str]) -> list[str]:
    """``"all"`` or comma-separated names from :data:`METHODS`."""
    items = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if items == ["all"]:
        return list(METHODS)
    bad = [m for m in items if m not in METHODS]
    if bad or not items:
        raise InvalidInputError(f"unknown method(s) {bad or items}; choose from {', '.join(METHODS)} or 'all'")
    return items


def check_model(model: nn.Module, d: int) -> None:
    """The model must take (B, d) inputs and return 1 or 2 logits."""
    try:
        with torch.no_grad():
            probability(model, torch.zeros(1, d, dtype=torch.float64))
    except RuntimeError as e:
        raise InvalidInputError(f"the model does not accept inputs of dimension {d} (the data's): {e}") from None


def rejected_factuals(model: nn.Module, data: TabularData, n: int | None = None) -> Tensor:
    """Test points the base model rejects (m(x) < 1/2), first ``n``."""
    with torch.no_grad():
        rej = probability(model, data.x_test) < 0.5
    x = data.x_test[rej]
    if x.shape[0] == 0:
        raise InvalidInputError(f"the model rejects none of the {data.x_test.shape[0]} test points of {data.name}")
    return x if n is None else x[:n]


def _batched(fn: Callable[[Tensor], CounterfactualResult], x: Tensor, batch: int, name: str) -> CounterfactualResult:
    parts = [fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    details = parts[0].details if len(parts) == 1 else {"batches": [p.details for p in parts]}
    return CounterfactualResult(
        name,
        torch.cat([p.x for p in parts]),
        torch.cat([p.x_cf for p in parts]),
        torch.cat([p.valid for p in parts]),
        torch.cat([p.stability for p in parts]),
        sum(p.seconds for p in parts),
        details,
    )


def run_protocol(
    model: nn.Module,
    data: TabularData,
    methods: list[str],
    n_factuals: int | None = None,
    settings: ProtocolSettings | None = None,
    changed: list[nn.Module] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ProtocolResult:
    """Generate counterfactuals with every method for the rejected test points and evaluate them."""
    s = settings or ProtocolSettings()
    s.check()
    check_model(model, data.x.shape[1])
    tick = progress or (lambda _msg: None)
    space = FeatureSpace.from_data(data)
    if s.relax_categorical:  # records may then hold fractional one-hot / integer values (not legal rows)
        space = FeatureSpace(space.lower, space.upper, space.immutable)
    x = rejected_factuals(model, data, n_factuals)
    seconds: dict[str, float] = {}
    if changed is None:
        t0 = time.perf_counter()
        changed = (
            changed_models(data, s.n_changed, s.changed_width, s.bootstrap, first_seed=1000 + s.seed)
            if s.n_changed > 0
            else []
        )
        seconds["changed_models"] = time.perf_counter() - t0
    tick("changed models")
    common = {"sigma": s.sigma, "k": s.k, "seed": s.seed}
    results: dict[str, CounterfactualResult] = {}
    cc: CounterfactualResult | None = None
    for m in methods:
        if m in ("closest", "trex-i") and cc is None:
            cc = _batched(lambda b: closest_counterfactual(model, b, s.norm, space, **common), x, s.batch, "closest")
        if m == "closest":
            res = cc
        elif m == "trex-i":
            refined = _batched(
                lambda b: trex_iterative(
                    model, b, s.tau, s.sigma, s.k, s.trex_step, s.trex_steps, s.trex_radius, space, seed=s.seed
                ),
                cc.x_cf,
                s.batch,
                "trex-i",
            )
            # T-Rex:I's cost includes finding its base counterfactual
            res = CounterfactualResult(
                "trex-i",
                x,
                refined.x_cf,
                refined.valid,
                refined.stability,
                refined.seconds + cc.seconds,
                refined.details,
            )
        elif m == "wachter":
            res = _batched(lambda b: wachter(model, b, space, **common), x, s.batch, m)
        elif m == "nn":
            res = _batched(lambda b: nearest_neighbour(model, b, data.x_train, space, **common), x, s.batch, m)
        else:
            res = _batched(lambda b: trex_nn(model, b, data.x_train, s.tau, space=space, **common), x, s.batch, m)
        results[m] = res
        tick(m)
    evaluations = {}
    for m, res in results.items():
        evaluations[m] = evaluate(
            model,
            x,
            res,
            changed,
            data.x_train,
            s.sigma,
            s.k,
            s.tau,
            guarantee=s.guarantee,
            k_mu=s.k_mu,
            seed=s.seed,
            method=m,
        )
        tick(f"evaluate {m}")
    settings_d = {**s.__dict__, "factuals": "test points with m(x) < 1/2"}
    return ProtocolResult(data.name, x, results, evaluations, settings_d, seconds)
