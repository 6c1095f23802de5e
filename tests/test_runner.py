"""End-to-end: a real 2-task run, resume after a kill, NaN handling, config errors, CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from edgecl.config import RunConfig, load_config
from edgecl.errors import ConfigError, NonFiniteLossError
from edgecl.runner import build_backbone, run
from edgecl.schema import load_results, parse_results

TINY = {
    "name": "tiny",
    "seed": 7,
    "data": {
        "dataset": "cifar100", "n_tasks": 2, "class_order": [3, 1, 4, 5],
        "train_per_class": 4, "test_per_class": 3,
    },
    "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 16},
    "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "methods": [{"name": "finetune"}, {"name": "er", "buffer_size": 6}],
}


def write_config(tmp_path: Path, tree: dict, data_root: Path) -> Path:
    tree = json.loads(json.dumps(tree))
    tree["data"]["root"] = str(data_root)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def tiny_results(cifar100_root, vit_tiny_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    cfg = load_config(write_config(out, TINY, cifar100_root))
    return run(cfg, out / "run"), out / "run"


def test_results_json_has_every_field(tiny_results):
    results, out = tiny_results
    assert [r.run_name for r in results] == ["finetune", "er"]
    for res in results:
        on_disk = json.loads((out / res.run_name / "results.json").read_text())
        assert parse_results(on_disk) == res
        assert on_disk["schema_version"] == 2 and res.status == "completed"
        assert res.scenario.model_dump() == {
            "dataset": "cifar100", "n_tasks": 2, "class_order": [3, 1, 4, 5],
            "classes_per_task": [2, 2], "train_samples_per_task": [8, 8],
            "test_samples_per_task": [6, 6],
        }
        for acc in (res.accuracy.class_il, res.accuracy.task_il):
            assert [len(r) for r in acc.matrix] == [1, 2]
            assert all(0.0 <= a <= 100.0 for row in acc.matrix for a in row)
            last = acc.matrix[-1]
            assert acc.final_average == pytest.approx(sum(last) / 2)
            assert acc.forgetting == pytest.approx(acc.matrix[0][0] - last[0])
            assert acc.bwt == pytest.approx(last[0] - acc.matrix[0][0])
        # task-IL on 2-class tasks is at least as good as class-IL over 4 classes
        assert res.accuracy.task_il.final_average >= res.accuracy.class_il.final_average
        flops = res.cost.flops
        train = flops.train
        assert train.total == train.forward + train.backward + train.optimizer
        assert train.selection == train.prefix == train.other == 0
        assert train.forward > 0 and train.backward > train.forward and flops.eval > 0
        assert flops.per_sample.basis == "stream_samples" and flops.per_sample.samples == 16
        assert flops.per_sample.train_flops == pytest.approx(train.total / 16)
        mem = res.cost.memory
        assert mem.peak_saved_for_backward_bytes >= mem.mean_saved_for_backward_bytes > 0
        assert mem.parameter_bytes == mem.trainable_parameter_bytes == mem.gradient_bytes
        state = mem.parameter_bytes + mem.gradient_bytes + mem.optimizer_state_bytes
        # the largest single step: no larger than every peak added, no smaller than any step
        assert state + mem.peak_saved_for_backward_bytes <= mem.training_footprint_bytes <= (
            state + mem.peak_saved_for_backward_bytes + mem.buffer_bytes)
        assert mem.peak_rss_bytes > 0 and mem.cuda_max_allocated_bytes is None
        times = res.cost.time_s
        assert min(times.data, times.selection, times.prefix, times.backward, times.step) >= 0
        assert times.forward > 0 and times.eval > 0
        assert times.wall_total >= times.train_total
        energy = res.cost.energy
        assert set(energy.estimates) == {"host", "jetson_nano", "jetson_xavier_nx",
                                         "raspberry_pi_4"}
        assert "not measurements" in energy.note and energy.measured is None
        assert all(e.train_joules > 0 for e in energy.estimates.values())
        assert [t.task for t in res.per_task] == [0, 1]
        assert sum(t.train_flops for t in res.per_task) == train.total
        assert sum(t.train_samples for t in res.per_task) == flops.samples_observed == 16
        assert res.environment.torch == torch.__version__
    finetune, er = results
    # the method's hyper-parameters are recorded with their defaults resolved
    assert er.config["method"]["buffer_size"] == 6
    assert er.config["method_params"]["buffer_size"] == 6
    assert set(er.config["method_params"]) >= {"buffer_size", "replay_batch_size"}
    # momentum SGD keeps one buffer per parameter; ER stores 6 raw 32x32x3 images + labels
    assert finetune.cost.memory.optimizer_state_bytes == finetune.cost.memory.parameter_bytes
    assert er.cost.memory.buffer_bytes == 6 * 32 * 32 * 3 + 6 * 8 + 6 * 8
    # ER trains on its replayed examples too: more samples through the model and more FLOPs,
    # over the same stream
    assert er.cost.flops.samples_processed > finetune.cost.flops.samples_processed == 16
    assert er.cost.flops.per_sample.samples == finetune.cost.flops.per_sample.samples
    assert er.cost.flops.train.total > finetune.cost.flops.train.total


def test_reports_are_written(tiny_results):
    from edgecl.report import write_report

    _, out = tiny_results
    md, html = write_report(out / "er")
    assert md.read_text().strip() and "data:image/png;base64," in html.read_text()


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgecl.cli", *args], capture_output=True, text=True, **kw
    )


def test_killed_run_resumes_to_identical_metrics(cifar100_root, vit_tiny_path, tmp_path):
    tree = json.loads(json.dumps(TINY))
    tree["methods"] = [{"name": "er", "buffer_size": 6}]
    tree["data"]["train_per_class"] = 8
    tree["train"]["checkpoint_every_steps"] = 1
    cfg_path = write_config(tmp_path, tree, cifar100_root)

    reference = run(load_config(cfg_path), tmp_path / "reference")[0]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecl.cli", "run", "-q", "-c", str(cfg_path), "--out",
         str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ckpt = killed / "er" / "checkpoint.pt"
    deadline = time.time() + 120
    position = {"task": 0, "step": 0}
    while time.time() < deadline:
        if ckpt.exists():
            with contextlib.suppress(Exception):  # a rename may land between exists and load
                position = torch.load(ckpt, weights_only=True)["loop"]["position"]
            if position["task"] == 0 and position["step"] >= 2:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    position = torch.load(ckpt, weights_only=True)["loop"]["position"]
    assert (position["task"], position["step"] > 0) == (0, True), position  # killed mid-task
    assert not (killed / "er" / "results.json").exists()

    done = cli("run", "-q", "--resume", str(killed))
    assert done.returncode == 0, done.stderr
    resumed = load_results(killed / "er")
    assert resumed.accuracy == reference.accuracy
    assert resumed.cost.flops == reference.cost.flops
    assert resumed.cost.memory.buffer_bytes == reference.cost.memory.buffer_bytes
    assert resumed.cost.memory.training_footprint_bytes == (
        reference.cost.memory.training_footprint_bytes)


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(
    cifar100_root, vit_tiny_path, tmp_path, monkeypatch
):
    from edgecl.methods.finetune import Finetune

    calls = {"n": 0}
    original = Finetune.forward_loss

    def poisoned(self, batch):
        calls["n"] += 1
        loss, logits = original(self, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), logits

    monkeypatch.setattr(Finetune, "forward_loss", poisoned)
    tree = json.loads(json.dumps(TINY))
    tree["methods"] = [{"name": "finetune"}]
    cfg = load_config(write_config(tmp_path, tree, cifar100_root))
    with pytest.raises(NonFiniteLossError, match="loss became nan in task 1"):
        run(cfg, tmp_path / "out")
    failure = json.loads((tmp_path / "out" / "finetune" / "failure.json").read_text())
    assert failure["status"] == "failed" and "nan" in failure["error"]
    ckpt = torch.load(tmp_path / "out" / "finetune" / "checkpoint.pt", weights_only=True)
    # the last good state: the end of task 0
    assert ckpt["loop"]["position"] == {"task": 1, "epoch": 0, "batch": 0, "step": 0}


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_sise"):
        load_config(overrides=["train.batch_sise=3"])
    with pytest.raises(ConfigError, match="methods.1 \\(er\\): buffer_sise"):
        load_config(overrides=["methods.1.buffer_sise=3"])
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        load_config(overrides=["methods.0.name=foo"])
    with pytest.raises(ConfigError, match="data.n_tasks"):
        load_config(overrides=["data.n_tasks=0"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_apply_with_yaml_values():
    cfg = load_config(overrides=["train.epochs=3", "methods.1.buffer_size=50", "seed=1"])
    assert cfg.train.epochs == 3 and cfg.seed == 1
    assert cfg.methods[1].method_params().buffer_size == 50


def test_cli_reports_bad_config_and_missing_data(tmp_path):
    res = cli("run", "--set", "train.batch_sise=3")
    assert res.returncode == 2 and "train.batch_sise" in res.stderr
    res = cli("run", "-q", "--data-root", str(tmp_path / "nothing"), "--set", "data.download=false",
              "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "cifar-100-python" in res.stderr and "EDGECL_DATA" in res.stderr
    res = cli("run", "--resume", str(tmp_path))
    assert res.returncode == 2 and "not an edgecl run directory" in res.stderr


def test_cli_compare_and_report(tiny_results, tmp_path):
    _, out = tiny_results
    res = cli("compare", str(out / "finetune"), str(out / "er"), "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "| er" in res.stdout and "1.00×" in res.stdout
    res = cli("report", str(out / "er"))
    assert res.returncode == 0 and "report.html" in res.stdout
    res = cli("report", str(tmp_path / "missing"))
    assert res.returncode == 2


def test_a_from_scratch_backbone_depends_on_the_seed_only():
    cfg = RunConfig(seed=3, backbone={"name": "resnet18_cifar"})
    first = build_backbone(cfg).module.state_dict()
    torch.randn(1000)  # whatever ran before in the process must not matter
    before = torch.get_rng_state()
    second = build_backbone(cfg).module.state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = build_backbone(RunConfig(seed=4, backbone={"name": "resnet18_cifar"}))
    key = next(k for k in first if k.endswith("weight"))
    assert not torch.equal(first[key], other.module.state_dict()[key])


def test_callbacks_see_every_hook_and_add_per_task_figures(cifar100_root, vit_tiny_path,
                                                           tmp_path):
    from edgecl.runner import Callback

    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_train_start(self, loop):
            self.events.append("start")

        def on_task_start(self, loop, task):
            self.events.append(f"task{task.index}")

        def on_step(self, loop, batch, stats):
            self.events.append("step")

        def on_task_end(self, loop, task):
            self.events.append(f"end{task.index}")
            loop.per_task[-1].setdefault("extra", {})["steps_seen"] = self.events.count("step")

        def on_evaluate(self, loop, t):
            self.events.append(f"eval{t}")

    tree = json.loads(json.dumps(TINY))
    tree["methods"] = [{"name": "finetune"}]
    recorders = []

    def factory(spec):
        recorders.append(Recorder())
        return recorders

    (res,) = run(load_config(write_config(tmp_path, tree, cifar100_root)), tmp_path / "o",
                 callbacks=factory)
    assert recorders[0].events == ["start", "task0", "step", "step", "end0", "eval0",
                                   "task1", "step", "step", "end1", "eval1"]
    assert [t.extra["steps_seen"] for t in res.per_task] == [2, 4]
