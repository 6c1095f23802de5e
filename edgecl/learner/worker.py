"""The background trainer: tasks cut from the incoming stream, trained with the method's own
begin_task → observe → end_task, checkpointed with the id of the last sample trained on."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecl.errors import CheckpointError, NonFiniteLossError
from edgecl.learner.config import LearnerConfig
from edgecl.learner.engine import Engine, Snapshot, task_from, task_record
from edgecl.learner.memory import Migrator, RamTier, Sample
from edgecl.learner.priority import lower_priority
from edgecl.methods.base import Batch, TaskInfo
from edgecl.runner import checkpoint

log = logging.getLogger("edgecl.learner")
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


@dataclass
class Progress:
    """What the trainer has done; saved in every checkpoint."""

    last_trained_id: int = 0
    task_index: int = -1
    train_steps: int = 0
    samples_trained: int = 0
    model_version: int = 0
    rolled_back: int = 0
    accuracy: list[dict[str, float]] = field(default_factory=list)  # held-out, over time

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Trainer(threading.Thread):
    def __init__(self, cfg: LearnerConfig, engine: Engine, migrator: Migrator, ram: RamTier,
                 state_dir: Path, frozen_sha256: str, evaluate: Any = None,
                 after_task: Any = None) -> None:
        super().__init__(name="edgecl-trainer", daemon=True)
        self.cfg, self.engine, self.migrator, self.ram = cfg, engine, migrator, ram
        self.state_dir, self.frozen_sha256 = state_dir, frozen_sha256
        self.evaluate = evaluate  # snapshot -> accuracy, or None
        self.after_task = after_task  # called after every task (the budget watchdog)
        self.progress = Progress()
        self.train_lock = threading.RLock()  # held while a task trains
        self.stop_event = threading.Event()
        self.snapshot = engine.snapshot(0)  # what predictions use: the last task end
        self.last_good = self.snapshot  # the state after the last good step: for rollback
        self.last_checkpoint: dict[str, float] | None = None
        self.pending: Sample | None = None  # the sample that ended the previous task
        self.rng = np.random.default_rng(cfg.seed)
        self.busy = False

    # -- the loop --
    def run(self) -> None:
        lower_priority(self.cfg.background_nice)
        torch.set_num_threads(self.cfg.threads)
        while not self.stop_event.is_set():
            chunk = self.next_task_samples()
            if chunk:
                with self.train_lock:
                    self.busy = True
                    try:
                        self.train_task(chunk)
                    finally:
                        self.busy = False
            due = self.last_checkpoint is None or (
                time.time() - self.last_checkpoint["time"] >= self.cfg.checkpoint_every_s)
            if due and self.progress.train_steps and self.unsaved():
                self.save_checkpoint()

    def unsaved(self) -> bool:
        return self.last_checkpoint is None or (
            self.last_checkpoint["version"] != self.progress.model_version)

    def next_task_samples(self) -> list[Sample]:
        """The next task: ``every_n`` samples, fewer when the class set changes (policy
        ``new_classes``) or when no more arrive within ``max_wait_s``."""
        b = self.cfg.boundary
        chunk: list[Sample] = []
        classes: set[int] = set()
        deadline = None
        while len(chunk) < b.every_n and not self.stop_event.is_set():
            sample = self.pending or self._get(0.05)
            self.pending = None
            if sample is None:
                if chunk and deadline is not None and time.monotonic() >= deadline:
                    break
                if not chunk:
                    return []
                continue
            if (b.policy == "new_classes" and len(chunk) >= b.min_samples
                    and sample.class_id not in classes):
                self.pending = sample
                break
            chunk.append(sample)
            classes.add(sample.class_id)
            deadline = deadline or time.monotonic() + b.max_wait_s
        return chunk

    def _get(self, timeout: float) -> Sample | None:
        try:
            return self.migrator.incoming.get(timeout=timeout)
        except queue.Empty:
            return None

    def train_task(self, chunk: list[Sample]) -> None:
        cfg, engine, p = self.cfg, self.engine, self.progress
        t = p.task_index + 1
        bs = cfg.batch_size
        task = TaskInfo(t, torch.tensor(sorted({s.class_id for s in chunk})), len(chunk),
                        math.ceil(len(chunk) / bs) * cfg.epochs)
        engine.begin_task(task)
        self.last_good = engine.snapshot(p.model_version)
        for epoch in range(cfg.epochs):
            order = np.random.default_rng([cfg.seed, t, epoch]).permutation(len(chunk))
            for start in range(0, len(chunk), bs):
                new = [chunk[i] for i in order[start:start + bs]]
                self.step(new + self.ram.draw(cfg.memory.replay_per_step), task, epoch)
        engine.method.end_task(task)
        for sample in chunk:
            self.ram.put(sample)
        p.task_index = t
        p.last_trained_id = max(p.last_trained_id, max(s.id for s in chunk))
        self.migrator.trained_up_to = p.last_trained_id
        self.publish()
        if self.after_task is not None:
            self.after_task()
        if self.evaluate is not None and p.train_steps // cfg.eval.every_steps > len(p.accuracy):
            p.accuracy.append(self.evaluate(self.snapshot) | {"time": time.time(),
                                                             "train_steps": p.train_steps})

    def step(self, samples: list[Sample], task: TaskInfo, epoch: int) -> None:
        engine, p = self.engine, self.progress
        raw = torch.from_numpy(np.stack([s.image for s in samples]))
        y = torch.tensor([s.class_id for s in samples], device=engine.device)
        ids = torch.tensor([s.id for s in samples])
        batch = Batch(engine.transform(raw).to(engine.device), y, raw, ids, task.index, epoch)
        try:
            with engine.meter.training_step():
                engine.method.observe(batch)
        except NonFiniteLossError as exc:
            # roll the update back to the state after the last good step and go on
            engine.load(self.last_good.task, self.last_good.state)
            p.rolled_back += 1
            log.warning("non-finite loss, update rolled back: %s", exc)
            return
        p.train_steps += 1
        p.samples_trained += len(samples)
        self.last_good = engine.snapshot(p.model_version)

    def publish(self) -> None:
        """A new snapshot for predictions, at a task end: then every method's model is
        consistent (a CWR* head, for one, holds training weights inside a task). Publishing
        is one reference swap, so a prediction sees the old model or the new one."""
        self.progress.model_version += 1
        self.snapshot = self.engine.snapshot(self.progress.model_version)

    # -- checkpoints --
    def save_checkpoint(self) -> dict[str, float]:
        """Write the state at a task boundary (waits for a task in training to end)."""
        with self.train_lock:
            path, previous = self.state_dir / CHECKPOINT, self.state_dir / PREVIOUS
            if path.exists():
                path.replace(previous)  # a crash before the next write leaves the previous
            checkpoint.save(path, {
                "method": self.snapshot.state, "task": task_record(self.snapshot.task),
                "progress": self.progress.as_dict(), "meter": self.engine.meter.state_dict(),
                "ram_ids": sorted(self.ram.samples),
            }, self.frozen_sha256)
            self.last_checkpoint = {"time": time.time(), "version": self.progress.model_version}
            return dict(self.last_checkpoint)

    def restore(self) -> list[int]:
        """Load the newest readable checkpoint; returns the ids the RAM tier held."""
        for name in (CHECKPOINT, PREVIOUS):
            path = self.state_dir / name
            if not path.exists():
                continue
            try:
                state = checkpoint.load(path, self.frozen_sha256, self.engine.device)
            except CheckpointError as exc:
                if "other frozen weights" in str(exc):
                    raise
                log.warning("discarding unreadable checkpoint %s: %s", path.name, exc)
                continue
            self.engine.load(task_from(state["task"]), state["method"])
            self.engine.meter.load_state_dict(state["meter"])
            self.progress = Progress(**state["progress"])
            self.snapshot = Snapshot(self.progress.model_version, self.engine.task,
                                     state["method"])
            self.last_checkpoint = {"time": path.stat().st_mtime,
                                    "version": self.progress.model_version}
            log.info("resumed from %s: model version %d, last trained sample %d", path.name,
                     self.progress.model_version, self.progress.last_trained_id)
            return list(state["ram_ids"])
        return []

    def stop(self) -> None:
        self.stop_event.set()
