"""Feature constraints a counterfactual must respect: data range, immutable, one-hot and integer features.

Continuous search happens in the box [lower, upper] with immutable features pinned to the factual's values
(:meth:`FeatureSpace.project`); :meth:`FeatureSpace.discretise` then maps a point to a legal record (every one-hot
block to its argmax level, every integer feature to its grid k * step). Generators report validity for the
discretised point they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lipbound.counterfactuals.datasets import TabularData
from lipbound.errors import InvalidInputError


@dataclass
class FeatureSpace:
    """``lower``/``upper`` (d,), ``immutable`` (d,) bool, ``one_hot`` index blocks, ``integer_step`` (d,) (0: none)."""

    lower: Tensor
    upper: Tensor
    immutable: Tensor | None = None
    one_hot: list[list[int]] = field(default_factory=list)
    integer_step: Tensor | None = None

    @classmethod
    def from_data(cls, data: TabularData) -> FeatureSpace:
        s = data.schema
        return cls(data.lower, data.upper, s.immutable_mask(), s.one_hot_groups(), s.integer_steps())

    @classmethod
    def unit_box(cls, d: int) -> FeatureSpace:
        return cls(torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.lower.numel()

    def check(self, x: Tensor, what: str = "x") -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidInputError(f"{what} must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InvalidInputError(f"{what} is empty (B = 0)")
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).any(1).nonzero().flatten().tolist()
            raise InvalidInputError(f"{what} contains NaN or inf features (rows {bad[:10]})")

    def _like(self, t: Tensor | None, x: Tensor) -> Tensor | None:
        return None if t is None else t.to(device=x.device, dtype=x.dtype if t.is_floating_point() else t.dtype)

    def project(self, z: Tensor, factual: Tensor) -> Tensor:
        """Clamp to [lower, upper] and pin immutable features to ``factual`` (B, d)."""
        out = torch.maximum(torch.minimum(z, self._like(self.upper, z)), self._like(self.lower, z))
        if self.immutable is not None and bool(self.immutable.any()):
            out = torch.where(self.immutable.to(z.device), factual, out)
        return out

    def discretise(self, z: Tensor, factual: Tensor) -> Tensor:
        """Legal record closest in spirit to ``z``: one-hot argmax per block, integer rounding, then :meth:`project`."""
        out = z.detach().clone()
        for g in self.one_hot:
            block = out[:, g]
            out[:, g] = torch.nn.functional.one_hot(block.argmax(1), len(g)).to(out.dtype)
        if self.integer_step is not None:
            st = self._like(self.integer_step, out)
            grid = st > 0
            if bool(grid.any()):
                rounded = torch.round(out / st.clamp(min=1e-12)) * st
                out = torch.where(grid, rounded, out)
        return self.project(out, factual)

    def mutable_mask(self, x: Tensor) -> Tensor:
        if self.immutable is None:
            return torch.ones(self.dim, dtype=x.dtype, device=x.device)
        return (~self.immutable).to(device=x.device, dtype=x.dtype)
