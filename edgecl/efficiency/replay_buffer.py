"""Reservoir replay buffer of raw (un-augmented) images, labels and optional logits.

Serves ER, DER++ (and SparCL over them) and EWC's Fisher samples. Images are kept as uint8
exactly as they arrive (the cheapest representation); :meth:`ReservoirBuffer.draw` samples a
minibatch, augments it with the training transform and moves it to the device in one call.
Its bytes count in the training memory.

The reservoir rule (:func:`reservoir_slots`, :func:`last_writes`) is shared with the latent
reservoir of :mod:`edgecl.efficiency.latent_buffers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from edgecl.data.transforms import BatchTransform


def reservoir_slots(seen: int, n: int, capacity: int, generator: torch.Generator) -> Tensor:
    """Slot per incoming example (-1 = discarded), reservoir sampling in arrival order.

    Example k (0-based overall index s = seen + k) goes to slot s while the buffer fills,
    afterwards to j ~ U{0..s} if j < capacity; overall a uniform capacity-subset is kept.
    """
    positions = torch.arange(seen, seen + n)
    draws = (torch.rand(n, generator=generator, dtype=torch.float64) * (positions + 1)).long()
    return torch.where(
        positions < capacity,
        positions,
        torch.where(draws < capacity, draws, torch.full_like(draws, -1)),
    )


def last_writes(slots: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """(source, slot) pairs to write: a later example overwrites an earlier one in its slot."""
    keep = slots >= 0
    src = torch.nonzero(keep).squeeze(1)
    dst = slots[keep]
    order = torch.arange(len(dst))
    last = torch.full((capacity,), -1, dtype=torch.long)
    last.scatter_reduce_(0, dst, order, reduce="amax")
    winners = last[dst] == order
    return src[winners], dst[winners]


def augment(
    images: Tensor, transform: BatchTransform, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Stored uint8 images → augmented, normalised model inputs on ``device``."""
    return transform(images, generator).to(device)


@dataclass
class ReplayBatch:
    """A replay minibatch, ready for the model: augmented inputs, labels, stored logits."""

    x: Tensor
    y: Tensor
    logits: Tensor | None  # the logits stored at insertion (DER++), None if none are kept

    def __len__(self) -> int:
        return len(self.y)


class ReservoirBuffer:
    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        if capacity <= 0:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.rng = generator  # reservoir draws, replay sampling and augmentation
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
        return reservoir_slots(self.seen, n, self.capacity, self.rng)

    def add(self, images: Tensor, labels: Tensor, logits: Tensor | None = None,
            task_id: int = 0) -> None:
        images, labels = images.detach().cpu(), labels.detach().cpu()
        if self.images is None:
            self.images = torch.zeros((self.capacity, *images.shape[1:]), dtype=images.dtype)
        if logits is not None and self.logits is None:
            self.logits = torch.zeros((self.capacity, logits.shape[1]), dtype=torch.float32)
        slots = self.reservoir_slots(len(labels))
        self.seen += len(labels)
        src, dst = last_writes(slots, self.capacity)
        if len(dst) == 0:
            return
        self.images[dst] = images[src]
        self.labels[dst] = labels[src]
        self.task_ids[dst] = task_id
        if logits is not None and self.logits is not None:
            self.logits[dst] = logits.detach().float().cpu()[src]

    def sample(self, n: int) -> Tensor:
        """Indices of ``n`` distinct stored examples (fewer if the buffer holds fewer)."""
        size = len(self)
        return torch.randperm(size, generator=self.rng)[: min(n, size)]

    def take(self, slots: Tensor | slice, transform: BatchTransform,
             device: torch.device) -> ReplayBatch:
        """The examples at ``slots``, augmented with ``transform`` and on ``device``."""
        if self.images is None:
            raise RuntimeError("take from an empty ReservoirBuffer")
        logits = self.logits[slots].to(device) if self.logits is not None else None
        x = augment(self.images[slots], transform, self.rng, device)
        return ReplayBatch(x, self.labels[slots].to(device), logits)

    def draw(self, n: int, transform: BatchTransform, device: torch.device) -> ReplayBatch:
        """``n`` distinct random examples (fewer if it holds fewer), ready for the model."""
        return self.take(self.sample(n), transform, device)

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
