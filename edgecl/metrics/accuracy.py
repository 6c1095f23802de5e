"""Accuracy matrix and the continual-learning summaries computed from it.

``A[t][i]`` is the accuracy (percent) on task ``i`` after training task ``t`` (``i <= t``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class AccuracyMatrix:
    rows: list[list[float]] = field(default_factory=list)

    def add_row(self, accuracies: list[float]) -> None:
        if len(accuracies) != len(self.rows) + 1:
            raise ValueError(
                f"row {len(self.rows)} needs {len(self.rows) + 1} task accuracies, "
                f"got {len(accuracies)}"
            )
        self.rows.append([float(a) for a in accuracies])

    @property
    def n_tasks(self) -> int:
        return len(self.rows)

    def final_average(self) -> float:
        return float(np.mean(self.rows[-1])) if self.rows else float("nan")

    def average_incremental(self) -> float:
        return float(np.mean([np.mean(r) for r in self.rows])) if self.rows else float("nan")

    def forgetting(self) -> float:
        """mean over i < T of (max_{t<T} A[t][i] − A[T][i]); 0 with a single task."""
        last = len(self.rows) - 1
        if last < 1:
            return 0.0
        drops = [
            max(self.rows[t][i] for t in range(i, last)) - self.rows[last][i] for i in range(last)
        ]
        return float(np.mean(drops))

    def bwt(self) -> float:
        """Backward transfer: mean over i < T of (A[T][i] − A[i][i])."""
        last = len(self.rows) - 1
        if last < 1:
            return 0.0
        return float(np.mean([self.rows[last][i] - self.rows[i][i] for i in range(last)]))

    def summary(self) -> dict:
        return {
            "matrix": self.rows,
            "final_average": self.final_average(),
            "average_incremental": self.average_incremental(),
            "forgetting": self.forgetting(),
            "bwt": self.bwt(),
        }


def class_il_predictions(logits: Tensor, n_seen: int) -> Tensor:
    """Argmax over all classes seen so far (class-incremental)."""
    return logits[:, :n_seen].argmax(dim=1)


def task_il_predictions(logits: Tensor, task_classes: Tensor) -> Tensor:
    """Argmax restricted to the classes of the sample's (known) task: masking, not a new head."""
    masked = torch.full_like(logits, float("-inf"))
    masked[:, task_classes] = logits[:, task_classes]
    return masked.argmax(dim=1)


def percent_correct(pred: Tensor, target: Tensor) -> float:
    return 100.0 * float((pred == target).float().mean()) if len(target) else float("nan")
