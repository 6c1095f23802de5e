"""Evaluation after a task: class-IL and task-IL accuracy on each task seen so far
(protocol ``per_task``), or one class-IL accuracy on all seen classes (``seen_classes``)."""

from __future__ import annotations

import numpy as np
import torch

from edgecl.data.loader import iterate_batches
from edgecl.data.scenarios import Scenario
from edgecl.data.transforms import BatchTransform
from edgecl.methods.base import Method
from edgecl.metrics.accuracy import (
    Accuracy,
    ClassILLogits,
    class_il_predictions,
    percent_correct,
    task_il_predictions,
)
from edgecl.metrics.cost import CostMeter


def seen_class_count(scenario: Scenario, t: int) -> int:
    """Classes seen in tasks 0..t. Both scenario builders number classes in stream order, so
    the seen classes are ``0..n-1``; a task of known classes only (a CORe50 NIC batch) adds
    none, so this is the maximum over tasks 0..t, not task t's own maximum."""
    return max(int(task.classes.max()) + 1 for task in scenario.tasks[: t + 1])


@torch.no_grad()
def predictions(
    method: Method, scenario: Scenario, indices: np.ndarray, transform: BatchTransform,
    batch_size: int, device: torch.device, n_seen: int, task_classes: torch.Tensor | None = None,
    class_il_logits: ClassILLogits = "seen",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Class-IL predictions (argmax over classes ``0..n_seen-1``, or over every logit with
    ``class_il_logits="all"``), task-IL predictions (argmax over ``task_classes``; None
    without them) and targets on ``scenario.test[indices]``."""
    preds_c, preds_t, targets = [], [], []
    for x, y, _ in iterate_batches(
        scenario.test, indices, batch_size, transform=transform, shuffle=False, seed=0,
    ):
        logits = method.predict(x.to(device))
        preds_c.append(class_il_predictions(logits, n_seen, class_il_logits).cpu())
        if task_classes is not None:
            preds_t.append(task_il_predictions(logits, task_classes).cpu())
        targets.append(y)
    return torch.cat(preds_c), torch.cat(preds_t) if preds_t else None, torch.cat(targets)


@torch.no_grad()
def evaluate(
    method: Method, scenario: Scenario, t: int, transform: BatchTransform, batch_size: int,
    meter: CostMeter, device: torch.device, class_il_logits: ClassILLogits = "seen",
) -> tuple[list[Accuracy], list[Accuracy]]:
    """Class-IL and task-IL accuracy on each task 0..t after training task t (protocol
    ``per_task``); None for a task without test images."""
    n_seen = seen_class_count(scenario, t)
    class_il: list[Accuracy] = []
    task_il: list[Accuracy] = []
    with meter.phase("eval"):
        for task in scenario.tasks[: t + 1]:
            if len(task.test_indices) == 0:
                class_il.append(None)
                task_il.append(None)
                continue
            classes = torch.as_tensor(task.classes, device=device)
            pred_c, pred_t, target = predictions(
                method, scenario, task.test_indices, transform, batch_size, device, n_seen,
                classes, class_il_logits)
            class_il.append(percent_correct(pred_c, target))
            task_il.append(percent_correct(pred_t, target))
    return class_il, task_il


def seen_test_indices(scenario: Scenario, t: int) -> np.ndarray:
    """Test images of every class seen in tasks 0..t (each task holds those it introduced)."""
    return np.concatenate([task.test_indices for task in scenario.tasks[: t + 1]])


@torch.no_grad()
def evaluate_seen_classes(
    method: Method, scenario: Scenario, t: int, transform: BatchTransform, batch_size: int,
    meter: CostMeter, device: torch.device, class_il_logits: ClassILLogits = "seen",
) -> tuple[int, int, Accuracy]:
    """(classes seen, test images, class-IL accuracy on them) after task t (protocol
    ``seen_classes``); accuracy None if the seen classes have no test image."""
    n_seen = seen_class_count(scenario, t)
    indices = seen_test_indices(scenario, t)
    if len(indices) == 0:
        return n_seen, 0, None
    with meter.phase("eval"):
        pred, _, target = predictions(
            method, scenario, indices, transform, batch_size, device, n_seen,
            class_il_logits=class_il_logits)
    return n_seen, len(indices), percent_correct(pred, target)
