"""Measuring one method of a config on this host: what a training step costs, at a few batch
sizes.

The run is built exactly as ``edgecl run`` builds it (the config's real scenario and
backbone, :func:`~edgecl.runner.build.setup_method`) and trained through the real
:class:`~edgecl.runner.loop.TrainingLoop` under the :class:`~edgecl.metrics.cost.CostMeter`:
a few steps of task 0 put the method in its steady state (replay buffers, masks, CWR*
statistics filled; the optimizer state exists), then the steps of task 1 are measured. Per
batch size that gives the executed training FLOPs per step, the peak step's
saved-for-backward bytes, the samples through the model per step (replay included), the wall
seconds per step (median after a warm-up), the method's memory breakdown and the process's
resident-set high-water marks over those steps and over the task's end (its consolidation).

The RSS figures come from ``/proc/self/status`` (``VmRSS``, ``VmHWM``); the high-water mark is
reset before each batch size by writing ``5`` to ``/proc/self/clear_refs``. Where either is
unavailable the peak falls back to ``getrusage``'s ``ru_maxrss`` (the whole process so far).

:func:`calibrate` measures each batch size in a fresh process (``python -m edgecl.planner``),
as a real run starts; the benchmark measures its real runs the same way.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from edgecl.backbones.registry import Backbone
from edgecl.config import MethodSpec, RunConfig
from edgecl.data.scenarios import Scenario
from edgecl.errors import ConfigError, EdgeclError
from edgecl.methods.base import Batch, StepStats
from edgecl.planner.proc import ForeignLoad, hwm_bytes, reset_hwm, rss_bytes
from edgecl.runner.build import build_backbone, build_scenario, setup_method
from edgecl.runner.loop import START, TrainingLoop

# Method parameters the planner treats as knobs (see edgecl.planner.fit).
BUFFER_KNOBS = ("buffer_size", "rm_sz", "importance_samples")
DEPTH_KNOBS = ("freeze_until", "split_layer")
PRECISION_KNOBS = ("storage",)


# ---- the figures ------------------------------------------------------------------------------
@dataclass
class StepFigures:
    """One batch size's measured steps (task 1, after the warm-up)."""

    batch_size: int  # as asked for
    new_samples: float  # mean new samples per step (fewer when the task has fewer)
    flops: float  # mean executed training FLOPs per step
    saved_bytes: int  # the largest step's saved-for-backward bytes
    samples: float  # mean samples through the model per step (replayed ones included)
    seconds: float  # median wall seconds per step
    step_seconds: list[float]
    cpu_seconds: float  # median process CPU seconds per step (every thread)
    foreign_cores: float  # cores other processes kept busy meanwhile (0 on an idle host)
    peak_rss_bytes: int  # resident-set high-water mark over the training steps
    task_end_peak_bytes: int  # high-water mark during the measured task's end_task
    consolidated: int  # samples the method consolidated at that task end (see there)
    parameter_bytes: int
    trainable_parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    buffer_bytes: int  # method buffers at their largest during the run

    @property
    def state_bytes(self) -> int:
        """What training adds and keeps: gradients, optimizer state, buffers."""
        return self.gradient_bytes + self.optimizer_state_bytes + self.buffer_bytes


@dataclass
class Profile:
    """A method of a config, measured at a few batch sizes on this host."""

    label: str
    method: str
    backbone: str
    threads: int
    setup_rss_bytes: int  # resident set once the run is set up, before its first step
    setup_peak_bytes: int  # high-water mark up to then (data decoding, weight loading)
    setup_buffer_bytes: int  # method buffers already allocated by then
    steps: list[StepFigures]  # by ascending batch size
    knobs: dict[str, Any] = field(default_factory=dict)  # resolved knob values
    consolidated: int = 0  # samples consolidated at a task end in a real run of the config
    matmul_flops_per_s: float = 0.0  # this host's fp32 matmul rate (an upper bound on R)
    hwm_reset: bool = True  # False: per-batch peaks are process-wide (getrusage)
    ru_maxrss_bytes: int = 0  # the whole process's peak (filled in a fresh process)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        steps = [StepFigures(**s) for s in data["steps"]]
        return cls(**{**data, "steps": steps})


