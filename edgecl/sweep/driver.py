"""The sweep driver: the search space handed to Ray Tune, run, resumed and aggregated.

Ray starts locally (sized to this machine) unless ``address`` names a running cluster
(``ray start --head``). The sweep's output directory holds ``sweep.yaml`` (the resolved
sweep), ``tune/`` (Ray Tune's experiment state, what ``--resume`` restores), ``trials/`` (one
edgecl run directory per trial) and the aggregate ``sweep.json|md|html``.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from edgecl.errors import ConfigError, EdgeclError, one_line
from edgecl.io import atomic_write_text
from edgecl.sweep.records import TRIALS_DIR, mark_failed, read_record, trial_key
from edgecl.sweep.report import write_sweep_report
from edgecl.sweep.space import Sweep, load_sweep, sweep_from_tree
from edgecl.sweep.trial import SWEEP_FILE, run_trial, trial_params

TUNE_DIR = "tune"
PATH_FIELDS = (("data", "root"), ("data", "path"), ("backbone", "weights"))
# Ray Tune saves its experiment state at most every this many seconds (its default: 10 s and
# more); a sweep killed between two saves reruns Ray's record of the trials since the last one,
# and those find their finished run directories (nothing is trained twice).
STATE_PERIOD_S = "2"


class SweepError(EdgeclError, RuntimeError):
    """A sweep that cannot start or resume (the message says why)."""


def ray_modules() -> Any:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SweepError("edgecl sweep needs Ray Tune: pip install 'edgecl[sweep]'") from None
    return ray, tune


@contextlib.contextmanager
def connected(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Ray, joined at ``address`` or started locally with ``num_cpus`` (default: every CPU);
    an already initialized Ray (a caller's) is used as it is and left running."""
    ray, _ = ray_modules()
    if ray.is_initialized():
        yield
        return
    env = {k: v for k, v in os.environ.items() if k.startswith("EDGECL_")}
    options: dict[str, Any] = {"include_dashboard": False,
                               "runtime_env": {"env_vars": env} if env else None}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SweepError(one_line(f"cannot start or join {where}: {exc}")) from None
    try:
        yield
    finally:
        ray.shutdown()


def absolute_paths(tree: dict[str, Any], base: Path) -> dict[str, Any]:
    """``tree`` with its relative file paths made absolute (trials run elsewhere)."""
    tree = copy.deepcopy(tree)
    for section, key in PATH_FIELDS:
        value = (tree.get(section) or {}).get(key)
        if isinstance(value, str) and value != "random" and not Path(value).is_absolute():
            tree[section][key] = str((base / value).resolve())
    return tree


def param_space(sweep: Sweep) -> dict[str, Any]:
    """``{cell, seed, sample}``: grid cells × seeds × the sampled axes."""
    _, tune = ray_modules()
    spec = sweep.spec
    sample = {}
    for name, dist in spec.sample.axes.items():
        if dist.kind == "choice":
            sample[name] = tune.choice(dist.choice)
        else:
            low, high = dist.uniform or dist.loguniform
            sample[name] = (tune.uniform if dist.kind == "uniform" else tune.loguniform)(low, high)
    cells, seeds = sweep.cells(), sweep.seeds
    if spec.sample.search == "optuna":  # one cell and one seed (checked): constants
        return {"cell": cells[0], "seed": seeds[0], "sample": sample}
    return {"cell": tune.grid_search(cells), "seed": tune.grid_search(seeds), "sample": sample}


def trial_resources(sweep: Sweep) -> dict[str, float]:
    """What Ray reserves for each trial."""
    spec = sweep.spec
    return {"cpu": spec.cpus_per_trial, **({"gpu": spec.gpus_per_trial}
                                           if spec.gpus_per_trial else {})}


def _trainable(sweep: Sweep, out_dir: Path) -> Any:
    _, tune = ray_modules()
    bound = tune.with_parameters(run_trial, sweep_dir=str(out_dir))
    return tune.with_resources(bound, trial_resources(sweep))


def _searcher(sweep: Sweep) -> Any:
    sample = sweep.spec.sample
    if sample.search == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise SweepError("search optuna needs optuna: pip install 'edgecl[sweep]'") from None
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sample.seed))
    from ray.tune.search import BasicVariantGenerator

    # (Tune ignores max_concurrent_trials for a generator it did not make itself)
    return BasicVariantGenerator(random_state=sample.seed,
                                 max_concurrent=sweep.spec.max_concurrent or 0)


