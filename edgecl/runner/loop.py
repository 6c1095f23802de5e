"""The loop: for each task, begin_task → observe per batch → end_task → evaluate.

It is the only training loop in edgecl: the runner, the benchmarks and the layer analysis
drive it and extend it through callbacks. Its state is the position in the stream and the
records kept so far; a checkpoint holds both, plus what the method changed, so a killed run
continues from the last checkpoint and ends with the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edgecl.data.loader import iterate_batches
from edgecl.efficiency.precision import autocast
from edgecl.methods.base import Batch, StepStats, TaskInfo
from edgecl.metrics.accuracy import AccuracyMatrix, SeenClassesCurve
from edgecl.metrics.cost import NvmlEnergy
from edgecl.runner import checkpoint
from edgecl.runner.build import MethodSetup
from edgecl.runner.callbacks import Callback, MemorySampler
from edgecl.runner.evaluation import evaluate, evaluate_seen_classes
from edgecl.runner.step_peak import StepPeakSampler

START = {"task": 0, "epoch": 0, "batch": 0, "step": 0}


def epoch_seed(seed: int, task: int, epoch: int) -> int:
    return (seed * 1_000_003 + task * 10_007 + epoch) % (2**63)


class TrainingLoop:
    """Trains one set-up method through the stream, with checkpoints and cost accounting."""

    def __init__(self, run: MethodSetup, checkpoint_path: Any = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.run = run
        self.method, self.meter = run.method, run.meter
        self.checkpoint_path = checkpoint_path
        self.memory = MemorySampler()
        self.step_peak = StepPeakSampler(run.cfg.cost.step_peak_every)
        self.callbacks: list[Callback] = [self.memory, self.step_peak, *callbacks]
        self.cil, self.til = AccuracyMatrix(), AccuracyMatrix()
        self.seen_curve = SeenClassesCurve()
        self.per_task: list[dict[str, Any]] = []
        self.samples_observed = 0  # stream samples trained on (epochs repeat them)
        self.samples_processed = 0  # through the model, replayed samples included
        self.task_start = self.counters()
        self.position = dict(START)
        self.epoch_indices = np.zeros(0, dtype=np.int64)
        self.elapsed_before = 0.0
        self.wall_start = time.perf_counter()
        self.checkpoint_bytes = 0

    def counters(self) -> dict[str, float]:
        """Cumulative samples, training FLOPs and seconds (per-task figures are differences)."""
        return {
            "samples": self.samples_observed,
            "flops": self.meter.train_flops()["total"],
            "time_s": self.meter.time_summary(0)["train_total"],
        }

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.wall_start

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -- checkpoints --
    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        method = self.method.state_dict()
        method["modules"] = checkpoint.changed_state(self.method.modules, self.run.pristine)
        self.checkpoint_bytes = checkpoint.save(self.checkpoint_path, {
            "method": method,
            "loop": {
                "position": dict(self.position),
                "epoch_indices": torch.from_numpy(self.epoch_indices),
                "class_il": self.cil.rows, "task_il": self.til.rows,
                "seen_classes_curve": self.seen_curve.points,
                "per_task": self.per_task,
                "samples_observed": self.samples_observed,
                "samples_processed": self.samples_processed,
                "task_start": self.task_start,
                "elapsed": self.elapsed(),
            },
            "meter": self.meter.state_dict(),
            "callbacks": {c.key: c.state_dict() for c in self.callbacks if c.key},
            "torch_rng": torch.get_rng_state(),
        }, self.run.frozen_sha256)

    def restore(self) -> None:
        """Continue from the checkpoint. The method gets ``begin_task`` of the task it was
        saved in (the structures of that task), then its saved state on top."""
        state = checkpoint.load(self.checkpoint_path, self.run.frozen_sha256, self.run.device)
        method = state["method"]
        if method["task_index"] >= 0:
            self.method.begin_task(self.run.task_info(method["task_index"]))
        method["modules"] = checkpoint.with_unchanged(self.method.modules, method["modules"])
        self.method.load_state_dict(method)
        loop = state["loop"]
        self.position = loop["position"]
        self.epoch_indices = loop["epoch_indices"].numpy()
        self.cil.rows, self.til.rows = loop["class_il"], loop["task_il"]
        self.seen_curve.points = loop["seen_classes_curve"]
        self.per_task = loop["per_task"]
        self.samples_observed = loop["samples_observed"]
        self.samples_processed = loop["samples_processed"]
        self.task_start = loop["task_start"]
        self.elapsed_before = loop["elapsed"]
        self.meter.load_state_dict(state["meter"])
        for callback in self.callbacks:
            if callback.key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.key])
        torch.set_rng_state(state["torch_rng"].cpu())

    # -- training --
    def train_task(self, t: int) -> None:
        """Epochs of task t from the current position (fresh, or restored mid-task)."""
        task = self.run.task_info(t)
        if self.position["step"] == 0:
            self.method.begin_task(task)
            # methods may grow parameters per task: keep them out of activation memory
            self.meter.watch_parameters([self.method.modules, self.run.backbone])
            self.task_start = self.counters()
            self._call("on_task_start", task)
        for epoch in range(self.position["epoch"], self.run.train_cfg.epochs):
            if self.position["step"] >= task.n_steps:
                break
            if self.position["batch"] == 0:  # a method may drop examples (SparCL's DDR)
                self.epoch_indices = np.asarray(
                    self.method.begin_epoch(task, epoch, self.run.task_train[t]), dtype=np.int64)
            self.train_epoch(task, epoch)
            self.position = {**self.position, "epoch": epoch + 1, "batch": 0}
        self.method.end_task(task)
        start, done = self.task_start, self.counters()
        self.per_task.append({
            "task": t,
            "train_steps": self.position["step"],
            "train_samples": done["samples"] - start["samples"],
            "train_flops": done["flops"] - start["flops"],
            "train_time_s": done["time_s"] - start["time_s"],
        })
        self._call("on_task_end", task)

    def train_epoch(self, task: TaskInfo, epoch: int) -> None:
        run = self.run
        batches = iterate_batches(
            run.scenario.train, self.epoch_indices, run.train_cfg.batch_size,
            transform=run.train_tf, shuffle=True, seed=epoch_seed(run.cfg.seed, task.index, epoch),
            start_batch=self.position["batch"],
        )
        try:
            while self.position["step"] < task.n_steps:
                with self.meter.phase("data"):
                    item = next(batches, None)
                    if item is None:
                        break
                    batch = self.to_batch(*item, task.index, epoch)
                stats = self.step(batch)
                p = self.position
                self.position = {**p, "step": p["step"] + 1, "batch": p["batch"] + 1}
                self._call("on_step", batch, stats)
        finally:
            batches.close()

    def to_batch(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, t: int,
                 epoch: int) -> Batch:
        raw = torch.from_numpy(self.run.scenario.train.images[idx.numpy()])
        device = self.run.device
        return Batch(x.to(device), y.to(device), raw, idx, t, epoch)

    def step(self, batch: Batch) -> StepStats:
        with self.step_peak.probe(self, batch), self.meter.training_step(), \
                autocast(self.run.precision, self.run.device):
            stats = self.method.observe(batch)
        self.samples_observed += len(batch.y)
        self.samples_processed += stats.n_samples
        return stats

    # -- evaluation --
    def evaluate_task(self, t: int) -> None:
        """Evaluate after task t as ``cfg.eval`` asks (per_task: every task)."""
        run, record = self.run, self.per_task[-1]
        before = self.meter.seconds["eval"]
        args = (self.method, run.scenario, t, run.eval_tf, run.train_cfg.eval_batch_size,
                self.meter, run.device, run.cfg.eval.class_il_logits)
        if run.cfg.eval.protocol == "seen_classes":
            if not run.cfg.eval.due(t, run.n_tasks):
                return
            with autocast(run.eval_precision, run.device):
                n_seen, n_test, acc = evaluate_seen_classes(*args)
            self.seen_curve.add_point(t, n_seen, n_test, acc)
            record["class_il_seen_classes"] = acc
        else:
            with autocast(run.eval_precision, run.device):
                cil, til = evaluate(*args)
            self.cil.add_row(cil)
            self.til.add_row(til)
            record["class_il_average"] = self.cil.final_average()
        record["eval_time_s"] = self.meter.seconds["eval"] - before
        self._call("on_evaluate", t)

    def train(self, resume: bool = False) -> float | None:
        """Train (or continue) through every task; returns NVML joules when measured."""
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.restore()
        self.wall_start = time.perf_counter()
        nvml = NvmlEnergy(self.run.device)
        self._call("on_train_start")
        with self.meter.active():
            for t in range(self.position["task"], self.run.n_tasks):
                self.train_task(t)
                self.evaluate_task(t)
                self.position = {**START, "task": t + 1}
                self.save_checkpoint()
        return nvml.joules()

    def steps_done(self) -> int:
        return sum(self.run.task_steps[: self.position["task"]]) + self.position["step"]
