"""A whole comparison: every method of a config, one after another, in this process.

Each method trains on a fresh copy of the same pretrained backbone and the same data order,
so their costs compare as ratios. Each gets its own run directory with ``results.json``,
``checkpoint.pt`` and, on a NaN loss, ``failure.json``; a killed comparison continues with
``resume=True`` on the same directory and ends with the same metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml

from edgecl.config import MethodSpec, RunConfig
from edgecl.errors import NonFiniteLossError, ResultsError
from edgecl.io import atomic_write_text, write_json
from edgecl.runner.build import (
    build_backbone,
    build_scenario,
    resolve_device,
    run_dir_of,
    setup_method,
)
from edgecl.runner.callbacks import Callback, PeriodicCheckpoint, Progress
from edgecl.runner.checkpoint import weights_sha256
from edgecl.runner.loop import TrainingLoop
from edgecl.runner.results import run_results
from edgecl.schema import RunResults, load_results, save_results

CHECKPOINT_NAME = "checkpoint.pt"
ProgressFactory = Callable[[str, int], Callable[[str, int], None]]
CallbackFactory = Callable[[MethodSpec], Sequence[Callback]]


def load_completed(run_dir: Path) -> RunResults | None:
    try:
        return load_results(run_dir)
    except ResultsError:
        return None


def run(
    cfg: RunConfig, out_dir: Path, *, resume: bool = False,
    progress_factory: ProgressFactory | None = None, callbacks: CallbackFactory | None = None,
) -> list[RunResults]:
    """Run every method of ``cfg``; returns their results (also written to disk).

    ``callbacks(spec)`` gives extra callbacks for the loop of each method.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml",
                      yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    scenario = build_scenario(cfg)
    bundle = frozen_sha256 = None
    results = []
    for spec in cfg.methods:
        run_dir = run_dir_of(out_dir, spec)
        done = load_completed(run_dir) if resume else None
        if done is not None:
            results.append(done)
            continue
        if bundle is None:
            bundle = build_backbone(cfg)
            frozen_sha256 = weights_sha256(bundle.module)
        setup = setup_method(cfg, spec, scenario, bundle, device, frozen_sha256)
        extra: list[Callback] = []
        if progress_factory is not None:  # a step is reported before its checkpoint
            report = progress_factory(spec.run_name, sum(setup.task_steps))
            extra.append(Progress(report, spec.run_name))
        if setup.train_cfg.checkpoint_every_steps:
            extra.append(PeriodicCheckpoint(setup.train_cfg.checkpoint_every_steps))
        extra.extend(callbacks(spec) if callbacks else ())
        loop = TrainingLoop(setup, run_dir / CHECKPOINT_NAME, extra)
        try:
            joules = loop.train(resume=resume)
        except NonFiniteLossError as exc:
            write_json(run_dir / "failure.json", {"status": "failed", "error": str(exc),
                                                  "position": loop.position})
            raise
        res = run_results(loop, joules)
        save_results(run_dir, res)
        results.append(res)
    return results