def _tuner(sweep: Sweep, out_dir: Path, verbose: int) -> Any:
    _, tune = ray_modules()
    spec = sweep.spec
    return tune.Tuner(
        _trainable(sweep, out_dir),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.direction, num_samples=spec.sample.num_samples,
            search_alg=_searcher(sweep),
            max_concurrent_trials=spec.max_concurrent if spec.sample.search == "optuna" else None,
            reuse_actors=True),  # one worker process runs trial after trial
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(out_dir), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures)),
    )


def record_errors(sweep: Sweep, out_dir: Path, grid: Any) -> None:
    """Trials Ray saw fail without a record of it (a worker killed for memory): recorded."""
    for result in grid:
        if result.error is None or not result.config:
            continue
        label, params = trial_params(sweep, result.config)
        key = trial_key(label, int(result.config["seed"]), params)
        trial_dir = out_dir / TRIALS_DIR / key
        with contextlib.suppress(EdgeclError):
            record = read_record(trial_dir)
            if record.status != "failed":
                lines = [x for x in str(result.error).splitlines() if x.strip()]
                mark_failed(trial_dir, record,
                            f"{type(result.error).__name__}: {lines[0] if lines else ''}")


def _fit(sweep: Sweep, out_dir: Path, tuner: Any) -> dict[str, Any]:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_PERIOD_S)
    grid = tuner.fit()
    record_errors(sweep, out_dir, grid)
    return report(out_dir, sweep)


def run_sweep(sweep: Sweep, out_dir: Path, *, address: str | None = None,
              num_cpus: int | None = None, verbose: int = 1) -> dict[str, Any]:
    """Run every trial of ``sweep`` into ``out_dir``; returns the aggregate (sweep.json)."""
    out_dir = Path(out_dir).resolve()
    if (out_dir / SWEEP_FILE).exists():
        raise SweepError(f"{out_dir} already holds a sweep: continue it with --resume {out_dir}, "
                         "or choose another --out")
    sweep = sweep_from_tree(absolute_paths(sweep.to_dict(), Path.cwd()), str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SWEEP_FILE, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    with connected(address, num_cpus):
        return _fit(sweep, out_dir, _tuner(sweep, out_dir, verbose))


def resume_sweep(out_dir: Path, *, address: str | None = None, num_cpus: int | None = None,
                 retry_errored: bool = False, verbose: int = 1) -> dict[str, Any]:
    """Continue a killed sweep: only its unfinished trials run (and, with ``retry_errored``,
    its errored ones again); finished trials are not rerun. A trial that runs again continues
    from its run directory's last checkpoint, as ``edgecl run --resume`` does."""
    out_dir = Path(out_dir).resolve()
    if not (out_dir / SWEEP_FILE).is_file():
        raise SweepError(f"{out_dir} has no {SWEEP_FILE}: not an edgecl sweep directory")
    sweep = load_sweep(out_dir / SWEEP_FILE)
    _, tune = ray_modules()
    with connected(address, num_cpus):
        state = out_dir / TUNE_DIR
        if not tune.Tuner.can_restore(str(state)):  # killed before Ray first saved its state
            return _fit(sweep, out_dir, _tuner(sweep, out_dir, verbose))
        tuner = tune.Tuner.restore(
            str(state), trainable=_trainable(sweep, out_dir), resume_unfinished=True,
            resume_errored=False, restart_errored=retry_errored,
            param_space=param_space(sweep))
        return _fit(sweep, out_dir, tuner)


def report(out_dir: Path, sweep: Sweep | None = None) -> dict[str, Any]:
    """Rebuild sweep.json, sweep.md and sweep.html from the finished trials of ``out_dir``."""
    out_dir = Path(out_dir)
    if sweep is None:
        if not (out_dir / SWEEP_FILE).is_file():
            raise ConfigError(f"{out_dir} has no {SWEEP_FILE}: not an edgecl sweep directory")
        sweep = load_sweep(out_dir / SWEEP_FILE)
    return write_sweep_report(out_dir, sweep.name, sweep.spec.metric, sweep.spec.direction)
