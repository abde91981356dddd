"""A fixed-capacity ring buffer of transitions (s, a, r, s', done) held as tensors; batched add and sample."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lipbound.errors import InvalidInputError


class Batch(NamedTuple):
    states: Tensor  # (B, d_s)
    actions: Tensor  # (B, d_a)
    rewards: Tensor  # (B,)
    next_states: Tensor  # (B, d_s)
    dones: Tensor  # (B,) 1.0 where s' is terminal (no bootstrap), 0.0 otherwise


def cat_batches(a: Batch, b: Batch) -> Batch:
    return Batch(*(torch.cat([x, y]) for x, y in zip(a, b, strict=True)))


class ReplayBuffer:
    """Keeps the last ``capacity`` transitions; :meth:`add` takes a batch (one real step is a batch of one)."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int, dtype: torch.dtype = torch.float32):
        if capacity < 1:
            raise InvalidInputError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._data = Batch(
            torch.zeros(capacity, state_dim, dtype=dtype),
            torch.zeros(capacity, action_dim, dtype=dtype),
            torch.zeros(capacity, dtype=dtype),
            torch.zeros(capacity, state_dim, dtype=dtype),
            torch.zeros(capacity, dtype=dtype),
        )
        self._next = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, batch: Batch) -> None:
        n = batch.states.shape[0]
        if n > self.capacity:  # only the newest ``capacity`` transitions would survive
            batch = Batch(*(x[-self.capacity :] for x in batch))
            n = self.capacity
        idx = (self._next + torch.arange(n)) % self.capacity
        for store, new in zip(self._data, batch, strict=True):
            store[idx] = new.detach().to(store.dtype).reshape(store[idx].shape)
        self._next = (self._next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        if self.size == 0:
            raise InvalidInputError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (int(n),), generator=generator)
        return Batch(*(x[idx] for x in self._data))

    def all(self) -> Batch:
        """Every stored transition (in storage order)."""
        return Batch(*(x[: self.size] for x in self._data))
