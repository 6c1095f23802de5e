"""Reservoir replay buffer of raw (un-augmented) images, labels and optional logits.

Serves ER and DER++. Images are kept as uint8 exactly as they arrive (the cheapest
representation); augmentation is applied when examples are retrieved. Its bytes count in the
training memory.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ReservoirBuffer:
    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        if capacity <= 0:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.rng = generator
        self.seen = 0  # examples offered so far (reservoir counter)
        self.images: Tensor | None = None
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.logits: Tensor | None = None
        self.task_ids = torch.zeros(capacity, dtype=torch.long)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def nbytes(self) -> int:
        tensors = [self.labels, self.task_ids, self.images, self.logits]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def reservoir_slots(self, n: int) -> Tensor:
        """Slot per incoming example (-1 = discarded), reservoir sampling in arrival order.

        Example k (0-based overall index s = seen + k) goes to slot s while the buffer fills,
        afterwards to j ~ U{0..s} if j < capacity.
        """
        positions = torch.arange(self.seen, self.seen + n)
        draws = (torch.rand(n, generator=self.rng, dtype=torch.float64) * (positions + 1)).long()
        return torch.where(
            positions < self.capacity,
            positions,
            torch.where(draws < self.capacity, draws, torch.full_like(draws, -1)),
        )

    def add(self, images: Tensor, labels: Tensor, logits: Tensor | None = None,
            task_id: int = 0) -> None:
        images, labels = images.detach().cpu(), labels.detach().cpu()
        if self.images is None:
            self.images = torch.zeros((self.capacity, *images.shape[1:]), dtype=images.dtype)
        if logits is not None and self.logits is None:
            self.logits = torch.zeros((self.capacity, logits.shape[1]), dtype=torch.float32)
        slots = self.reservoir_slots(len(labels))
        self.seen += len(labels)
        keep = slots >= 0
        src = torch.nonzero(keep).squeeze(1)
        dst = slots[keep]
        if len(dst) == 0:
            return
        # A later example overwrites an earlier one that drew the same slot: keep the last.
        order = torch.arange(len(dst))
        last = torch.zeros(self.capacity, dtype=torch.long).fill_(-1)
        last.scatter_reduce_(0, dst, order, reduce="amax")
        winners = last[dst] == order
        src, dst = src[winners], dst[winners]
        self.images[dst] = images[src]
        self.labels[dst] = labels[src]
        self.task_ids[dst] = task_id
        if logits is not None and self.logits is not None:
            self.logits[dst] = logits.detach().float().cpu()[src]

    def sample(self, n: int) -> Tensor:
        """Indices of ``n`` distinct stored examples (fewer if the buffer holds fewer)."""
        size = len(self)
        return torch.randperm(size, generator=self.rng)[: min(n, size)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen, "images": self.images, "labels": self.labels,
            "logits": self.logits, "task_ids": self.task_ids, "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]
        self.images, self.labels = state["images"], state["labels"]
        self.logits, self.task_ids = state["logits"], state["task_ids"]
        self.rng.set_state(state["rng"])
