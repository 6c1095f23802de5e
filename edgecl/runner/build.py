"""Building a run from a config: device, backbone, scenario, transforms and the method.

Everything here is decided before the first step and is the same on a resume, so a resumed
run rebuilds exactly the objects the interrupted one had and then loads its checkpoint.
"""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecl.backbones.registry import Backbone, create_backbone, default_img_size
from edgecl.backbones.vit import RecomputeMode, VisionTransformer
from edgecl.config import MethodSpec, RunConfig, TrainConfig
from edgecl.data.base import resolve_data_root
from edgecl.data.loader import num_batches
from edgecl.data.registry import build_scenario as scenario_of
from edgecl.data.registry import dataset_entry
from edgecl.data.scenarios import Scenario
from edgecl.data.transforms import BatchTransform, make_transforms
from edgecl.efficiency import precision
from edgecl.errors import ConfigError
from edgecl.methods import method_class
from edgecl.methods.base import BenchmarkInfo, Method, TaskInfo
from edgecl.metrics.cost import CostMeter
from edgecl.runner.checkpoint import module_digests, weights_sha256


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device: cpu")
    return device


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def configured_img_size(cfg: RunConfig) -> int:
    return default_img_size(cfg.backbone.name, cfg.backbone.img_size)


def build_backbone(cfg: RunConfig) -> Backbone:
    """The configured backbone. Random initialisations draw from torch's generator seeded with
    ``cfg.seed``, so the backbone depends on the config alone, not on what ran earlier in the
    process; the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return create_backbone(
            cfg.backbone.name, weights=cfg.backbone.weights, img_size=cfg.backbone.img_size,
            data_root=resolve_data_root(cfg.data.root), width=cfg.backbone.width)


def normalization(cfg: RunConfig, bundle: Backbone) -> tuple[tuple[float, ...], ...]:
    """(mean, std) of the inputs: the weights' own (their registry entry), the data set's for a
    backbone trained from scratch (no weights file), or none (x / 255) with
    ``data.normalize: none``."""
    if cfg.data.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if not bundle.entry.pretrained and cfg.backbone.weights in (None, "random"):
        info = dataset_entry(cfg.data.dataset).info
        if "mean" in info and "std" in info:
            return tuple(info["mean"]), tuple(info["std"])
    return bundle.mean, bundle.std


def build_scenario(cfg: RunConfig) -> Scenario:
    return scenario_of(cfg.data, seed=cfg.seed, img_size=configured_img_size(cfg))


def train_indices(scenario: Scenario, t: int, cumulative: bool) -> np.ndarray:
    if not cumulative:
        return scenario.tasks[t].train_indices
    return np.concatenate([scenario.tasks[i].train_indices for i in range(t + 1)])


def steps_in_task(n_train: int, train: TrainConfig) -> int:
    per_epoch = num_batches(n_train, train.batch_size, drop_last=False)
    total = per_epoch * train.epochs
    return min(total, train.max_steps_per_task) if train.max_steps_per_task else total


def set_recompute(backbone: nn.Module, mode: RecomputeMode,
                  key: str = "train.recompute") -> None:
    if isinstance(backbone, VisionTransformer):
        backbone.set_recompute(mode)
    elif mode != "none":
        raise ConfigError(f"{key}: {mode} needs a ViT backbone, not "
                          f"{type(backbone).__name__}; use {key}: none")


def task_steps(cfg: RunConfig, spec: MethodSpec, scenario: Scenario) -> list[int]:
    """Training steps of each task for this method (its own train block, its own data)."""
    cumulative = method_class(spec.name).trains_on_all_seen_data
    train = spec.train_config(cfg.train)
    return [steps_in_task(len(train_indices(scenario, t, cumulative)), train)
            for t in range(len(scenario.tasks))]


@dataclass
class MethodSetup:
    """One method, set up on its own copy of the backbone, ready for the loop."""

    cfg: RunConfig
    spec: MethodSpec
    scenario: Scenario
    method: Method
    backbone: nn.Module
    meter: CostMeter
    device: torch.device
    train_cfg: TrainConfig
    train_tf: BatchTransform
    eval_tf: BatchTransform
    task_train: list[np.ndarray]
    task_steps: list[int]
    frozen_sha256: str  # of the pretrained backbone the method starts from
    pristine: dict[str, str] = field(default_factory=dict)  # digests right after setup
    precision: str = "fp32"  # training precision that runs (auto resolved)
    eval_precision: str = "fp32"

    @property
    def n_tasks(self) -> int:
        return len(self.scenario.tasks)

    def task_info(self, t: int) -> TaskInfo:
        return TaskInfo(t, torch.as_tensor(self.scenario.tasks[t].classes),
                        len(self.task_train[t]), self.task_steps[t])


def setup_method(
    cfg: RunConfig, spec: MethodSpec, scenario: Scenario, bundle: Backbone, device: torch.device,
    frozen_sha256: str | None = None,
) -> MethodSetup:
    """A fresh method on a fresh copy of ``bundle``: the same objects on every (re)start."""
    train_cfg = spec.train_config(cfg.train)
    meter = CostMeter(device, count_flops=cfg.cost.count_flops)
    mean, std = normalization(cfg, bundle)
    train_tf, eval_tf = make_transforms(
        bundle.img_size, mean, std, augment=train_cfg.augment_policy,
        crop_scale=train_cfg.crop_scale, test_resize=cfg.eval.test_resize)
    cls = method_class(spec.name)
    method = cls(spec.method_params(), spec.optim_config(cfg.optim))
    task_train = [train_indices(scenario, t, cls.trains_on_all_seen_data)
                  for t in range(len(scenario.tasks))]
    n_steps = [steps_in_task(len(ix), train_cfg) for ix in task_train]
    backbone = copy.deepcopy(bundle.module).to(device)
    set_recompute(backbone, train_cfg.recompute)
    train_precision = precision.resolve(train_cfg.precision, device)
    eval_precision = precision.resolve(cfg.eval.precision or train_cfg.precision, device)
    info = BenchmarkInfo(
        num_classes=scenario.num_classes, n_tasks=len(scenario.tasks),
        task_classes=[torch.as_tensor(t.classes) for t in scenario.tasks],
        train_transform=train_tf, device=device, meter=meter, seed=cfg.seed,
        steps_per_task=n_steps, input_size=bundle.img_size, precision=train_precision,
        epochs=train_cfg.epochs,
    )
    torch.manual_seed(cfg.seed)
    method.setup(backbone, info)
    meter.watch_parameters([method.modules, backbone])
    return MethodSetup(
        cfg=cfg, spec=spec, scenario=scenario, method=method, backbone=backbone, meter=meter,
        device=device, train_cfg=train_cfg, train_tf=train_tf,
        eval_tf=eval_tf, task_train=task_train, task_steps=n_steps,
        frozen_sha256=frozen_sha256 or weights_sha256(bundle.module),
        pristine=module_digests(method.modules), precision=train_precision,
        eval_precision=eval_precision,
    )


def run_dir_of(out_dir: Path, spec: MethodSpec) -> Path:
    return out_dir / spec.run_name
