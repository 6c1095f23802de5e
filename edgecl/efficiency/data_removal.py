"""Dynamic data removal (DDR, SparCL): drop the least-forgotten training examples in stages.

Every time an example of the current task is trained on, whether the model classified it
correctly (in that training forward pass, before the update) is recorded. A *forgetting event*
is a correct -> incorrect transition between consecutive presentations (Toneva et al., 2019);
an example never classified correctly since the last reset counts as maximally forgotten.

On each removal epoch (default 5, 10, 15, 20 of every task, as in the SparCL reference) the
examples with the fewest forgetting events are removed from the task's training set, so that a
fraction (default 30 %) of it is gone after the last stage; the statistics are then reset.
Ties are broken at random (seeded); the reference breaks them by an unstable sort of the
presentation order. The count per stage splits ``round(fraction * n)`` evenly with cumulative
rounding (750 of 10,000 per stage for 4 stages; the reference floors ``remove_n / stages``).
Removed examples show up as fewer steps: the method returns the remaining indices from
``begin_epoch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class ForgettingTracker:
    """Per-example forgetting statistics since the last reset (keyed by dataset index)."""

    previous: dict[int, bool] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)
    learned: dict[int, bool] = field(default_factory=dict)

    def record(
        self,
        indices: Sequence[int] | Tensor | np.ndarray,
        correct: Sequence[bool] | Tensor | np.ndarray,
    ) -> None:
        for raw_index, raw_ok in zip(_as_list(indices), _as_list(correct), strict=True):
            index, ok = int(raw_index), bool(raw_ok)
            if self.previous.get(index, False) and not ok:
                self.events[index] = self.events.get(index, 0) + 1
            self.previous[index] = ok
            self.learned[index] = self.learned.get(index, False) or ok

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, forgetting counts) of every tracked example; never learned = +inf."""
        indices = np.fromiter(self.previous, dtype=np.int64, count=len(self.previous))
        counts = np.array(
            [self.events.get(int(i), 0) if self.learned[int(i)] else np.inf for i in indices],
            dtype=np.float64,
        )
        return indices, counts

    def reset(self) -> None:
        self.previous.clear()
        self.events.clear()
        self.learned.clear()

    def __len__(self) -> int:
        return len(self.previous)

    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": dict(self.previous),
            "events": dict(self.events),
            "learned": dict(self.learned),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = dict(state["previous"])
        self.events = dict(state["events"])
        self.learned = dict(state["learned"])


def _as_list(values: Sequence[Any] | Tensor | np.ndarray) -> list[Any]:
    if isinstance(values, Tensor):
        return values.detach().cpu().tolist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def least_forgotten(
    indices: np.ndarray, scores: np.ndarray, n: int, generator: torch.Generator
) -> np.ndarray:
    """The ``n`` indices with the lowest scores, ties broken by a seeded random permutation."""
    n = max(0, min(n, len(indices)))
    tiebreak = torch.randperm(len(indices), generator=generator).numpy()
    order = np.lexsort((tiebreak, scores))
    return indices[order[:n]]


@dataclass
class RemovalSchedule:
    """Epochs (per task) at which data is removed and the total fraction removed by the last."""

    epochs: tuple[int, ...] = (5, 10, 15, 20)
    fraction: float = 0.30

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"removal fraction must be in [0, 1), got {self.fraction}")
        if any(e < 1 for e in self.epochs) or list(self.epochs) != sorted(set(self.epochs)):
            raise ValueError(f"removal epochs must be increasing and >= 1, got {self.epochs}")

    def scaled(self, factor: float) -> RemovalSchedule:
        epochs = sorted({max(1, round(e * factor)) for e in self.epochs})
        return RemovalSchedule(tuple(epochs), self.fraction)

    def cumulative(self, stage: int, n_task: int) -> int:
        """Examples removed after ``stage`` stages (0..len(epochs)) of a task of ``n_task``."""
        return int(round(self.fraction * n_task * stage / len(self.epochs)))

    def count_at(self, epoch: int, n_task: int) -> int:
        """Examples to remove at the start of ``epoch`` (0 on a non-removal epoch)."""
        if epoch not in self.epochs:
            return 0
        stage = self.epochs.index(epoch)
        return self.cumulative(stage + 1, n_task) - self.cumulative(stage, n_task)


@dataclass
class DynamicDataRemoval:
    """Tracks forgetting during a task and removes examples on the schedule's epochs."""

    schedule: RemovalSchedule
    generator: torch.Generator
    tracker: ForgettingTracker = field(default_factory=ForgettingTracker)
    removed: list[int] = field(default_factory=list)  # of the current task, in removal order
    removed_per_task: list[int] = field(default_factory=list)

    def begin_task(self) -> None:
        self.tracker.reset()
        self.removed = []

    def end_task(self) -> None:
        self.removed_per_task.append(len(self.removed))

    def record(self, indices: Tensor | np.ndarray, correct: Tensor | np.ndarray) -> None:
        self.tracker.record(indices, correct)

    def begin_epoch(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """The task's indices still in use this epoch (removing a stage first if due)."""
        kept = self._kept(indices)
        n = self.schedule.count_at(epoch, len(indices))
        if n > 0:
            tracked, scores = self.tracker.scores()
            candidates = np.isin(tracked, kept)
            drop = least_forgotten(tracked[candidates], scores[candidates], n, self.generator)
            self.removed.extend(int(i) for i in drop)
            self.tracker.reset()
            kept = self._kept(indices)
        return kept

    def _kept(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if not self.removed:
            return indices
        return indices[~np.isin(indices, np.asarray(self.removed, dtype=np.int64))]

    def nbytes(self) -> int:
        """Approximate bytes of the statistics (3 numbers per tracked example) and removed set."""
        return 8 * (3 * len(self.tracker) + len(self.removed))

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "removed": list(self.removed),
            "removed_per_task": list(self.removed_per_task),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.removed = list(state["removed"])
        self.removed_per_task = list(state["removed_per_task"])
