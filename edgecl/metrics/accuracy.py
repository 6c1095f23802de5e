"""Accuracy matrix and the continual-learning summaries computed from it.

``A[t][i]`` is the accuracy (percent) on task ``i`` after training task ``t`` (``i <= t``), or
None when task ``i`` has no test images (a CORe50 batch that brings no new class): such
entries are left out of every mean, and a summary with nothing to average is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Accuracy = float | None
# class-IL argmax: over the classes seen so far, or over every logit (l2p-pytorch,
# dualprompt-pytorch and LightCL take it over all of them; unseen heads are then untrained)
ClassILLogits = Literal["seen", "all"]


def mean_defined(values: Sequence[Accuracy]) -> Accuracy:
    """Mean of the entries that are not None; None if there are none."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


@dataclass
class AccuracyMatrix:
    rows: list[list[Accuracy]] = field(default_factory=list)

    def add_row(self, accuracies: Sequence[Accuracy]) -> None:
        if len(accuracies) != len(self.rows) + 1:
            raise ValueError(
                f"row {len(self.rows)} needs {len(self.rows) + 1} task accuracies, "
                f"got {len(accuracies)}"
            )
        self.rows.append([None if a is None else float(a) for a in accuracies])

    @property
    def n_tasks(self) -> int:
        return len(self.rows)

    def final_average(self) -> Accuracy:
        return mean_defined(self.rows[-1]) if self.rows else float("nan")

    def average_incremental(self) -> Accuracy:
        if not self.rows:
            return float("nan")
        return mean_defined([mean_defined(r) for r in self.rows])

    def _tested_before_last(self) -> list[int]:
        """Tasks i < T with test images (their column has no None)."""
        last = len(self.rows) - 1
        return [i for i in range(last) if self.rows[last][i] is not None]

    def forgetting(self) -> Accuracy:
        """Chaudhry et al. (2018): mean over i < T of (max_{t<T} A[t][i] − A[T][i]), the max
        over earlier rows only (so it may be negative); 0 with a single task."""
        return self._forgetting(include_final=False)

    def forgetting_with_final(self) -> Accuracy:
        """l2p-pytorch / Mammoth / SparCL: mean over i < T of (max_{t<=T} A[t][i] − A[T][i]),
        the max including the final row, so never negative; 0 with a single task."""
        return self._forgetting(include_final=True)

    def _forgetting(self, include_final: bool) -> Accuracy:
        last = len(self.rows) - 1
        if last < 1:
            return 0.0
        end = last + 1 if include_final else last
        drops = [
            max(self.rows[t][i] for t in range(i, end)) - self.rows[last][i]
            for i in self._tested_before_last()
        ]
        return mean_defined(drops)

    def bwt(self) -> Accuracy:
        """Backward transfer: mean over i < T of (A[T][i] − A[i][i])."""
        last = len(self.rows) - 1
        if last < 1:
            return 0.0
        return mean_defined(
            [self.rows[last][i] - self.rows[i][i] for i in self._tested_before_last()])

    def summary(self) -> dict:
        return {
            "matrix": self.rows,
            "final_average": self.final_average(),
            "average_incremental": self.average_incremental(),
            "forgetting": self.forgetting(),
            "forgetting_with_final": self.forgetting_with_final(),
            "bwt": self.bwt(),
        }


@dataclass
class SeenClassesCurve:
    """Class-IL accuracy on the test images of every class seen so far, at some task ends.

    The CORe50 NIC protocol (AR1*, ViT-LR): one accuracy over a growing test set instead of a
    per-task matrix, so forgetting and BWT are not defined (None).
    """

    points: list[dict] = field(default_factory=list)

    def add_point(self, task: int, n_classes: int, n_test: int, accuracy: Accuracy) -> None:
        if self.points and task <= self.points[-1]["task"]:
            raise ValueError(f"curve points must follow task order; got task {task} after "
                             f"{self.points[-1]['task']}")
        self.points.append({"task": task, "seen_classes": n_classes, "test_samples": n_test,
                            "class_il": None if accuracy is None else float(accuracy)})

    def summary(self) -> dict:
        accuracies = [p["class_il"] for p in self.points]
        return {
            "matrix": None,
            "final_average": accuracies[-1] if accuracies else None,
            "average_incremental": mean_defined(accuracies),
            "forgetting": None,
            "forgetting_with_final": None,
            "bwt": None,
        }


def class_il_predictions(logits: Tensor, n_seen: int, over: ClassILLogits = "seen") -> Tensor:
    """Class-incremental argmax: over the classes seen so far (``0..n_seen-1``, classes are
    numbered in stream order) or over every logit (``all``)."""
    if over == "all":
        return logits.argmax(dim=1)
    if over != "seen":
        raise ValueError(f"class-IL argmax is over 'seen' or 'all' logits, got {over!r}")
    return logits[:, :n_seen].argmax(dim=1)


def task_il_predictions(logits: Tensor, task_classes: Tensor) -> Tensor:
    """Argmax restricted to the classes of the sample's (known) task: masking, not a new head."""
    masked = torch.full_like(logits, float("-inf"))
    masked[:, task_classes] = logits[:, task_classes]
    return masked.argmax(dim=1)


def percent_correct(pred: Tensor, target: Tensor) -> float:
    return 100.0 * float((pred == target).float().mean()) if len(target) else float("nan")

