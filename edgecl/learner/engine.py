"""A configured method on the learner's backbone: the training copy and the prediction copy
are two engines built the same way, so a snapshot of one loads into the other."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edgecl.backbones.registry import Backbone
from edgecl.data.transforms import BatchTransform, eval_transform
from edgecl.learner.config import LearnerConfig
from edgecl.methods import method_class
from edgecl.methods.base import BenchmarkInfo, Method, TaskInfo
from edgecl.metrics.cost import CostMeter
from edgecl.runner import checkpoint
from edgecl.runner.build import set_recompute

# Methods that size per-task structures (CODA-Prompt's pool, REP's layer-drop clock) read
# these; an online stream has no declared length, so the learner assumes one.
EXPECTED_TASKS = 100
EXPECTED_STEPS_PER_TASK = 4


@dataclass
class Snapshot:
    """A consistent state of the trained method: what predictions use."""

    version: int
    task: TaskInfo | None
    state: dict[str, Any]


class Engine:
    def __init__(self, cfg: LearnerConfig, bundle: Backbone, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.meter = CostMeter(device)
        self.transform: BatchTransform = eval_transform(bundle.img_size, bundle.mean, bundle.std)
        spec = cfg.method
        self.method: Method = method_class(spec.name)(
            spec.method_params(), spec.optim_config(cfg.optim))
        info = BenchmarkInfo(
            num_classes=cfg.max_classes, n_tasks=EXPECTED_TASKS, task_classes=[],
            train_transform=self.transform, device=device, meter=self.meter, seed=cfg.seed,
            steps_per_task=[EXPECTED_STEPS_PER_TASK] * EXPECTED_TASKS,
            input_size=bundle.img_size)
        backbone = copy.deepcopy(bundle.module).to(device)
        set_recompute(backbone, cfg.recompute, key="recompute")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.method.setup(backbone, info)
        self.meter.watch_parameters([self.method.modules, backbone])
        self.backbone = backbone
        self.pristine = checkpoint.module_digests(self.method.modules)
        self.task: TaskInfo | None = None

    def begin_task(self, task: TaskInfo) -> None:
        self.task = task
        self.method.begin_task(task)
        self.meter.watch_parameters([self.method.modules, self.backbone])

    def inputs(self, images: np.ndarray) -> Tensor:
        """Normalized model inputs of (B, S, S, 3) uint8 images."""
        return self.transform(torch.from_numpy(images)).to(self.device)

    # -- state --
    def state(self) -> dict[str, Any]:
        """The method's state, frozen weights left out (as in a run checkpoint)."""
        state = self.method.state_dict()
        state["modules"] = checkpoint.changed_state(self.method.modules, self.pristine)
        return copy.deepcopy(state)

    def load(self, task: TaskInfo | None, state: dict[str, Any]) -> None:
        """Take on a saved state: ``begin_task`` of its task rebuilds the structures, then
        the state overwrites them (the runner's resume rule)."""
        if task is not None and (self.task is None or self.task.index != task.index):
            self.begin_task(task)
        full = dict(state)
        full["modules"] = checkpoint.with_unchanged(self.method.modules, state["modules"])
        self.method.load_state_dict(full)
        self.task = task

    def snapshot(self, version: int) -> Snapshot:
        return Snapshot(version, self.task, self.state())


def task_record(task: TaskInfo | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {"index": task.index, "classes": task.classes.tolist(), "n_train": task.n_train,
            "n_steps": task.n_steps}


def task_from(record: dict[str, Any] | None) -> TaskInfo | None:
    if record is None:
        return None
    return TaskInfo(record["index"], torch.tensor(record["classes"], dtype=torch.long),
                    record["n_train"], record["n_steps"])
