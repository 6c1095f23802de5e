"""The runner: a config in, trained methods and their results out.

- :mod:`~edgecl.runner.build`: a run from a config (device, backbone, scenario, method);
- :mod:`~edgecl.runner.loop`: the training loop, the only one in edgecl;
- :mod:`~edgecl.runner.callbacks`: hooks at task start, each step, task end, evaluation;
- :mod:`~edgecl.runner.checkpoint`: small, safe checkpoints;
- :mod:`~edgecl.runner.evaluation`: class-IL / task-IL accuracy after a task;
- :mod:`~edgecl.runner.results`: the typed results of a loop;
- :mod:`~edgecl.runner.comparison`: every method of a config, one after another.
"""

from edgecl.runner.build import (
    MethodSetup,
    build_backbone,
    build_scenario,
    setup_method,
    steps_in_task,
    train_indices,
)
from edgecl.runner.callbacks import Callback, MemorySampler
from edgecl.runner.comparison import CHECKPOINT_NAME, run
from edgecl.runner.evaluation import evaluate, evaluate_seen_classes, seen_class_count
from edgecl.runner.loop import TrainingLoop
from edgecl.runner.results import run_results

__all__ = [
    "CHECKPOINT_NAME",
    "Callback",
    "MemorySampler",
    "MethodSetup",
    "TrainingLoop",
    "build_backbone",
    "build_scenario",
    "evaluate",
    "evaluate_seen_classes",
    "run",
    "run_results",
    "seen_class_count",
    "setup_method",
    "steps_in_task",
    "train_indices",
]
