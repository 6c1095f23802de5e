"""Held-out accuracy over time: the test images of a dataset whose class names are the
stream's labels, scored on the classes seen so far, with a snapshot of the model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from edgecl.data import load_dataset
from edgecl.learner.config import LearnerConfig
from edgecl.learner.engine import Engine, Snapshot

if TYPE_CHECKING:
    from edgecl.learner.learner import Learner


class HeldOut:
    def __init__(self, learner: Learner, images: np.ndarray, labels: np.ndarray,
                 names: tuple[str, ...], per_class: int) -> None:
        self.learner = learner
        self.images, self.labels, self.names = images, labels, names
        self.per_class = per_class
        self.engine: Engine | None = None

    @classmethod
    def build(cls, cfg: LearnerConfig, learner: Learner) -> HeldOut | None:
        if cfg.eval.dataset is None:
            return None
        test = load_dataset(cfg.eval.dataset, "test", root=cfg.data_root)
        return cls(learner, test.images, test.labels, test.class_names, cfg.eval.per_class)

    def evaluate(self, snapshot: Snapshot) -> dict[str, float]:
        """Class-IL accuracy (%) over every stream class the dataset has test images of."""
        learner = self.learner
        if self.engine is None:  # its own copy: predictions never wait for an evaluation
            self.engine = Engine(learner.cfg, learner._backbone(), torch.device("cpu"))
        self.engine.load(snapshot.task, snapshot.state)
        seen = learner.store.classes()[: self.engine.method.seen_classes]
        correct = total = 0
        for class_id, name in enumerate(seen):
            if name not in self.names:
                continue
            where = np.flatnonzero(self.labels == self.names.index(name))[: self.per_class]
            images = np.stack([learner.decode_array(self.images[i]) for i in where])
            with torch.no_grad():
                logits = self.engine.method.predict(self.engine.inputs(images))
            pred = logits[:, : self.engine.method.seen_classes].argmax(dim=1)
            correct += int((pred == class_id).sum())
            total += len(where)
        return {"accuracy": 100.0 * correct / total if total else float("nan"),
                "test_images": float(total), "classes": float(len(seen))}
