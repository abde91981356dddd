"""Probabilistic Gaussian dynamics model (PETS/MBPO style): one network or an ensemble of N with elites.

Each member m maps x = concat(s, a) (standardised) to a Gaussian over y = concat(s' - s, r) (standardised):

    p_m(y | x) = N(mu_m(x), diag exp(l_m(x))),   l = l_min + softplus(l_max - l_min - softplus(l_max - l_raw)) (soft
    bounds, learned l_min / l_max),
    loss = sum_m mean_batch [ (mu_m - y)^2 exp(-l_m) + l_m ] + 0.01 (sum l_max - sum l_min)   (Gaussian NLL).

All members are computed at once with batched matrix products (weights of shape (N, in, out)). Members train on
independent shuffles of the same data; a held-out split measures each member's one-step MSE, and the ``n_elites``
best members generate model transitions: each sample picks one elite uniformly and draws y from its Gaussian.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lipbound.errors import InvalidInputError
from lipbound.rl.buffer import Batch


class EnsembleLinear(nn.Module):
    """N independent affine maps applied to a stacked input (N, B, in) -> (N, B, out)."""

    def __init__(self, n: int, d_in: int, d_out: int, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter((2 * torch.rand(n, d_in, d_out, generator=generator) - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(n, 1, d_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


@dataclass
class ModelFit:
    """Summary of one :meth:`GaussianDynamics.fit` call."""

    epochs: int
    holdout_mse: list[float]  # per member, raw units (mean over delta-state and reward coordinates)
    elite_mse: float  # mean holdout MSE of the elites, raw units
    train_nll: float


class GaussianDynamics(nn.Module):
    """An ensemble of ``n_members`` Gaussian MLPs (``n_members=1``: the single model), SiLU hidden layers."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        n_members: int = 1,
        n_elites: int | None = None,
        hidden: tuple[int, ...] = (200, 200),
        seed: int = 0,
    ):
        super().__init__()
        if n_members < 1:
            raise InvalidInputError(f"n_members must be >= 1, got {n_members}")
        n_elites = n_members if n_elites is None else int(n_elites)
        if not 1 <= n_elites <= n_members:
            raise InvalidInputError(f"n_elites must be in [1, n_members={n_members}], got {n_elites}")
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.n_members, self.n_elites = int(n_members), n_elites
        d_in, self.d_out = self.state_dim + self.action_dim, self.state_dim + 1
        gen = torch.Generator().manual_seed(int(seed))
        sizes = (d_in, *hidden)
        self.hidden = nn.ModuleList(EnsembleLinear(n_members, a, b, gen) for a, b in itertools.pairwise(sizes))
        self.out = EnsembleLinear(n_members, sizes[-1], 2 * self.d_out, gen)
        self.max_logvar = nn.Parameter(torch.full((self.d_out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((self.d_out,), -10.0))
        for name, size in (("x_mean", d_in), ("x_std", d_in), ("y_mean", self.d_out), ("y_std", self.d_out)):
            self.register_buffer(name, torch.zeros(size) if "mean" in name else torch.ones(size))
        self.register_buffer("elites", torch.arange(n_elites))

    # ------------------------------------------------------------------------------------------------ forward
    def _forward_normalised(self, xn: Tensor) -> tuple[Tensor, Tensor]:
        """xn (N, B, d_in) standardised -> mean, log-variance (N, B, d_out) in standardised target units."""
        h = xn
        for layer in self.hidden:
            h = nn.functional.silu(layer(h))
        mean, logvar = self.out(h).chunk(2, dim=-1)
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def _inputs(self, states: Tensor, actions: Tensor) -> Tensor:
        x = (torch.cat([states, actions], dim=-1) - self.x_mean) / self.x_std
        return x.unsqueeze(0).expand(self.n_members, *x.shape)

    @staticmethod
    def _targets(batch: Batch) -> Tensor:
        return torch.cat([batch.next_states - batch.states, batch.rewards.unsqueeze(-1)], dim=-1)

    def predict_mean(self, states: Tensor, actions: Tensor) -> Tensor:
        """Mean of every member, raw units: (N, B, d_s + 1) = (delta-state, reward)."""
        mean, _ = self._forward_normalised(self._inputs(states, actions))
        return mean * self.y_std + self.y_mean

    @torch.no_grad()
    def sample(
        self, states: Tensor, actions: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One model step for a batch: (s', r) with y drawn from a uniformly chosen elite's Gaussian."""
        mean, logvar = self._forward_normalised(self._inputs(states, actions))
        b = states.shape[0]
        pick = self.elites[torch.randint(self.n_elites, (b,), generator=generator)]
        rows = torch.arange(b)
        mu, std = mean[pick, rows], (0.5 * logvar[pick, rows]).exp()
        y = (mu + std * torch.randn(mu.shape, generator=generator)) * self.y_std + self.y_mean
        return states + y[:, : self.state_dim], y[:, self.state_dim]

    # ----------------------------------------------------------------------------------------------- training
    def _nll(self, xn: Tensor, yn: Tensor) -> Tensor:
        mean, logvar = self._forward_normalised(xn)
        per_member = ((mean - yn).pow(2) * (-logvar).exp() + logvar).mean(dim=(1, 2))
        return per_member.sum() + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def holdout_mse(self, batch: Batch) -> Tensor:
        """Per-member one-step MSE of the mean on ``batch`` (raw units, averaged over coordinates): (N,)."""
        pred = self.predict_mean(batch.states, batch.actions)
        return (pred - self._targets(batch)).pow(2).mean(dim=(1, 2))

    def _member_tensors(self) -> dict[str, Tensor]:
        """The per-member parameters (leading dimension N), by name."""
        return {k: v for k, v in self.named_parameters() if k.startswith(("hidden.", "out."))}

    def fit(
        self,
        data: Batch,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        max_epochs: int = 20,
        batch_size: int = 256,
        holdout_ratio: float = 0.2,
        max_holdout: int = 2000,
        patience: int = 3,
    ) -> ModelFit:
        """Fit on ``data`` (a random held-out split scores members and picks elites); early stop when no member
        improved its held-out MSE by > 1% for ``patience`` epochs, keeping each member's best weights."""
        n = data.states.shape[0]
        if n < 2:
            raise InvalidInputError(f"need >= 2 transitions to fit the dynamics model, got {n}")
        perm = torch.randperm(n, generator=generator)
        n_hold = min(max(int(n * holdout_ratio), 1), max_holdout)
        hold = Batch(*(x[perm[:n_hold]] for x in data))
        train = Batch(*(x[perm[n_hold:]] for x in data))
        x_all, y_all = torch.cat([train.states, train.actions], -1), self._targets(train)
        with torch.no_grad():
            self.x_mean.copy_(x_all.mean(0))
            self.x_std.copy_(x_all.std(0).clamp_min(1e-6) if len(x_all) > 1 else torch.ones_like(self.x_std))
            self.y_mean.copy_(y_all.mean(0))
            self.y_std.copy_(y_all.std(0).clamp_min(1e-6) if len(y_all) > 1 else torch.ones_like(self.y_std))
        xn, yn = (x_all - self.x_mean) / self.x_std, (y_all - self.y_mean) / self.y_std
        m = self.n_members
        best = self.holdout_mse(hold)
        best_state = {k: v.detach().clone() for k, v in self._member_tensors().items()}
        stale, epochs, nll = 0, 0, float("nan")
        n_train = xn.shape[0]
        for epochs in range(1, max_epochs + 1):  # noqa: B007
            order = torch.argsort(torch.rand(m, n_train, generator=generator), dim=1)  # one shuffle per member
            for start in range(0, n_train, batch_size):
                idx = order[:, start : start + batch_size]
                loss = self._nll(xn[idx], yn[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                nll = float(loss.detach()) / m
            mse = self.holdout_mse(hold)
            improved = (best - mse) / best.clamp_min(1e-12) > 0.01
            if bool(improved.any()):
                best = torch.where(improved, mse, best)
                for k, v in self._member_tensors().items():
                    best_state[k][improved] = v.detach()[improved]
                stale = 0
            else:
                stale += 1
            if stale >= patience:
                break
        # members keep their best snapshot; shared parameters (log-variance bounds, scalers) stay current
        with torch.no_grad():
            for k, v in self._member_tensors().items():
                v.copy_(best_state[k])
        final = self.holdout_mse(hold)
        order = torch.argsort(final)
        self.elites.copy_(order[: self.n_elites])
        return ModelFit(epochs, final.tolist(), float(final[self.elites].mean()), nll)
