"""The results of a finished loop, as the typed :class:`edgecl.schema.RunResults`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgecl import __version__
from edgecl.metrics.cost import peak_rss_bytes
from edgecl.metrics.devices import PROFILES, host_estimate, step_dram_bytes
from edgecl.runner.build import environment
from edgecl.runner.loop import TrainingLoop
from edgecl.schema import RunResults

ENERGY_NOTE = (
    "estimates, not measurements: device profiles use executed FLOPs and a DRAM-traffic model "
    "(edgecl.metrics.devices); 'host' uses measured wall time and an assumed power; 'measured' "
    "is NVML GPU energy when available")


def memory_results(loop: TrainingLoop) -> dict[str, Any]:
    saved = loop.meter.saved_bytes_per_step or [0]
    device = loop.run.device
    return {
        "peak_saved_for_backward_bytes": max(saved),
        "mean_saved_for_backward_bytes": float(np.mean(saved)),
        **loop.memory.peaks,
        "training_footprint_bytes": loop.memory.largest_step,
        "training_footprint_mean_bytes": loop.memory.mean_footprint(),
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_max_allocated_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None),
        **loop.step_peak.results(),
    }


def flops_results(loop: TrainingLoop) -> dict[str, Any]:
    train = loop.meter.train_flops()
    stream = sum(len(task.train_indices) for task in loop.run.scenario.tasks)
    sparse = loop.method.extra_results().get("sparse_flops")
    return {
        "train": train,
        "eval": loop.meter.flops["eval"],
        "per_sample": {"samples": stream, "train_flops": train["total"] / stream if stream else 0},
        "samples_observed": loop.samples_observed,
        "samples_processed": loop.samples_processed,
        "sparse": sparse,
        "by_dtype": dict(loop.meter.flops_by_dtype),
        "precision": {"train": loop.run.precision, "eval": loop.run.eval_precision},
    }


def energy_results(loop: TrainingLoop, flops: dict[str, Any], memory: dict[str, Any],
                   measured: float | None) -> dict[str, Any]:
    steps = sum(loop.run.task_steps)
    peaks = loop.memory.peaks
    train_bytes = steps * step_dram_bytes(
        memory["mean_saved_for_backward_bytes"], peaks["parameter_bytes"],
        peaks["gradient_bytes"], peaks["optimizer_state_bytes"])
    train_flops = flops["train"]["total"]
    times = loop.meter.time_summary(0)
    estimates = {"host": host_estimate(
        times["train_total"], times["train_total"] + times["eval"], torch.get_num_threads())}
    for name in loop.run.cfg.cost.device_profiles:
        prof = PROFILES[name]
        run_precision = loop.run.precision
        train = prof.estimate(train_flops, train_bytes, run_precision)
        total = prof.estimate(train_flops + flops["eval"], train_bytes, run_precision)
        estimates[name] = {
            "train_joules": train["joules"], "total_joules": total["joules"],
            "train_compute_seconds": train["compute_seconds"], "profile": prof.as_dict(),
            "precision": prof.rate_precision(run_precision),
        }
    return {"estimates": estimates, "measured": measured, "note": ENERGY_NOTE}


def accuracy_results(loop: TrainingLoop) -> dict[str, Any]:
    logits = loop.run.cfg.eval.class_il_logits
    if loop.run.cfg.eval.protocol == "seen_classes":
        return {"protocol": "seen_classes", "class_il": loop.seen_curve.summary(),
                "task_il": None, "seen_classes_curve": loop.seen_curve.points,
                "class_il_logits": logits}
    return {"protocol": "per_task", "class_il": loop.cil.summary(),
            "task_il": loop.til.summary(), "class_il_logits": logits}


def config_record(loop: TrainingLoop) -> dict[str, Any]:
    """The resolved config of this method: shared blocks merged with its own overrides."""
    cfg, spec = loop.run.cfg, loop.run.spec
    return {
        **cfg.model_dump(mode="json", exclude={"methods"}),
        "method": spec.model_dump(mode="json"),
        "method_params": loop.method.params.model_dump(mode="json"),
        "train": loop.run.train_cfg.model_dump(mode="json"),
        "optim": spec.optim_config(cfg.optim).model_dump(mode="json"),
    }


def run_results(loop: TrainingLoop, measured_joules: float | None) -> RunResults:
    run = loop.run
    tasks = run.scenario.tasks
    flops, memory = flops_results(loop), memory_results(loop)
    extra = {k: v for k, v in loop.method.extra_results().items() if k != "sparse_flops"}
    return RunResults.model_validate({
        "edgecl_version": __version__,
        "run_name": run.spec.run_name,
        "method": run.spec.name,
        "config": config_record(loop),
        "environment": environment(run.device),
        "scenario": {
            "dataset": run.cfg.data.dataset,
            "n_tasks": len(tasks),
            "class_order": [int(c) for c in run.scenario.class_order],
            "classes_per_task": [len(t.classes) for t in tasks],
            "train_samples_per_task": [len(ix) for ix in run.task_train],
            "test_samples_per_task": [len(t.test_indices) for t in tasks],
        },
        "accuracy": accuracy_results(loop),
        "cost": {
            "flops": flops,
            "memory": memory,
            "time_s": loop.meter.time_summary(loop.elapsed()),
            "energy": energy_results(loop, flops, memory, measured_joules),
        },
        "per_task": loop.per_task,
        "extra": extra,
    })
