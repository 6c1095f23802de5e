"""Mixed precision: auto's choice, autocast with fp32 master weights, FLOPs tagged by dtype,
device estimates at the precision that ran, and a real run in bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_vit
from torch import nn

from edgecl.config import load_config
from edgecl.efficiency import precision
from edgecl.errors import ConfigError
from edgecl.metrics.cost import CostMeter
from edgecl.metrics.devices import PROFILES, DeviceProfile
from edgecl.runner import run
from edgecl.runner.callbacks import Callback


def test_auto_picks_bf16_only_where_native_and_measured_faster(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.resolve("fp32", cpu) == "fp32"
    assert precision.resolve("bf16", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve("auto", cpu) == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: 2.5)
    assert precision.resolve("auto", cpu) == "bf16"
    # flags alone are not enough: a bf16 matmul that is not faster keeps fp32
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: 0.9)
    assert precision.resolve("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve("int4", cpu)


def test_autocast_computes_in_bf16_and_counts_flops_by_dtype():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    meter = CostMeter()
    with meter.active(), meter.phase("forward"), precision.autocast("bf16", "cpu"):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    # 2 x 4 x 3 multiply-adds forward = 48 FLOPs; the trainable weight's gradient: 48 more
    # (the input needs no gradient)
    assert dict(meter.flops_by_dtype) == {"bf16": 96}
    with meter.active(), meter.phase("forward"), precision.autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32
    assert dict(meter.flops_by_dtype) == {"bf16": 96, "fp32": 96}
    with meter.active(), meter.phase("eval"), torch.no_grad():
        layer(x)  # evaluation FLOPs are not training FLOPs
    assert sum(meter.flops_by_dtype.values()) == 192


def test_loss_scaling_is_only_for_fp16_on_a_gpu():
    cpu = torch.device("cpu")
    assert not precision.LossScaler("fp16", cpu).enabled
    assert not precision.LossScaler("bf16", cpu).enabled
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.5)
    scaler = precision.LossScaler("fp32", cpu)
    scaler.backward((p * 2).sum())
    scaler.step(opt)
    assert p.tolist() == [0.0, 0.0]  # a plain step: 1 - 0.5 * 2


def test_device_estimates_use_the_peak_of_the_precision_that_ran():
    nano = PROFILES["jetson_nano"]
    assert nano.rate_precision("fp32") == "fp32"
    assert nano.rate_precision("fp16") == "fp16"
    assert nano.rate_precision("bf16") == "fp16"  # no bf16 on the Nano: its 16-bit format
    plain = DeviceProfile(name="x", peak_fp32_flops=1e9, sustained_fraction=0.5,
                          memory_bytes=2**30, load_watts=4.0, source="test",
                          dram_joules_per_byte=0.0)
    assert plain.rate_precision("bf16") == "fp32"
    # 1 GFLOP at 0.5 x 1 GFLOP/s = 2 s x 4 W = 8 J; at the Nano's fp16 peak (2x fp32) half
    assert plain.estimate(1e9, 0)["joules"] == pytest.approx(8.0)
    fp32, fp16 = nano.estimate(1e12, 0, "fp32"), nano.estimate(1e12, 0, "bf16")
    assert fp16["compute_seconds"] == pytest.approx(
        fp32["compute_seconds"] * nano.peak_fp32_flops / nano.peak_flops["fp16"])


def test_config_validates_precision(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["train.precision=fp8"])
    cfg = load_config(None, ["train.precision=bf16"])
    assert cfg.train.precision == "bf16" and cfg.eval.precision is None


def bf16_tiny_vit_config(tmp_path, cifar100_root, name: str, methods: list[dict],
                         **sections: dict) -> Path:
    """A config file for a bf16 run on the 2-block, 32 px test ViT over two 2-class tasks;
    ``sections`` add top-level entries (eval, optim, cost)."""
    weights = save_tiny_vit(tmp_path / "tiny.pth")
    tree = {
        "name": name, "seed": 3,
        "data": {"dataset": "cifar100", "root": str(cifar100_root), "n_tasks": 2,
                 "class_order": [0, 1, 2, 3], "train_per_class": 4, "test_per_class": 2},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": str(weights), "img_size": 32},
        "train": {"batch_size": 4, "augment": False, "precision": "bf16"},
        **sections, "methods": methods,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_bf16_run_keeps_fp32_master_weights_and_records_its_precision(cifar100_root,
                                                                       tmp_path):
    path = bf16_tiny_vit_config(
        tmp_path, cifar100_root, "bf16", [{"name": "finetune"}],
        eval={"precision": "fp32"}, optim={"name": "sgd", "lr": 0.01},
        cost={"device_profiles": ["jetson_nano"]})
    seen: list[set[torch.dtype]] = []

    class Dtypes(Callback):
        def on_step(self, loop, batch, stats) -> None:
            params = list(loop.method.modules.parameters())
            seen.append({p.dtype for p in params} | {p.grad.dtype for p in params
                                                      if p.grad is not None})

    res = run(load_config(path), tmp_path / "out", callbacks=lambda spec: [Dtypes()])[0]
    flops = res.cost.flops
    assert flops.precision == {"train": "bf16", "eval": "fp32"}
    assert set(flops.by_dtype) == {"bf16"} and flops.by_dtype["bf16"] > 0
    # every counted training FLOP is a module FLOP; the optimizer's are elementwise fp32
    assert flops.by_dtype["bf16"] == flops.train.total - flops.train.optimizer
    assert res.cost.energy.estimates["jetson_nano"].precision == "fp16"
    on_disk = json.loads((tmp_path / "out" / "finetune" / "results.json").read_text())
    assert on_disk["cost"]["flops"]["precision"]["train"] == "bf16"
    # master weights and their gradients stay fp32 through every step
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)


SELECTOR = {"selector": {"resolution": 16}}
PROMPT_METHODS = {  # parameters that fit the 2-block test ViT
    "l2p": {"pool_size": 4, "top_k": 2},
    "dualprompt": {"prompt_layers": [1], "g_layers": [0]},
    "coda_prompt": {"pool_size": 4, "prompt_layers": [0, 1]},
    "cps_prompt": {"pool_size": 4, "prompt_layers": [0, 1], "phase_split": "steps"},
    "l2p_rep": {"pool_size": 4, "top_k": 2, **SELECTOR},
    "dualprompt_rep": {"prompt_layers": [1], "g_layers": [0], **SELECTOR},
    "coda_prompt_rep": {"pool_size": 4, "prompt_layers": [0, 1], **SELECTOR},
    "cps_prompt_rep": {"pool_size": 4, "prompt_layers": [0, 1], "phase_split": "steps",
                       **SELECTOR},
}


def test_every_prompt_method_trains_and_evaluates_in_bf16(cifar100_root, tmp_path):
    """Prompts, prefixes and keys are fp32 parameters while autocast computes the backbone in
    bf16 (and CPU bf16 attention runs the recompute kernel): each method must take both."""
    path = bf16_tiny_vit_config(
        tmp_path, cifar100_root, "bf16_prompts",
        [{"name": name, **params} for name, params in PROMPT_METHODS.items()],
        cost={"device_profiles": ["jetson_nano"], "step_peak_every": 0})
    results = run(load_config(path), tmp_path / "out")
    assert [r.run_name for r in results] == list(PROMPT_METHODS)
    for res in results:
        assert res.cost.flops.precision == {"train": "bf16", "eval": "bf16"}
        assert len(res.accuracy.class_il.matrix) == 2
