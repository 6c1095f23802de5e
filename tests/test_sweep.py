"""``edgecl sweep`` on a real local Ray instance (one per module, 2 CPUs) with tiny real runs:
a 2 × 2 sweep checked against a hand computation over its results.json files, failing trials
recorded while the rest finish (and retried on a resume), a driver killed with SIGKILL then
resumed, and an Optuna search."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")

from edgecl.sweep import load_sweep, report, resume_sweep, run_sweep  # noqa: E402
from edgecl.sweep.records import read_events  # noqa: E402

TINY = {
    "name": "tiny_sweep", "seed": 1,
    "data": {"dataset": "cifar100", "n_tasks": 2, "class_order": [3, 1, 4, 5],
             "train_per_class": 4, "test_per_class": 2},
    "backbone": {"name": "vit_tiny_patch16_224", "weights": "random", "img_size": 32},
    "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 16, "augment": False},
    "optim": {"name": "sgd", "lr": 0.01},
    "cost": {"device_profiles": []},
    "methods": [{"name": "finetune"}, {"name": "er", "buffer_size": 4}],
}
T_975_DF1 = 12.706204736  # Student-t 0.975 quantile, 1 degree of freedom (2 seeds)


@pytest.fixture(scope="module")
def ray_address(cifar100_root):
    """One local Ray instance for the module; its address lets a subprocess driver join it.
    CIFAR-100 is decoded into the session's cache first, once, not by each first trial."""
    from edgecl.config import RunConfig
    from edgecl.runner import build_scenario

    build_scenario(RunConfig.model_validate({**TINY, "data": {
        **TINY["data"], "root": str(cifar100_root)}}))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def sweep_file(tmp_path: Path, root: Path, sweep: dict, **changes) -> Path:
    tree = json.loads(json.dumps({**TINY, **changes}))
    tree["data"]["root"] = str(root)
    tree["sweep"] = sweep
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def grid_sweep(ray_address, cifar100_root, tmp_path_factory):
    """finetune and er × seeds 1, 2 (the 2 × 2), beside a method labelled bad whose two
    learning rates fail: 1e30 (a NaN loss) and -1 (a value the config rejects)."""
    tmp = tmp_path_factory.mktemp("grid")
    methods = [*TINY["methods"], {"name": "finetune", "label": "bad"}]
    path = sweep_file(tmp, cifar100_root, {"seeds": [1, 2], "grid": {
        "methods.bad.optim.lr": [1.0e30, -1.0]}}, methods=methods)
    out = tmp / "out"
    return run_sweep(load_sweep(path), out, verbose=0), out


def test_two_by_two_sweep_matches_hand_computation(grid_sweep):
    data, out = grid_sweep
    assert data["counts"] == {"completed": 4, "failed": 4, "running": 0}
    # by hand, from the trials' own results.json files
    by_hand = {}
    for label in ("finetune", "er"):
        results = [json.loads((out / "trials" / f"{label}-seed{s}" / label / "results.json")
                              .read_text()) for s in (1, 2)]
        assert [r["config"]["seed"] for r in results] == [1, 2]
        assert all(r["config"]["threads"] == 1 for r in results)  # one CPU per trial
        assert all((out / "trials" / f"{label}-seed{s}" / label / "report.html").is_file()
                   for s in (1, 2))
        acc = [r["accuracy"]["class_il"]["final_average"] for r in results]
        flops = [r["cost"]["flops"]["per_sample"]["train_flops"] for r in results]
        by_hand[label] = (acc, flops)
    configs = {c["configuration"]: c for c in data["configurations"]}
    assert set(configs) == {"finetune", "er"}
    for label, (acc, flops) in by_hand.items():
        stats = configs[label]["metrics"]["class_il.final_average"]
        assert stats["values"] == acc and stats["mean"] == pytest.approx(statistics.mean(acc))
        std = statistics.stdev(acc)
        assert stats["std"] == pytest.approx(std)
        half = T_975_DF1 * std / 2 ** 0.5
        assert stats["ci95"] == pytest.approx([statistics.mean(acc) - half,
                                               statistics.mean(acc) + half])
        assert configs[label]["metrics"]["train_flops_per_sample"]["mean"] == pytest.approx(
            statistics.mean(flops))
        assert data["best"][label]["mean"] == pytest.approx(statistics.mean(acc))
    assert set(data["best"]) == {"finetune", "er"}  # bad has no completed configuration
    points = {f"{label}-seed{s}": (flops[i], acc[i]) for label, (acc, flops) in by_hand.items()
              for i, s in enumerate((1, 2))}
    front = sorted(k for k, (c, a) in points.items() if not any(
        c2 <= c and a2 >= a and (c2, a2) != (c, a) for c2, a2 in points.values()))
    assert sorted(data["pareto"]["front"]) == front
    on_disk = json.loads((out / "sweep.json").read_text())
    assert on_disk["configurations"] == json.loads(json.dumps(data["configurations"]))
    html = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in html and "Pareto" in html
    assert "| finetune | 2 |" in (out / "sweep.md").read_text()
    # --report rebuilds the same aggregate from the finished trials alone
    (out / "sweep.json").unlink()
    assert report(out)["configurations"] == data["configurations"]
    assert (out / "sweep.json").is_file()


