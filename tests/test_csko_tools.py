"""`edgecl pretrain`, `edgecl analyze-kernels` and CsKO through the runner, on tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgecl.backbones.registry import create_backbone
from edgecl.cli import app
from edgecl.config import load_config
from edgecl.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {
    "seed": 0, "device": "cpu", "threads": 1,
    "data": {"dataset": "cifar100", "n_tasks": 2, "class_order": [3, 7, 11, 19, 23, 42],
             "first_task_classes": 4, "train_per_class": 4, "test_per_class": 3},
    "backbone": {"name": "resnet20_cifar10", "img_size": 8},
    "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 32},
    "optim": {"name": "adam", "lr": 0.001},
}


def write(tmp_path: Path, root: Path, **extra) -> Path:
    cfg = {**TINY, **extra, "data": {**TINY["data"], "root": str(root)}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pretrain_writes_loadable_weights(cifar100_root, tmp_path) -> None:
    out = tmp_path / "base.pth"
    result = CliRunner().invoke(app, ["pretrain", "-c", str(write(tmp_path, cifar100_root)),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.with_suffix(".pth.json").read_text())
    assert summary["classes"] == [0, 1, 2, 3] and summary["train_images"] == 16
    assert summary["steps"] == 2 and summary["train_flops"] > 0
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    fresh = create_backbone("resnet20_cifar10", data_root=cifar100_root).module
    loaded = create_backbone("resnet20_cifar10", weights=str(out)).module
    assert not torch.equal(fresh.stem[0].weight, loaded.stem[0].weight)  # it trained
    bad = CliRunner().invoke(app, ["pretrain", "-c", str(write(tmp_path, cifar100_root)),
                                   "--out", str(tmp_path / "w.txt")])
    assert bad.exit_code == 2 and "pth" in bad.output


def test_analyze_kernels_masks_to_the_taps(cifar100_root, tmp_path) -> None:
    cfg = write(tmp_path, cifar100_root)
    result = CliRunner().invoke(app, ["analyze-kernels", "-c", str(cfg), "--block", "layer3.2",
                                      "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "k" / "kernel_probe.json").read_text())
    assert probe["blocks"] == ["layer3.2"]
    n = probe["trainable"]["layer3.2"]
    assert n == {"head": 0, "center": 2 * 64 * 64, "offcenter": 2 * 64 * 64,
                 "full": 2 * 64 * 64 * 9}
    assert set(probe["accuracy"]["layer3.2"]) == {"head", "center", "offcenter", "full"}
    decayed = CliRunner().invoke(app, ["analyze-kernels", "-c", str(cfg),
                                       "--set", "optim.weight_decay=0.1"])
    assert decayed.exit_code == 2 and "weight_decay" in decayed.output


def test_csko_runs_through_the_runner(cifar100_root, tmp_path) -> None:
    methods = [{"name": "csko", "train": {"epochs": 3}},
               {"name": "finetune", "label": "bias_only", "trainable": "bias"}]
    cfg = load_config(write(tmp_path, cifar100_root, methods=methods))
    results = run(cfg, tmp_path / "runs")
    csko = next(r for r in results if r.method == "csko")
    assert [p.train_steps for p in csko.per_task] == [6, 3]  # 16 / 8 and 4 / 8 images
    assert len(csko.accuracy.class_il.matrix) == 2
    assert csko.cost.flops.train.total > 0
