"""The learner under ``budget.memory_mib``: the planner picks batch size, buffer capacity,
frozen depth and latent precision so that the predicted peak RSS stays under the budget.

The planner calibrates the learner's method with a few real training steps on a data set
(``budget.calibration_data``) in a fresh process, then predicts the peak for *this* process:
its own resident set before training (store, backbone, the trainer's and predictor's copies,
the RAM tier and the decode queue at capacity) plus what training adds. The choice is cached
in ``plan.json`` in the state directory, keyed by the config and the budget, so a restart
trains with the same knobs (its checkpoint depends on them) without calibrating again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecl.config import RunConfig
from edgecl.config.models import MethodSpec
from edgecl.errors import BudgetError
from edgecl.io import write_json
from edgecl.learner.config import LearnerConfig

log = logging.getLogger("edgecl.learner")
PLAN_FILE = "plan.json"
CALIBRATION_TASKS = 10
CALIBRATION_STEPS = 7  # the planner's warm-up + measured steps of task 1
REQUEST_RESERVE_MIB = 64  # a request in flight: its body and decoded images


@dataclass(frozen=True)
class Choice:
    """The knobs the learner trains with, and what the planner predicted for them."""

    batch_size: int
    params: dict[str, Any]  # method parameters the planner changed
    predicted_peak_mib: float
    message: str

    def apply(self, cfg: LearnerConfig) -> LearnerConfig:
        if not self.params and self.batch_size == cfg.batch_size:
            return cfg
        spec = cfg.method
        method = MethodSpec(name=spec.name, label=spec.label, optim=spec.optim,
                            train=spec.train,
                            params=spec.params.model_copy(update=self.params))
        return cfg.model_copy(update={"batch_size": self.batch_size, "method": method})


def calibration_config(cfg: LearnerConfig) -> RunConfig:
    """A run config that trains the learner's method as the learner does (its backbone,
    optimizer and batch size) on ``budget.calibration_data``."""
    per_class = max(2, math.ceil(cfg.batch_size * CALIBRATION_STEPS / CALIBRATION_TASKS) + 1,
                    math.ceil(cfg.boundary.every_n / CALIBRATION_TASKS))
    return RunConfig.model_validate({
        "name": "learner-plan", "seed": cfg.seed, "threads": cfg.threads,
        "data": {"dataset": cfg.budget.calibration_data, "root": cfg.data_root,
                 "n_tasks": CALIBRATION_TASKS, "train_per_class": per_class,
                 "test_per_class": 1},
        "backbone": cfg.backbone.model_dump(),
        "train": {"batch_size": cfg.batch_size, "epochs": 1, "augment": False,
                  "recompute": cfg.recompute},
        "optim": cfg.optim.model_dump(),
        "methods": [cfg.method.model_dump(mode="json")],
    })


def plan_key(cfg: LearnerConfig) -> str:
    tree = {"config": calibration_config(cfg).model_dump(mode="json"),
            "budget": cfg.budget.memory_mib, "reserve": REQUEST_RESERVE_MIB}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def cached_choice(cfg: LearnerConfig, state_dir: Path) -> Choice | None:
    """The choice an earlier start made for this config and budget, if any."""
    cached = _read(state_dir / PLAN_FILE)
    if cached is None or cached.get("key") != plan_key(cfg):
        return None
    return Choice(cached["batch_size"], cached["params"], cached["predicted_peak_mib"],
                  cached["message"])


def choose(cfg: LearnerConfig, resident_mib: float, state_dir: Path) -> Choice:
    """The knobs under the budget for a learner whose resident set before training is
    ``resident_mib``, written to ``plan.json``; a :class:`BudgetError` that says what the
    smallest setting needs when nothing fits."""
    budget = cfg.budget.memory_mib
    assert budget is not None
    path, key = state_dir / PLAN_FILE, plan_key(cfg)
    import edgecl.planner as planner

    log.info("planning %s under %d MiB (a short calibration in a fresh process)",
             cfg.method.name, budget)
    result = planner.plan(calibration_config(cfg), planner.HOST, budget - REQUEST_RESERVE_MIB,
                          isolated=True, resident_mib=resident_mib)
    message = result.message()
    if result.fits:
        choice = Choice(cfg.batch_size, {}, result.prediction.peak_memory_bytes / 2**20,
                        message)
    elif result.suggestions:
        best = result.suggestions[0]
        params = {k: v for k, (_, v) in best.changes.items() if k != "batch_size"}
        choice = Choice(best.batch_size, params, best.peak_memory_mib, message)
        log.warning("budget %d MiB: training with %s", budget, best.describe())
    else:
        raise BudgetError(f"budget.memory_mib {budget} ({REQUEST_RESERVE_MIB} MiB of it kept "
                          f"for requests in flight) cannot hold this learner: {message}")
    write_json(path, {"key": key, "batch_size": choice.batch_size, "params": choice.params,
                      "predicted_peak_mib": choice.predicted_peak_mib,
                      "resident_mib": resident_mib, "message": choice.message})
    return choice


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or torn: plan again
    return data if isinstance(data, dict) else None