def test_failing_trials_are_recorded_and_the_rest_finish(grid_sweep):
    data, out = grid_sweep
    bad = [t for t in data["trials"] if t["label"] == "bad"]
    assert len(bad) == 4 and all(t["status"] == "failed" for t in bad)
    for t in bad:
        assert "\n" not in t["error"]
        if t["params"]["methods.bad.optim.lr"] > 0:
            assert t["error"].startswith("finetune: loss became nan in task 0"), t["error"]
        else:
            assert t["error"].startswith("invalid trial config: methods.0 (finetune): optim"), (
                t["error"])
    rest = [t for t in data["trials"] if t["label"] != "bad"]
    assert len(rest) == 4 and all(t["status"] == "completed" for t in rest)
    assert "loss became nan" in (out / "sweep.md").read_text()
    # resumed with --retry-errored: the failed trials run again, the completed ones do not
    again = resume_sweep(out, retry_errored=True, verbose=0)
    assert again["counts"] == {"completed": 4, "failed": 4, "running": 0}
    for trial in data["trials"]:
        events = [e["event"] for e in read_events(out / "trials" / trial["key"])]
        failed = trial["status"] == "failed"
        assert events == (["started", "failed"] * 2 if failed else ["started", "completed"])


def _completed_keys(out: Path) -> dict[str, float]:
    done = {}
    for trial in (out / "trials").glob("*"):
        for event in read_events(trial):
            if event["event"] == "completed":
                done[trial.name] = event["time"]
    return done


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgecl.cli", "sweep", *args, "--quiet"]


def test_killed_driver_resumes_and_runs_each_trial_once(ray_address, cifar100_root, tmp_path):
    seeds = [1, 2, 3]
    path = sweep_file(tmp_path, cifar100_root, {"seeds": seeds, "max_concurrent": 1},
                      methods=[{"name": "finetune"}])
    out = tmp_path / "out"
    driver = subprocess.Popen(_cli("-c", str(path), "--out", str(out), "--address", ray_address),
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _completed_keys(out) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = time.time()
    time.sleep(1.0)  # Ray ends the dead driver's trial workers
    before = _completed_keys(out)
    assert 1 <= len(before) < len(seeds)
    assert tune.Tuner.can_restore(str(out / "tune"))  # the resume is Ray Tune's restore
    resumed = subprocess.run(_cli("--resume", str(out), "--address", ray_address),
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "3 trials completed, 0 failed, 0 unfinished" in resumed.stderr
    for seed in seeds:
        events = read_events(out / "trials" / f"finetune-seed{seed}")
        assert [e["event"] for e in events].count("completed") == 1, events
        if f"finetune-seed{seed}" in before:  # finished before the kill: not rerun
            assert all(e["time"] < killed_at or e["event"] == "reused" for e in events), events
    data = json.loads((out / "sweep.json").read_text())
    assert data["configurations"][0]["seeds"] == seeds


def test_optuna_searches_the_sampled_axes(ray_address, cifar100_root, tmp_path):
    pytest.importorskip("optuna")
    axes = {"optim.lr": {"loguniform": [1.0e-3, 1.0e-1]}, "train.batch_size": {"choice": [2, 4]}}
    path = sweep_file(tmp_path, cifar100_root, {"sample": {
        "num_samples": 2, "search": "optuna", "seed": 3, "axes": axes}},
        methods=[{"name": "finetune"}])
    data = run_sweep(load_sweep(path), tmp_path / "out", verbose=0)
    assert data["counts"] == {"completed": 2, "failed": 0, "running": 0}
    for trial in data["trials"]:
        lr, batch = trial["params"]["optim.lr"], trial["params"]["train.batch_size"]
        assert 1.0e-3 <= lr <= 1.0e-1 and batch in (2, 4)
        cfg = yaml.safe_load((tmp_path / "out" / "trials" / trial["key"] / "config.yaml")
                             .read_text())
        assert (cfg["optim"]["lr"], cfg["train"]["batch_size"]) == (lr, batch)
    assert len({t["params"]["optim.lr"] for t in data["trials"]}) == 2
    best = max(data["configurations"], key=lambda c: c["metrics"]["class_il.final_average"]
               ["mean"])
    assert data["best"]["finetune"]["configuration"] == best["configuration"]
    assert list((tmp_path / "out" / "tune").glob("searcher-state-*"))  # Optuna's, saved by Tune
