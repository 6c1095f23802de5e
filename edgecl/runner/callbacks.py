"""Callbacks: how code outside the loop observes or extends it, without patching it.

The loop calls every callback when training starts (after a resume has restored its
state), when a task starts (after ``begin_task``), when a training step ends, when a task
ends (after ``end_task``, with its per-task record written), and when an evaluation ends.
A callback with state returns it from ``state_dict`` so a resumed run continues it; its
``key`` names that state in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgecl.methods.base import Batch, StepStats, TaskInfo

if TYPE_CHECKING:
    from edgecl.runner.loop import TrainingLoop

STATE_FIELDS = ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes", "buffer_bytes")
MEMORY_FIELDS = ("trainable_parameter_bytes", *STATE_FIELDS)


class Callback:
    """Base class: every hook is optional."""

    key = ""  # a unique name, needed only by callbacks with state

    def on_train_start(self, loop: TrainingLoop) -> None:
        pass

    def on_task_start(self, loop: TrainingLoop, task: TaskInfo) -> None:
        pass

    def on_step(self, loop: TrainingLoop, batch: Batch, stats: StepStats) -> None:
        pass

    def on_task_end(self, loop: TrainingLoop, task: TaskInfo) -> None:
        pass

    def on_evaluate(self, loop: TrainingLoop, t: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MemorySampler(Callback):
    """The method's memory after every step, and the largest step.

    A step's footprint is what training holds at once: the activations autograd saved in
    that step plus parameters, gradients, optimizer state and the method's buffers as they
    are right after it. Buffers that come and go within a task (a feature cache, pending
    latents) are therefore caught at their largest, without the method tracking peaks.
    """

    key = "memory"

    def __init__(self) -> None:
        self.peaks = dict.fromkeys(MEMORY_FIELDS, 0)
        self.largest_step = 0
        self.footprint_sum = 0
        self.steps = 0

    def sample(self, loop: TrainingLoop, saved: int) -> None:
        now = loop.method.memory_breakdown()
        for name in MEMORY_FIELDS:
            self.peaks[name] = max(self.peaks[name], int(now.get(name, 0)))
        footprint = saved + sum(int(now.get(name, 0)) for name in STATE_FIELDS)
        self.largest_step = max(self.largest_step, footprint)
        if saved:
            self.footprint_sum += footprint
            self.steps += 1

    def on_step(self, loop: TrainingLoop, batch: Batch, stats: StepStats) -> None:
        self.sample(loop, loop.meter.saved_bytes_per_step[-1])

    def on_task_end(self, loop: TrainingLoop, task: TaskInfo) -> None:
        self.sample(loop, 0)  # consolidation may grow buffers after the last step

    def mean_footprint(self) -> float:
        return self.footprint_sum / self.steps if self.steps else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"peaks": dict(self.peaks), "largest_step": self.largest_step,
                "footprint_sum": self.footprint_sum, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peaks = dict(state["peaks"])
        self.largest_step = state["largest_step"]
        self.footprint_sum = state["footprint_sum"]
        self.steps = state["steps"]


class PeriodicCheckpoint(Callback):
    """A checkpoint every ``every`` training steps of a task (besides the one at task ends)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, loop: TrainingLoop, batch: Batch, stats: StepStats) -> None:
        if loop.position["step"] % self.every == 0:
            loop.save_checkpoint()


class Progress(Callback):
    """Feeds a progress function ``(description, steps advanced)``."""

    def __init__(self, report: Callable[[str, int], None], name: str) -> None:
        self.report = report
        self.name = name

    def on_train_start(self, loop: TrainingLoop) -> None:
        self.report(self.name, loop.steps_done())  # a resumed run starts part way

    def on_step(self, loop: TrainingLoop, batch: Batch, stats: StepStats) -> None:
        self.report(f"{self.name}  task {batch.task_id + 1}/{len(loop.run.task_steps)}", 1)
