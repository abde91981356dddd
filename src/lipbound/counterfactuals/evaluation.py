"""Evaluation protocol: changed models, and cost / validity / robust validity / LOF / Stability / guarantee.

* ``changed_models``: M_1..M_n retrained with the base architecture on the same training data from other seeds
  (optionally on bootstrap resamples, or with another hidden width), all trained at once (:mod:`.training`).
* ``evaluate``: for counterfactuals x'_i of factuals x_i,
  cost l1/l2 = mean ||x'_i - x_i||_{1,2}; validity = mean 1[m(x'_i) >= 1/2];
  robust validity = mean over i and j of 1[M_j(x'_i) >= 1/2] (over all counterfactuals, as in the paper's code;
  ``robust_validity_of_valid`` restricts to those valid under m); LOF = mean prediction in {+1 inlier, -1 outlier}
  of scikit-learn's LocalOutlierFactor(n_neighbors=1, novelty=True) fitted on X_train; Stability = mean R_hat.
  With ``guarantee=True`` also the certified bound of :func:`stability_guarantee` (eps = tau - 1/2) and two
  checks of it against the concrete M_j: the observed failure rate among counterfactuals where the guarantee
  applies, and how often assumption (A), M_j(x') >= mu(x'), actually holds (mu estimated with ``k_mu`` samples).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipbound.counterfactuals.datasets import TabularData
from lipbound.counterfactuals.generators import CounterfactualResult, probability, stability_chunked
from lipbound.counterfactuals.guarantee import stability_guarantee
from lipbound.counterfactuals.training import train_mlps
from lipbound.errors import InvalidInputError

MIN_CHANGED_MODELS = 1


def changed_models(
    data: TabularData,
    n: int = 50,
    width: int = 128,
    bootstrap: bool = False,
    first_seed: int = 1000,
    epochs: int = 50,
    batch_size: int = 256,
) -> list[nn.Module]:
    """``n`` retrained d-``width``-``width``-2 MLPs (seeds first_seed .. first_seed + n - 1), eval mode, float32."""
    if n < MIN_CHANGED_MODELS:
        raise InvalidInputError(f"need at least {MIN_CHANGED_MODELS} changed model, got n={n}")
    if width < 1:
        raise InvalidInputError(f"width must be positive, got {width}")
    seeds = list(range(first_seed, first_seed + n))
    return train_mlps(data.x_train, data.y_train, seeds, width, epochs, batch_size, bootstrap=bootstrap)


@dataclass
class Evaluation:
    """Summary numbers (``summary``) and per-counterfactual arrays (``per_row``) of :func:`evaluate`."""

    method: str
    summary: dict[str, float]
    per_row: dict[str, list]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "summary": self.summary,
            "per_row": self.per_row,
            "seconds": self.seconds,
            "details": self.details,
        }


def lof_scores(x_train: Tensor, x_cf: Tensor) -> Tensor:
    """LocalOutlierFactor(n_neighbors=1, novelty=True) fitted on X_train: +1 inlier / -1 outlier per row of x_cf."""
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(n_neighbors=1, novelty=True).fit(x_train.detach().double().cpu().numpy())
    return torch.as_tensor(lof.predict(x_cf.detach().double().cpu().numpy()))


def evaluate(
    model: nn.Module,
    factuals: Tensor,
    counterfactuals: Tensor | CounterfactualResult,
    changed: list[nn.Module],
    x_train: Tensor,
    sigma: float = 0.05,
    k: int = 1000,
    tau: float = 0.75,
    guarantee: bool = False,
    k_mu: int = 20_000,
    seed: int = 0,
    method: str | None = None,
) -> Evaluation:
    """Evaluate counterfactuals (see the module docstring). ``changed`` may be empty (no robust validity)."""
    t0 = time.perf_counter()
    if isinstance(counterfactuals, CounterfactualResult):
        method = method or counterfactuals.method
        x_cf = counterfactuals.x_cf
        gen_seconds = counterfactuals.seconds
    else:
        x_cf, gen_seconds = counterfactuals, None
    if x_cf.shape != factuals.shape:
        raise InvalidInputError(f"counterfactuals {tuple(x_cf.shape)} and factuals {tuple(factuals.shape)} differ")
    if not 0 < tau < 1:
        raise InvalidInputError(f"tau must lie in (0, 1), got {tau}")
    b = x_cf.shape[0]
    with torch.no_grad():
        valid = probability(model, x_cf) >= 0.5
        kept = torch.stack([probability(mj, x_cf) >= 0.5 for mj in changed]) if changed else None  # (n, B)
    r = stability_chunked(model, x_cf, sigma, k, torch.Generator().manual_seed(seed + 11))
    l1 = (x_cf - factuals).abs().sum(1)
    l2 = (x_cf - factuals).norm(dim=1)
    lof = lof_scores(x_train, x_cf)
    summary: dict[str, float] = {
        "n": b,
        "cost_l1": float(l1.mean()),
        "cost_l2": float(l2.mean()),
        "validity": float(valid.double().mean()),
        "lof": float(lof.double().mean()),
        "stability": float(r.mean()),
        "stability_ge_tau": float((r >= tau).double().mean()),
    }
    per_row: dict[str, list] = {"l1": l1.tolist(), "l2": l2.tolist(), "valid": valid.tolist(), "stability": r.tolist()}
    if kept is not None:
        summary["robust_validity"] = float(kept.double().mean())
        summary["robust_validity_of_valid"] = float(kept[:, valid].double().mean()) if valid.any() else 0.0
        summary["changed_models"] = len(changed)
        per_row["robust_validity"] = kept.double().mean(0).tolist()
    if gen_seconds is not None:
        summary["seconds_per_cf"] = gen_seconds / max(b, 1)
    details: dict[str, Any] = {}
    if guarantee:
        g = stability_guarantee(model, x_cf, r, sigma=sigma, k=k, eps=tau - 0.5)
        nontriv = g.nontrivial
        summary["guarantee_applies"] = float(g.applies.double().mean())
        summary["guarantee_nontrivial"] = float(nontriv.double().mean())
        summary["guarantee_p_median"] = float(g.probability[nontriv].median()) if nontriv.any() else 1.0
        summary["guarantee_p_max"] = float(g.probability[nontriv].max()) if nontriv.any() else 1.0
        summary["gamma_median"] = float(g.gamma[nontriv].median()) if nontriv.any() else float("nan")
        summary["guarantee_seconds"] = g.seconds
        per_row["guarantee_p"] = g.probability.tolist()
        per_row["gamma"] = g.gamma.tolist()
        details["guarantee"] = {k2: v for k2, v in g.to_dict().items() if k2 not in ("details",)}
        details["guarantee"]["gamma_global"] = g.details.get("gamma_global")
        if kept is not None and nontriv.any():
            mu = stability_chunked(model, x_cf[nontriv], sigma, k_mu, torch.Generator().manual_seed(seed + 12))
            with torch.no_grad():
                m_vals = torch.stack([probability(mj, x_cf[nontriv]) for mj in changed])  # (n, A)
            summary["observed_failure_where_guaranteed"] = float((~kept[:, nontriv]).double().mean())
            summary["assumption_A_holds"] = float((m_vals >= mu.unsqueeze(0)).double().mean())
    return Evaluation(method or "given", summary, per_row, time.perf_counter() - t0, details)
