"""The learner's configuration: the method and backbone of a run config, plus what an
online learner needs (class capacity, task boundaries, memory tiers, budget, service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from edgecl.backbones.vit import RecomputeMode
from edgecl.config.models import BackboneConfig, MethodSpec, Strict, format_errors
from edgecl.errors import ConfigError
from edgecl.learner.memory import Eviction, Migration
from edgecl.methods.base import OptimConfig


class BoundaryConfig(Strict):
    """When a task ends, with no boundaries declared by the stream.

    ``every_n``: a task is the next ``every_n`` new samples. ``new_classes``: a task also
    ends early when a sample of a class the task has not seen arrives after ``min_samples``
    (so a task boundary falls where the class set changes)."""

    policy: Literal["every_n", "new_classes"] = "new_classes"
    every_n: int = Field(32, ge=1)
    min_samples: int = Field(8, ge=1)
    max_wait_s: float = Field(2.0, gt=0)  # a partial task trains after waiting this long


class MemoryConfig(Strict):
    ram_samples: int = Field(256, ge=0)  # the RAM tier's capacity (decoded samples)
    eviction: Eviction = "class_balanced"
    migration: Migration = "refresh"
    refresh_every_s: float = Field(10.0, gt=0)
    refresh_fraction: float = Field(0.1, gt=0, le=1)
    replay_per_step: int = Field(0, ge=0)  # RAM-tier samples joining each training batch
    queue_samples: int = Field(256, ge=1)  # decoded samples waiting for training


class BudgetConfig(Strict):
    """``memory_mib``: a hard limit on the learner's peak RSS. ``plan``: the planner picks
    batch size, buffer capacity, frozen depth and latent precision under it at the first
    start (``edgecl.learner.budget``), calibrating on ``calibration_data``; off, only the
    RAM tier is sized to the budget."""

    memory_mib: int | None = Field(None, ge=64)
    plan: bool = True
    calibration_data: str = "cifar100"


class ServiceConfig(Strict):
    max_body_mib: float = Field(16, gt=0)
    top_k: int = Field(5, ge=1)
    # the training thread pauses before each layer while a prediction is in flight
    # (edgecl/learner/yielding.py), so predictions get the CPU
    predictions_first: bool = True
    # torch threads of a prediction; None: every core when predictions_first pauses training,
    # else the training's `threads`
    predict_threads: int | None = Field(None, ge=1)


class EvalConfig(Strict):
    """Held-out accuracy over time on the seen classes: the test split of a dataset whose
    class names are the labels the stream uses (e.g. CIFAR-100's)."""

    dataset: str | None = None
    per_class: int = Field(10, ge=1)
    every_steps: int = Field(50, ge=1)


def default_method() -> MethodSpec:
    """Nearest class mean on the frozen pretrained backbone: one forward pass per new sample,
    no gradient, a model that is consistent after every sample. On this project's 2-core
    host it beat latent replay (ViT-LR) on the same stream (``benchmarks/learner.py``,
    ``results/learner.md``, "default method")."""
    return MethodSpec(name="ncm")


class LearnerConfig(Strict):
    seed: int = Field(0, ge=0)
    threads: int = Field(1, ge=1)  # torch threads of the training thread's kernels
    # niceness added to the training and migration threads (Linux: per thread), so that
    # predictions and ingestion win a contended CPU; 0 leaves them at the server's priority
    background_nice: int = Field(10, ge=0, le=19)
    max_classes: int = Field(100, ge=1)
    backbone: BackboneConfig = BackboneConfig()
    data_root: str | None = None
    method: MethodSpec = Field(default_factory=default_method)
    optim: OptimConfig = OptimConfig(name="sgd", lr=0.01, momentum=0.9)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(1, ge=1)  # passes over each task
    # a ViT's training copy recomputes block activations in backward (train.recompute of a
    # run config, docs/measurement.md); the planner calibrates with it
    recompute: RecomputeMode = "none"
    boundary: BoundaryConfig = BoundaryConfig()
    memory: MemoryConfig = MemoryConfig()
    budget: BudgetConfig = BudgetConfig()
    service: ServiceConfig = ServiceConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint_every_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def replay_needs_ram(self) -> LearnerConfig:
        if self.memory.replay_per_step and not self.memory.ram_samples:
            raise ValueError("memory.replay_per_step needs memory.ram_samples > 0")
        return self


def load_learner_config(source: str | Path | dict[str, Any] | LearnerConfig | None,
                        ) -> LearnerConfig:
    """A config from a YAML file, a mapping, or None (the default for a 2-core host)."""
    if isinstance(source, LearnerConfig):
        return source
    tree: Any = source or {}
    if isinstance(source, str | Path):
        try:
            tree = yaml.safe_load(Path(source).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"learner config {source}: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError("a learner config is a mapping")
    try:
        return LearnerConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid learner config: {format_errors(exc)}") from None
