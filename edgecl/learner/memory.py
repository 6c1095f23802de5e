"""Episodic memory in two tiers, as in CarM (Carousel Memory): a bounded in-RAM buffer of
decoded samples and the much larger on-disk store (:mod:`edgecl.learner.store`).

A background thread does all storage work: it reads newly stored samples, decodes them and
queues them for training (``incoming``), and, under the ``refresh`` migration policy, swaps
part of the RAM buffer for older samples from disk, so replay covers the whole history and
not only what happened to be admitted. A training step only ever reads RAM.

Eviction policies (``memory.eviction``): ``class_balanced`` (default) evicts from the class
holding most samples, so every class keeps an equal share; ``reservoir`` keeps a uniform
sample of everything trained on. Migration policies (``memory.migration``): ``refresh``
(default) or ``none`` (the buffer only changes as samples are trained on).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgecl.learner.priority import lower_priority
from edgecl.learner.store import SampleStore, StoredSample

Eviction = Literal["class_balanced", "reservoir"]
Migration = Literal["refresh", "none"]


@dataclass
class Sample:
    id: int
    class_id: int
    image: np.ndarray  # (S, S, 3) uint8


class RamTier:
    """The bounded in-RAM buffer; thread-safe."""

    def __init__(self, capacity: int, eviction: Eviction, seed: int) -> None:
        self.capacity = capacity
        self.eviction = eviction
        self.rng = np.random.default_rng(seed)
        self.samples: dict[int, Sample] = {}
        self.by_class: dict[int, list[int]] = defaultdict(list)
        self.seen = 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    def nbytes(self) -> int:
        with self.lock:
            return sum(s.image.nbytes for s in self.samples.values())

    def put(self, sample: Sample) -> None:
        with self.lock:
            if sample.id in self.samples or self.capacity == 0:
                return
            self.seen += 1
            if len(self.samples) >= self.capacity:
                victim = self._victim()
                if victim is None:
                    return
                self._remove(victim)
            self.samples[sample.id] = sample
            self.by_class[sample.class_id].append(sample.id)

    def _victim(self) -> int | None:
        if self.eviction == "reservoir":
            slot = int(self.rng.integers(self.seen))
            if slot >= self.capacity:
                return None  # the newcomer is not kept
            return list(self.samples)[slot]
        largest = max(self.by_class.values(), key=len)
        return largest[int(self.rng.integers(len(largest)))]

    def _remove(self, sample_id: int) -> None:
        sample = self.samples.pop(sample_id)
        ids = self.by_class[sample.class_id]
        ids.remove(sample_id)
        if not ids:
            del self.by_class[sample.class_id]

    def draw(self, n: int) -> list[Sample]:
        with self.lock:
            if not self.samples or n <= 0:
                return []
            ids = list(self.samples)
            picks = self.rng.choice(len(ids), size=min(n, len(ids)), replace=False)
            return [self.samples[ids[i]] for i in picks]

    def replace_some(self, fresh: list[Sample], fraction: float) -> None:
        """Swap up to ``fraction`` of the buffer for ``fresh`` samples (migration)."""
        with self.lock:
            n = min(len(fresh), int(fraction * self.capacity) or 1)
            for sample in fresh[:n]:
                if sample.id in self.samples:
                    continue
                if len(self.samples) >= self.capacity:
                    self._remove(self._victim_balanced())
                self.samples[sample.id] = sample
                self.by_class[sample.class_id].append(sample.id)

    def _victim_balanced(self) -> int:
        largest = max(self.by_class.values(), key=len)
        return largest[int(self.rng.integers(len(largest)))]

    def shrink(self, capacity: int) -> None:
        """A smaller capacity, evicting by the policy until the buffer fits it."""
        with self.lock:
            self.capacity = capacity
            while len(self.samples) > capacity:
                self._remove(self._victim_balanced())

    def class_counts(self) -> dict[int, int]:
        with self.lock:
            return {c: len(ids) for c, ids in self.by_class.items()}


class Migrator(threading.Thread):
    """The storage thread: disk → RAM, in the background."""

    def __init__(self, store: SampleStore, ram: RamTier, decode: Callable[[bytes], np.ndarray],
                 start_after: int, migration: Migration, refresh_every_s: float,
                 refresh_fraction: float, queue_size: int) -> None:
        super().__init__(name="edgecl-migrator", daemon=True)
        self.store, self.ram, self.decode = store, ram, decode
        self.last_queued = start_after
        self.migration = migration
        self.refresh_every_s = refresh_every_s
        self.refresh_fraction = refresh_fraction
        self.incoming: queue.Queue[Sample] = queue.Queue(maxsize=queue_size)
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.trained_up_to = start_after
        self.errors = 0
        self.nice = 0  # niceness added to this thread (see lower_priority)

    def run(self) -> None:
        lower_priority(self.nice)
        next_refresh = 0.0
        while not self.stop_event.is_set():
            moved = self.queue_new()
            if self.migration == "refresh" and self.refresh_due(next_refresh):
                self.refresh()
                next_refresh = time.monotonic() + self.refresh_every_s
            if not moved:
                self.wake.wait(0.05)
                self.wake.clear()

    def refresh_due(self, next_refresh: float) -> bool:
        return len(self.ram) >= self.ram.capacity > 0 and time.monotonic() >= next_refresh

    def queue_new(self) -> int:
        """Decode newly stored samples into the training queue (blocks while it is full)."""
        room = self.incoming.maxsize - self.incoming.qsize()
        if room <= 0:
            return 0
        rows = self.store.after(self.last_queued, min(room, 64))
        for row in rows:
            sample = self._decoded(row)
            while not self.stop_event.is_set():
                try:
                    self.incoming.put(sample, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self.last_queued = row.id
        return len(rows)

    def refresh(self) -> None:
        ids = self.store.random_ids(max(1, int(self.refresh_fraction * self.ram.capacity)),
                                    below=self.trained_up_to)
        self.ram.replace_some([self._decoded(r) for r in self.store.by_ids(ids)],
                              self.refresh_fraction)

    def _decoded(self, row: StoredSample) -> Sample:
        return Sample(row.id, row.class_id, self.decode(row.image))

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
