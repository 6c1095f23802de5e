"""One trial: one method, one seed, one value per axis, as an ordinary edgecl run directory.

:func:`run_trial` is the Ray Tune function trainable. It builds the trial's one-method run
config from the sweep's base tree, trains it through :func:`edgecl.runner.run` (resuming the
run directory's own checkpoint when Ray restarts a trial), writes the run's report and reports
the metrics to Tune. A trial that fails (a NaN loss, out of memory, a value the config rejects)
is recorded as failed with its one-line error, then raised so that Tune marks it errored.
"""

from __future__ import annotations

import copy
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgecl.config import RunConfig
from edgecl.config.files import apply_override
from edgecl.config.models import format_errors
from edgecl.errors import ConfigError, EdgeclError, ResultsError, one_line
from edgecl.io import atomic_write_text
from edgecl.schema import RunResults, load_results
from edgecl.sweep.metrics import read_metrics
from edgecl.sweep.records import (
    TRIALS_DIR,
    TrialRecord,
    append_event,
    mark_failed,
    read_record,
    trial_key,
    write_record,
)
from edgecl.sweep.space import Sweep

SWEEP_FILE = "sweep.yaml"  # the resolved sweep, in the sweep's output directory
TRACEBACK = "traceback.txt"  # beside trial.json, when a trial failed on an unexpected error


class TrialFailed(RuntimeError):
    """A trial's one-line failure, raised to Ray Tune (which marks the trial errored)."""


def trial_params(sweep: Sweep, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(label, axis values that apply to it) of a Tune config ``{cell, seed, sample}``."""
    label = config["cell"]["method"]
    params = dict(config["cell"]["grid"])
    for name, value in config.get("sample", {}).items():
        if sweep.axes[name].method in (None, label):
            params[name] = value
    return label, params


def trial_tree(sweep: Sweep, label: str, params: dict[str, Any], seed: int,
               threads: int | None) -> dict[str, Any]:
    """The trial's run config tree: the base, its one method, the seed and the axis values."""
    tree = copy.deepcopy(sweep.tree)
    tree["methods"] = [sweep.method_entry(label)]
    tree["seed"] = seed
    tree["name"] = f"{sweep.name}-{trial_key(label, seed, params)}"
    if threads is not None:
        tree["threads"] = threads
    for name, value in params.items():
        apply_override(tree, list(sweep.axes[name].path), copy.deepcopy(value))
    return tree


def validated(tree: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid trial config: {format_errors(exc, tree)}") from None


def assigned_threads() -> int | None:
    """Torch threads for this trial: the CPUs Ray assigned to it (at least one)."""
    import ray

    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return None if cpus is None else max(1, int(cpus))


def execute(sweep: Sweep, sweep_dir: Path, config: dict[str, Any],
            threads: int | None) -> tuple[TrialRecord, RunResults]:
    """Run (or reuse) one trial; its record and results. Raises :class:`TrialFailed`."""
    label, params = trial_params(sweep, config)
    seed = int(config["seed"])
    key = trial_key(label, seed, params)
    trial_dir = sweep_dir / TRIALS_DIR / key
    method = sweep.tree["methods"][sweep.labels.index(label)]["name"]
    record = TrialRecord(key=key, label=label, method=method, seed=seed, params=params,
                         status="running")
    done = _finished(trial_dir, label)
    if done is not None:
        append_event(trial_dir, "reused")
        return done
    write_record(trial_dir, record)
    append_event(trial_dir, "started")
    try:
        from edgecl.report import write_report
        from edgecl.runner import run

        cfg = validated(trial_tree(sweep, label, params, seed, threads))
        (result,) = run(cfg, trial_dir, resume=True)
        write_report(trial_dir / label)
    except Exception as exc:  # recorded, then raised to Tune: the sweep goes on
        message = one_line(exc)
        if not isinstance(exc, EdgeclError):  # not a user's cause: keep the traceback
            message = f"{type(exc).__name__}: {message}"
            atomic_write_text(trial_dir / TRACEBACK, traceback.format_exc())
        mark_failed(trial_dir, record, message)
        raise TrialFailed(message) from None
    completed = record.model_copy(update={"status": "completed"})
    write_record(trial_dir, completed)
    append_event(trial_dir, "completed")
    return completed, result


def _finished(trial_dir: Path, label: str) -> tuple[TrialRecord, RunResults] | None:
    """The trial's record and results when it already completed (a resumed sweep)."""
    try:
        record = read_record(trial_dir)
        if record.status != "completed":
            return None
        return record, load_results(trial_dir / label)
    except ResultsError:
        return None


def run_trial(config: dict[str, Any], sweep_dir: str) -> None:
    """The Ray Tune trainable: run the trial, report every metric of its results."""
    from ray import tune

    from edgecl.sweep.space import load_sweep

    root = Path(sweep_dir)
    sweep = load_sweep(root / SWEEP_FILE)
    record, result = execute(sweep, root, config, assigned_threads())
    metrics = {k: v for k, v in read_metrics(result).items() if v is not None}
    tune.report({**metrics, "trial_key": record.key})
