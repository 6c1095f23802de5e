"""One method's training step, measured outside the runner (for per-step cost benchmarks).

:func:`setup_method` builds a registered method over a given backbone, as the runner would
(its own cost meter, parameters watched); :func:`measure_step` runs one ``observe`` inside
the meter's training-step hooks, as the runner's loop does, and returns its wall time, phase
times, FLOPs, saved-for-backward bytes, the accounting footprint and, when asked, the
allocator-measured peak (:class:`~edgecl.metrics.step_peak.AllocatorPeak`, with the same
resident bytes as the runner's probe).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, Method, OptimConfig, TaskInfo
from edgecl.metrics.cost import CostMeter
from edgecl.metrics.step_peak import AllocatorPeak
from edgecl.runner.callbacks import STATE_FIELDS
from edgecl.runner.step_peak import resident_bytes


@dataclass
class StepCost:
    seconds: float
    phase_seconds: dict[str, float]
    flops: dict[str, int]
    saved_bytes: int
    accounting_bytes: int  # saved-for-backward + parameters, gradients, optimizer, buffers
    resident_bytes: int  # alive when the step began (the probe's base)
    peak_bytes: int | None  # allocator-measured, only for probed steps
    extra: dict[str, float] = field(default_factory=dict)


def setup_method(name: str, params: dict[str, Any], backbone: nn.Module, optim: OptimConfig,
                 *, n_tasks: int, classes_per_task: int, steps_per_task: int,
                 input_size: int = 224, seed: int = 0) -> Method:
    """``name`` set up over ``backbone`` and started on task 0."""
    cls = method_class(name)
    method = cls(cls.Params(**params), optim)
    classes = torch.arange(n_tasks * classes_per_task).view(n_tasks, classes_per_task)
    info = BenchmarkInfo(
        num_classes=n_tasks * classes_per_task, n_tasks=n_tasks, task_classes=list(classes),
        train_transform=None, device=torch.device("cpu"), meter=CostMeter(), seed=seed,
        steps_per_task=[steps_per_task] * n_tasks, input_size=input_size,
    )
    method.setup(backbone, info)
    method.meter.watch_parameters([method.modules, backbone])
    method.begin_task(TaskInfo(0, classes[0], steps_per_task * 16, steps_per_task))
    return method


def random_batch(size: int, input_size: int, classes: int, seed: int) -> Batch:
    """A batch of normalised noise images (per-step costs do not depend on pixel values)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (size, input_size, input_size, 3), dtype=torch.uint8,
                        generator=g)
    x = raw.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.randint(0, classes, (size,), generator=g)
    return Batch(x, y, raw, torch.arange(size) + size * seed, 0, 0)


def measure_step(method: Method, batch: Batch, probe_peak: bool = False) -> StepCost:
    meter = method.meter
    flops0, secs0 = dict(meter.flops), dict(meter.seconds)
    resident = resident_bytes(method, batch)
    probe = AllocatorPeak(method.device, resident) if probe_peak else contextlib.nullcontext()
    with meter.active(), probe as reading, meter.training_step():
        start = time.perf_counter()
        stats = method.observe(batch)
        seconds = time.perf_counter() - start
    state = method.memory_breakdown()
    saved = meter.saved_bytes_per_step[-1]
    return StepCost(
        seconds=seconds,
        phase_seconds={k: v - secs0.get(k, 0.0) for k, v in meter.seconds.items()
                       if v - secs0.get(k, 0.0) > 0},
        flops={k: v - flops0.get(k, 0) for k, v in meter.flops.items()
               if v - flops0.get(k, 0) > 0},
        saved_bytes=saved,
        accounting_bytes=saved + sum(int(state.get(k, 0)) for k in STATE_FIELDS),
        resident_bytes=resident,
        peak_bytes=reading.peak_bytes if probe_peak else None,
        extra=dict(stats.extra),
    )