# ---- the driver -------------------------------------------------------------------------------
class _TimedLoop(TrainingLoop):
    """The training loop, with each step's wall time, FLOPs, saved bytes and samples kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[tuple[float, int, int, int, float, int]] = []

    def step(self, batch: Batch) -> StepStats:
        flops = self.meter.train_flops()["total"]
        start, cpu = time.perf_counter(), time.process_time()
        stats = super().step(batch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        self.records.append((seconds, self.meter.train_flops()["total"] - flops,
                             self.meter.saved_bytes_per_step[-1], stats.n_samples, cpu,
                             len(batch.y)))
        return stats


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """This host's fp32 matmul rate: the median of ``repeats`` n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def select_method(cfg: RunConfig, method: str | None) -> MethodSpec:
    """The method labelled (or named) ``method``; the config's first when None."""
    if method is None:
        return cfg.methods[0]
    for spec in cfg.methods:
        if method in (spec.run_name, spec.name):
            return spec
    labels = ", ".join(s.run_name for s in cfg.methods)
    raise ConfigError(f"no method {method!r} in the config; its methods are {labels}")


def with_batch(spec: MethodSpec, batch_size: int, steps: int,
               params: dict[str, Any] | None = None) -> MethodSpec:
    """``spec`` at ``batch_size``, ``steps`` steps per task, ``params`` replaced."""
    train = {**(spec.train or {}), "batch_size": batch_size, "max_steps_per_task": steps}
    return MethodSpec.model_validate({**spec.model_dump(), **(params or {}), "train": train})


def resolved_knobs(cfg: RunConfig, spec: MethodSpec, method: Any) -> dict[str, Any]:
    """The knob values of this run: batch size, buffer capacity, frozen depth, precision."""
    params = spec.method_params()
    knobs: dict[str, Any] = {"batch_size": spec.train_config(cfg.train).batch_size}
    for name in BUFFER_KNOBS + PRECISION_KNOBS:
        if name in type(params).model_fields:
            knobs[name] = getattr(params, name)
    frozen = getattr(method, "frozen", None)
    for name in DEPTH_KNOBS:
        if name in type(params).model_fields and frozen is not None:
            knobs[name], knobs["n_layers"] = frozen.k, frozen.n_layers
    return knobs


