"""Buffers of frozen-prefix outputs (latents) with labels, for latent replay (AR1*, ViT-LR).

Latents are stored as fp32, fp16 or int8 rows of a :class:`TensorStore`.

- :class:`LatentBuffer`: the ``rm_sz`` replayed latents, with the reference's replacement
  rule (after each incremental batch, ``h`` new latents overwrite ``h`` random slots);
- :class:`LatentReservoir`: a uniform random subset of the latents streaming by during a
  batch, the candidates for the next buffer update (the reservoir rule of
  :mod:`edgecl.efficiency.replay_buffer`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edgecl.efficiency.feature_cache import Storage, TensorStore
from edgecl.efficiency.replay_buffer import last_writes, reservoir_slots


class LabelledLatents:
    """``capacity`` latent rows and their labels, the first ``len()`` of them filled; the
    bytes of both are counted."""

    def __init__(self, capacity: int, storage: Storage) -> None:
        self.store = TensorStore(capacity, storage)
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def nbytes(self) -> int:
        return self.store.nbytes() + self.labels.numel() * self.labels.element_size()

    def write(self, slots: Tensor, latents: Tensor, labels: Tensor) -> None:
        self.store.write(slots, latents)
        self.labels[slots] = labels

    def read(self, slots: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """fp32 latents and labels at ``slots``, on ``device``."""
        return self.store.read(slots).to(device), self.labels[slots].to(device)

    def stored_labels(self) -> Tensor:
        return self.labels[: self.size]

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "labels": self.labels, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state["store"])
        self.labels, self.size = state["labels"], state["size"]


class LatentBuffer(LabelledLatents):
    """``rm_sz`` latents (fp32/fp16/int8) with labels; the reference's replacement rule."""

    def update(self, latents: Tensor, labels: Tensor, generator: torch.Generator,
               grow: bool) -> None:
        """Put ``len(latents)`` (= h) new latents in: free slots (first batch, or grow), then
        over random distinct occupied slots."""
        h = len(labels)
        if h == 0:
            return
        n_free = min(h, self.store.capacity - self.size) if (grow or self.size == 0) else 0
        slots = [torch.arange(self.size, self.size + n_free)]
        n_replace = min(h - n_free, self.size)
        slots.append(torch.randperm(self.size, generator=generator)[:n_replace])
        dst = torch.cat(slots)
        self.write(dst, latents[: len(dst)], labels[: len(dst)])
        self.size += n_free


class LatentReservoir(LabelledLatents):
    """A uniform random subset of ``capacity`` of the latents streaming by."""

    def __init__(self, capacity: int, storage: Storage) -> None:
        super().__init__(capacity, storage)
        self.seen = 0

    def add(self, latents: Tensor, labels: Tensor, generator: torch.Generator) -> None:
        capacity = self.store.capacity
        slots = reservoir_slots(self.seen, len(labels), capacity, generator)
        self.seen += len(labels)
        self.size = min(self.seen, capacity)
        src, dst = last_writes(slots, capacity)
        if len(dst):
            self.write(dst, latents[src.to(latents.device)], labels[src])

    def contents(self) -> tuple[Tensor, Tensor]:
        if self.size == 0:
            return torch.zeros(0), self.labels[:0]
        return self.read(torch.arange(self.size))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = state["seen"]