def calibration_batches(batch_size: int) -> tuple[int, ...]:
    """Small batch sizes to calibrate a run of ``batch_size`` at: 2, half the batch (at least
    4, at most 16) and the halfway point between when there is one ((1, 2) for batches of 1
    or 2). The largest is kept near the target, and three points are fitted where the batch
    allows: at tiny batches the resident set's growth is mostly allocator noise and the
    host's FLOP rate is lowest (small kernels); on ViT-Ti a line through batches 2 and 4
    missed the peak RSS at 16 by up to 10 %, and on ResNet-18 one through 2 and 8 missed the
    step time at 32 by 8 %."""
    if batch_size <= 2:
        return (1, 2)
    top = min(16, max(4, batch_size // 2))
    return (2, top // 2, top) if top // 2 > 2 else (2, top)


def fill_steps(spec: MethodSpec, scenario: Scenario, batch_size: int, measured: int) -> int:
    """Task-0 steps before the measured ones. Two put every method in its steady state (ER's
    buffer holds a batch to replay, LightCL has its masks); latent replay's sequential replay
    needs enough latents for every measured step: ``measured x replayed per new sample``."""
    from edgecl.methods.latent_replay import LatentReplayParams, mixing_sizes, replay_count

    p, steps = spec.method_params(), 2
    if isinstance(p, LatentReplayParams) and len(scenario.tasks) > 1:
        cur, inject, _ = mixing_sizes(len(scenario.tasks[1].train_indices), p.rm_sz, p.mb_size)
        per_step = p.replay_per_step or replay_count(batch_size, cur, inject)
        steps = max(steps, math.ceil(measured * per_step / batch_size) + 1)
    return steps


def consolidated_samples(spec: MethodSpec, seen: int, task_index: int = 1) -> int:
    """Samples a method processes in one go at a task's end, after seeing ``seen`` of its
    samples: LightCL's importance pass over its stash (at most ``importance_samples``), latent
    replay's pending latents (``h = min(rm_sz // (t+1), seen)``); none for the others (their
    task-end work, if any, does not grow with the task)."""
    from edgecl.methods.latent_replay import LatentReplayParams, replacement_count
    from edgecl.methods.lightcl import LightCLParams

    p = spec.method_params()
    if isinstance(p, LightCLParams):
        return min(p.importance_samples, seen)
    if isinstance(p, LatentReplayParams):
        return replacement_count(p.rm_sz, task_index, seen)
    return 0


class Calibrator:
    """Measures methods of one config; the scenario and backbone are built once."""

    def __init__(self, cfg: RunConfig) -> None:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.scenario: Scenario = build_scenario(cfg)
        self.bundle: Backbone = build_backbone(cfg)
        self.loaded_peak = hwm_bytes()  # data decoding and weight loading included
        self._matmul = 0.0

    @property
    def matmul_rate(self) -> float:
        if not self._matmul:
            self._matmul = matmul_flops_per_s()
        return self._matmul

    def profile(self, spec: MethodSpec, batch_sizes: tuple[int, ...] | None = None, *,
                warmup: int = 1, steps: int = 6, fill: int | None = None,
                params: dict[str, Any] | None = None, timed: bool = True,
                split_peaks: bool = True) -> Profile:
        """Measure ``spec`` (with ``params`` replaced) at each batch size, smallest first
        (default :func:`calibration_batches` of its batch size); ``warmup`` + ``steps`` steps
        of task 1 after ``fill`` steps of task 0 (default :func:`fill_steps`). ``timed``:
        also measure the host's matmul rate (once per calibrator). ``split_peaks=False``: never
        reset the high-water mark (it also resets ``ru_maxrss``), so the process's own peak
        stays whole, as the benchmark's measured runs need it."""
        if batch_sizes is None:
            batch_sizes = calibration_batches(spec.train_config(self.cfg.train).batch_size)
        figures: list[StepFigures] = []
        first: dict[str, Any] = {}
        reset_ok = True
        for b in sorted(set(batch_sizes)):
            gc.collect()
            reset_ok = (reset_hwm() if split_peaks else False) and reset_ok
            run_spec = with_batch(spec, b, warmup + steps, params)
            n_fill = fill_steps(run_spec, self.scenario, b, warmup + steps) if fill is None \
                else fill
            # max_steps_per_task bounds both tasks: task 0 is cut to n_fill, task 1 to the rest
            run_spec = with_batch(spec, b, max(n_fill, warmup + steps), params)
            setup = setup_method(self.cfg, run_spec, self.scenario, self.bundle,
                                 torch.device("cpu"))
            if not first:
                task = min(1, setup.n_tasks - 1)
                first = {"setup_rss_bytes": rss_bytes(),
                         "consolidated": consolidated_samples(
                             run_spec, len(setup.task_train[task]), task),
                         "setup_peak_bytes": max(self.loaded_peak, hwm_bytes()),
                         "setup_buffer_bytes": setup.method.buffer_bytes(),
                         "knobs": resolved_knobs(self.cfg, run_spec, setup.method)}
                first["knobs"]["batch_size"] = spec.train_config(self.cfg.train).batch_size
            figures.append(self._train(setup, b, n_fill, warmup + steps, warmup, split_peaks))
            del setup
        return Profile(label=spec.run_name, method=spec.name, backbone=self.cfg.backbone.name,
                       threads=torch.get_num_threads(), steps=figures, hwm_reset=reset_ok,
                       matmul_flops_per_s=self.matmul_rate if timed else 0.0, **first)

    def _train(self, setup: Any, batch_size: int, fill: int, measured: int, warmup: int,
               split_peaks: bool) -> StepFigures:
        multi_task = setup.n_tasks > 1
        if multi_task:
            setup.task_steps[0] = max(1, min(setup.task_steps[0], fill))
            setup.task_steps[1] = min(setup.task_steps[1], measured)
        loop = _TimedLoop(setup)
        marks = _mark_task_ends(setup.method, split_peaks)
        with setup.meter.active():
            loop.train_task(0)
            load = ForeignLoad()
            if multi_task:
                loop.records.clear()
                loop.position = {**START, "task": 1}
                loop.train_task(1)
        foreign = load.cores()
        seen = sum(r[5] for r in loop.records)
        records = loop.records[warmup:] or loop.records
        if not records:
            raise ConfigError(f"{setup.spec.run_name}: no training step at batch {batch_size}")
        seconds = [r[0] for r in records]
        peaks = loop.memory.peaks
        return StepFigures(
            batch_size=batch_size, new_samples=statistics.fmean(r[5] for r in records),
            flops=statistics.fmean(r[1] for r in records),
            saved_bytes=max(r[2] for r in records),
            samples=statistics.fmean(r[3] for r in records),
            seconds=statistics.median(seconds), step_seconds=seconds,
            cpu_seconds=statistics.median(r[4] for r in records), foreign_cores=foreign,
            peak_rss_bytes=marks["steps"], task_end_peak_bytes=marks["end"],
            consolidated=consolidated_samples(setup.spec, seen, min(1, setup.n_tasks - 1)),
            parameter_bytes=peaks["parameter_bytes"],
            trainable_parameter_bytes=peaks["trainable_parameter_bytes"],
            gradient_bytes=peaks["gradient_bytes"],
            optimizer_state_bytes=peaks["optimizer_state_bytes"],
            buffer_bytes=peaks["buffer_bytes"],
        )


def _mark_task_ends(method: Any, split: bool) -> dict[str, int]:
    """Split the high-water mark into the training steps' and the last task end's: a task's
    end (LightCL's importance pass, latent replay's buffer update) can peak higher than any
    step, and grows with the task rather than the batch. ``split=False``: no resets (each
    mark is then the process's peak so far)."""
    marks = {"steps": 0, "end": 0}
    original = method.end_task

    def end_task(task: Any) -> None:
        marks["steps"] = max(marks["steps"], hwm_bytes())
        if split:
            reset_hwm()
        original(task)
        marks["end"] = hwm_bytes()
        if split:
            reset_hwm()

    method.end_task = end_task  # this run's method only
    return marks


def calibrate(cfg: RunConfig, method: str | None = None,
              batch_sizes: tuple[int, ...] | None = None, *, warmup: int = 1, steps: int = 6,
              fresh: bool = True, split_peaks: bool = True) -> Profile:
    """Measure one method of ``cfg`` (see the module docstring). ``fresh``: each batch size in
    its own new process, started as a real run starts; in one process the memory kept from a
    smaller batch inflates the next one's high-water mark (by 76 MiB at batch 8 after 2 and 4
    for ViT-Ti LightCL), which a line through the points then extrapolates."""
    spec = select_method(cfg, method)
    if batch_sizes is None:
        batch_sizes = calibration_batches(spec.train_config(cfg.train).batch_size)
    if not fresh:
        return Calibrator(cfg).profile(spec, batch_sizes, warmup=warmup, steps=steps,
                                       split_peaks=split_peaks)
    parts = [Profile.from_dict(run_request({
        "op": "profile", "config": cfg.model_dump(mode="json"), "method": spec.run_name,
        "batch_sizes": [b], "warmup": warmup, "steps": steps}))
        for b in sorted(set(batch_sizes))]
    first = parts[0]
    return Profile(
        label=first.label, method=first.method, backbone=first.backbone,
        threads=first.threads,
        setup_rss_bytes=int(statistics.median(p.setup_rss_bytes for p in parts)),
        setup_peak_bytes=max(p.setup_peak_bytes for p in parts),
        setup_buffer_bytes=first.setup_buffer_bytes, steps=[p.steps[0] for p in parts],
        knobs=first.knobs, consolidated=first.consolidated, matmul_flops_per_s=statistics.median(
            p.matmul_flops_per_s for p in parts),
        hwm_reset=all(p.hwm_reset for p in parts))


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    """``python -m edgecl.planner`` on ``request``: its one-line JSON answer."""
    proc = subprocess.run([sys.executable, "-m", "edgecl.planner"], input=json.dumps(request),
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeclError(f"planner subprocess failed: {tail}")
    out = json.loads(lines[-1])
    if "error" in out:
        raise ConfigError(out["error"])
    return out
