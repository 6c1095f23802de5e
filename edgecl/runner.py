"""The loop: for each task, begin_task → observe* → end_task → evaluate on all seen tasks.

One call of :func:`run` trains every method of a config, one after another, in this process
and on this machine, each on a fresh copy of the same pretrained backbone and the same data
order, so their costs can be compared as ratios. Each method gets its own run directory with
``results.json``, ``checkpoint.pt`` and the resolved config; a killed run continues with
:func:`run` on the same directory (``resume=True``) and ends with the same metrics.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from edgecl import __version__
from edgecl.config import MethodSpec, RunConfig, TrainConfig
from edgecl.data import load_dataset, resolve_data_root
from edgecl.data.core50 import CORE50_INFO, core50_scenario
from edgecl.data.loader import iterate_batches, num_batches
from edgecl.data.scenarios import Scenario, class_incremental
from edgecl.data.transforms import BatchTransform, eval_transform, train_transform
from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, Method, NonFiniteLossError, TaskInfo
from edgecl.metrics.accuracy import (
    Accuracy,
    AccuracyMatrix,
    SeenClassesCurve,
    class_il_predictions,
    percent_correct,
    task_il_predictions,
)
from edgecl.metrics.cost import CostMeter, NvmlEnergy, peak_rss_bytes
from edgecl.metrics.devices import PROFILES, host_estimate

SCHEMA_VERSION = 1
VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CIFAR_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# ---- atomic files ------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


# ---- building blocks ---------------------------------------------------------------------
@dataclass
class BackboneBundle:
    module: nn.Module
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def configured_img_size(cfg: RunConfig) -> int:
    """The input resolution the config asks for: ``backbone.img_size``, else the named
    backbone's default (a ViT checkpoint's own resolution can still differ: the built
    backbone's ``img_size`` is the one the transforms use)."""
    if cfg.backbone.img_size:
        return cfg.backbone.img_size
    name = cfg.backbone.name
    if name.startswith("vit"):
        from edgecl.backbones.vit import VIT_PRESETS

        return VIT_PRESETS[name].img_size if name in VIT_PRESETS else 224
    return 32 if name == "resnet18_cifar" else 224


def build_backbone(cfg: RunConfig) -> BackboneBundle:
    """The configured backbone. Random initialisations (a from-scratch CNN, ``weights:
    random``) draw from torch's generator seeded with ``cfg.seed``, so the backbone depends on
    the config alone, not on what ran earlier in the process; the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _backbone_of(cfg)


def _backbone_of(cfg: RunConfig) -> BackboneBundle:
    name = cfg.backbone.name
    if name.startswith("vit"):
        from edgecl.backbones.weights import build_vit

        vit = build_vit(
            name,
            weights=cfg.backbone.weights,
            img_size=cfg.backbone.img_size,
            data_root=resolve_data_root(cfg.data.root),
        )
        return BackboneBundle(vit, vit.cfg.img_size, *VIT_MEAN_STD)
    from edgecl.backbones.cnn import build_cnn

    pretrained = cfg.backbone.weights != "random"
    net = build_cnn(name, pretrained=pretrained)
    size = configured_img_size(cfg)
    if name == "resnet18_cifar":
        return BackboneBundle(net, size, *CIFAR_MEAN_STD)
    mean = tuple(getattr(net, "mean", IMAGENET_MEAN_STD[0]))
    std = tuple(getattr(net, "std", IMAGENET_MEAN_STD[1]))
    return BackboneBundle(net, size, mean, std)


def core50_decode_size(cfg: RunConfig) -> int:
    """CORe50 images are 128 px: decoded at the backbone's resolution when it is smaller, else
    at 128 (the batched transforms resize every batch to the backbone's input size, so a
    224 px ViT gets upsampled 128 px images, without storing them at 224 px)."""
    return min(CORE50_INFO["image_size"], configured_img_size(cfg))


def build_scenario(cfg: RunConfig) -> Scenario:
    d = cfg.data
    if d.dataset == "core50":
        return core50_scenario(
            d.root, scenario=d.core50_scenario, run=d.core50_run,
            image_size=core50_decode_size(cfg), test_stride=d.core50_test_stride,
            max_batches=d.core50_max_batches,
        )
    extra = {"path": d.path, "image_size": cfg.backbone.img_size or 224} if d.path else {}
    train = load_dataset(d.dataset, "train", root=d.root, download=d.download, **extra)
    test = load_dataset(d.dataset, "test", root=d.root, download=d.download, **extra)
    return class_incremental(
        train,
        test,
        d.n_tasks,
        class_order=d.class_order,
        seed=cfg.seed,
        train_per_class=d.train_per_class,
        test_per_class=d.test_per_class,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
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


def train_indices(scenario: Scenario, t: int, cumulative: bool) -> np.ndarray:
    if not cumulative:
        return scenario.tasks[t].train_indices
    return np.concatenate([scenario.tasks[i].train_indices for i in range(t + 1)])


def steps_in_task(n_train: int, train: TrainConfig) -> int:
    per_epoch = num_batches(n_train, train.batch_size, drop_last=False)
    total = per_epoch * train.epochs
    return min(total, train.max_steps_per_task) if train.max_steps_per_task else total


def epoch_seed(seed: int, task: int, epoch: int) -> int:
    return (seed * 1_000_003 + task * 10_007 + epoch) % (2**63)


# ---- evaluation --------------------------------------------------------------------------
def seen_class_count(scenario: Scenario, t: int) -> int:
    """Classes seen in tasks 0..t. Both scenario builders number classes in stream order, so
    the seen classes are ``0..n-1``; a task of known classes only (a CORe50 NIC batch) adds
    none, so this is the maximum over tasks 0..t, not task t's own maximum."""
    return max(int(task.classes.max()) + 1 for task in scenario.tasks[: t + 1])


@torch.no_grad()
def predictions(
    method: Method, scenario: Scenario, indices: np.ndarray, transform: BatchTransform,
    batch_size: int, device: torch.device, n_seen: int, task_classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Class-IL predictions (argmax over classes ``0..n_seen-1``), task-IL predictions (argmax
    over ``task_classes``; None without them) and targets on ``scenario.test[indices]``."""
    preds_c, preds_t, targets = [], [], []
    for x, y, _ in iterate_batches(
        scenario.test, indices, batch_size, transform=transform, shuffle=False, seed=0,
    ):
        logits = method.predict(x.to(device))
        preds_c.append(class_il_predictions(logits, n_seen).cpu())
        if task_classes is not None:
            preds_t.append(task_il_predictions(logits, task_classes).cpu())
        targets.append(y)
    return torch.cat(preds_c), torch.cat(preds_t) if preds_t else None, torch.cat(targets)


@torch.no_grad()
def evaluate(
    method: Method, scenario: Scenario, t: int, transform: BatchTransform, batch_size: int,
    meter: CostMeter, device: torch.device,
) -> tuple[list[Accuracy], list[Accuracy]]:
    """Class-IL and task-IL accuracy on each task 0..t after training task t (protocol
    ``per_task``); None for a task without test images."""
    n_seen = seen_class_count(scenario, t)
    class_il: list[Accuracy] = []
    task_il: list[Accuracy] = []
    with meter.phase("eval"):
        for task in scenario.tasks[: t + 1]:
            if len(task.test_indices) == 0:
                class_il.append(None)
                task_il.append(None)
                continue
            classes = torch.as_tensor(task.classes, device=device)
            pred_c, pred_t, target = predictions(
                method, scenario, task.test_indices, transform, batch_size, device, n_seen,
                classes)
            class_il.append(percent_correct(pred_c, target))
            task_il.append(percent_correct(pred_t, target))
    return class_il, task_il


def seen_test_indices(scenario: Scenario, t: int) -> np.ndarray:
    """Test images of every class seen in tasks 0..t (each task holds those it introduced)."""
    return np.concatenate([task.test_indices for task in scenario.tasks[: t + 1]])


@torch.no_grad()
def evaluate_seen_classes(
    method: Method, scenario: Scenario, t: int, transform: BatchTransform, batch_size: int,
    meter: CostMeter, device: torch.device,
) -> tuple[int, int, Accuracy]:
    """(classes seen, test images, class-IL accuracy on them) after task t (protocol
    ``seen_classes``); accuracy None if the seen classes have no test image."""
    n_seen = seen_class_count(scenario, t)
    indices = seen_test_indices(scenario, t)
    if len(indices) == 0:
        return n_seen, 0, None
    with meter.phase("eval"):
        pred, _, target = predictions(
            method, scenario, indices, transform, batch_size, device, n_seen)
    return n_seen, len(indices), percent_correct(pred, target)


# ---- one method --------------------------------------------------------------------------
class MethodRun:
    """Trains one method through the stream, with checkpoints and cost accounting."""

    def __init__(
        self, cfg: RunConfig, spec: MethodSpec, scenario: Scenario, bundle: BackboneBundle,
        run_dir: Path, device: torch.device, progress: Callable[[str, int], None] | None = None,
    ) -> None:
        self.cfg, self.spec, self.scenario, self.run_dir = cfg, spec, scenario, run_dir
        self.device = device
        self.train_cfg = spec.train_config(cfg.train)
        self.progress = progress or (lambda desc, advance: None)
        self.meter = CostMeter(device, count_flops=cfg.cost.count_flops)
        mean, std, size = bundle.mean, bundle.std, bundle.img_size
        self.train_tf = (
            train_transform(size, mean, std) if self.train_cfg.augment
            else eval_transform(size, mean, std)
        )
        self.eval_tf = eval_transform(size, mean, std)
        cls = method_class(spec.name)
        self.method: Method = cls(spec.method_params(), spec.optim_config(cfg.optim))
        cumulative = cls.trains_on_all_seen_data
        self.task_train = [
            train_indices(scenario, t, cumulative) for t in range(len(scenario.tasks))
        ]
        self.task_steps = [steps_in_task(len(ix), self.train_cfg) for ix in self.task_train]
        backbone = copy.deepcopy(bundle.module).to(device)
        self.info = BenchmarkInfo(
            num_classes=scenario.num_classes,
            n_tasks=len(scenario.tasks),
            task_classes=[torch.as_tensor(t.classes) for t in scenario.tasks],
            train_transform=self.train_tf,
            device=device,
            meter=self.meter,
            seed=cfg.seed,
            steps_per_task=self.task_steps,
            input_size=size,
        )
        torch.manual_seed(cfg.seed)
        self.method.setup(backbone, self.info)
        self.backbone = backbone
        self.meter.watch_parameters([self.method.modules, backbone])
        self.cil, self.til = AccuracyMatrix(), AccuracyMatrix()
        self.seen_curve = SeenClassesCurve()
        self.per_task: list[dict[str, Any]] = []
        self.memory_peaks: dict[str, int] = {}
        self.train_samples = 0
        self.task_start = self.counters()  # the counters when the current task began
        self.position = {"task": 0, "epoch": 0, "batch": 0, "step": 0}
        self.epoch_indices = np.zeros(0, dtype=np.int64)
        self.elapsed_before = 0.0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def counters(self) -> dict[str, float]:
        """Cumulative training samples, FLOPs and seconds (per-task figures are differences)."""
        return {
            "samples": self.train_samples,
            "flops": self.meter.flops_summary(0)["train"]["total"],
            "time_s": self.meter.time_summary(0)["train_total"],
        }

    def task_info(self, t: int) -> TaskInfo:
        return TaskInfo(
            t, torch.as_tensor(self.scenario.tasks[t].classes), len(self.task_train[t]),
            self.task_steps[t],
        )

    # -- checkpointing --
    def checkpoint(self, elapsed: float) -> None:
        save_checkpoint(self.checkpoint_path, {
            "method": self.method.state_dict(),
            "position": dict(self.position),
            "epoch_indices": self.epoch_indices,
            "class_il": self.cil.rows, "task_il": self.til.rows,
            "seen_classes_curve": self.seen_curve.points,
            "per_task": self.per_task, "memory_peaks": self.memory_peaks,
            "train_samples": self.train_samples,
            "task_start": self.task_start,
            "meter": {
                "flops": dict(self.meter.flops), "seconds": dict(self.meter.seconds),
                "saved": self.meter.saved_bytes_per_step,
            },
            "torch_rng": torch.get_rng_state(),
            "elapsed": elapsed,
        })

    def restore(self) -> None:
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:
            raise RuntimeError(
                f"checkpoint {self.checkpoint_path} is unreadable ({exc}); delete it to restart "
                "this method from scratch"
            ) from exc
        self.position = state["position"]
        self.epoch_indices = state["epoch_indices"]
        t = self.position["task"]
        if t < len(self.scenario.tasks) and self.position["step"] > 0:
            self.method.begin_task(self.task_info(t))  # structures of the task, then overwrite
        elif t > 0:
            # Task t has not started: rebuild the structures task t-1 had, then overwrite.
            self.method.begin_task(self.task_info(t - 1))
        self.method.load_state_dict(state["method"])
        self.cil.rows, self.til.rows = state["class_il"], state["task_il"]
        self.seen_curve.points = state["seen_classes_curve"]
        self.per_task, self.memory_peaks = state["per_task"], state["memory_peaks"]
        self.train_samples = state["train_samples"]
        self.task_start = state["task_start"]
        self.meter.flops.update(state["meter"]["flops"])
        self.meter.seconds.update(state["meter"]["seconds"])
        self.meter.saved_bytes_per_step = state["meter"]["saved"]
        torch.set_rng_state(state["torch_rng"])
        self.elapsed_before = state["elapsed"]

    # -- training --
    def train_task(self, t: int, wall_start: float) -> None:
        """Epochs of task t from the current position (fresh, or restored mid-task)."""
        task = self.task_info(t)
        pos = self.position
        if pos["step"] == 0:
            self.method.begin_task(task)
            # methods may grow parameters per task: keep them out of activation memory
            self.meter.watch_parameters([self.method.modules, self.backbone])
            self.task_start = self.counters()
        for epoch in range(pos["epoch"], self.train_cfg.epochs):
            if pos["step"] >= task.n_steps:
                break
            if pos["batch"] == 0:  # a new epoch: the method may drop examples (e.g. SparCL DDR)
                self.epoch_indices = np.asarray(
                    self.method.begin_epoch(task, epoch, self.task_train[t]), dtype=np.int64)
            self.train_epoch(task, epoch, wall_start)
            pos = self.position = {**self.position, "epoch": epoch + 1, "batch": 0}
        self.method.end_task(task)
        start, done = self.task_start, self.counters()
        self.per_task.append({
            "task": t,
            "train_steps": self.position["step"],
            "train_samples": done["samples"] - start["samples"],
            "train_flops": done["flops"] - start["flops"],
            "train_time_s": done["time_s"] - start["time_s"],
        })
        for key, value in self.method.memory_breakdown().items():
            self.memory_peaks[key] = max(self.memory_peaks.get(key, 0), value)

    def train_epoch(self, task: TaskInfo, epoch: int, wall_start: float) -> None:
        t = task.index
        batches = iterate_batches(
            self.scenario.train, self.epoch_indices, self.train_cfg.batch_size,
            transform=self.train_tf, shuffle=True, seed=epoch_seed(self.cfg.seed, t, epoch),
            start_batch=self.position["batch"],
        )
        every = self.train_cfg.checkpoint_every_steps
        try:
            while self.position["step"] < task.n_steps:
                with self.meter.phase("data"):
                    item = next(batches, None)
                    if item is None:
                        break
                    x, y, idx = item
                    raw = torch.from_numpy(self.scenario.train.images[idx.numpy()])
                    batch = Batch(x.to(self.device), y.to(self.device), raw, idx, t, epoch)
                with self.meter.training_step():
                    stats = self.method.observe(batch)
                self.train_samples += stats.n_samples
                p = self.position
                self.position = {**p, "step": p["step"] + 1, "batch": p["batch"] + 1}
                self.progress(f"{self.spec.run_name}  task {t + 1}/{len(self.task_steps)}", 1)
                if every and self.position["step"] % every == 0:
                    self.checkpoint(self.elapsed_before + time.perf_counter() - wall_start)
        finally:
            batches.close()

    def evaluate_task(self, t: int) -> None:
        """Evaluate after task t as ``cfg.eval`` asks (per_task: every task)."""
        if self.cfg.eval.protocol == "seen_classes":
            if self.cfg.eval.due(t, len(self.scenario.tasks)):
                self.evaluate_seen_classes(t)
            return
        before = self.meter.seconds["eval"]
        cil, til = evaluate(
            self.method, self.scenario, t, self.eval_tf, self.train_cfg.eval_batch_size,
            self.meter, self.device,
        )
        self.cil.add_row(cil)
        self.til.add_row(til)
        self.per_task[-1]["eval_time_s"] = self.meter.seconds["eval"] - before
        self.per_task[-1]["class_il_average"] = self.cil.final_average()

    def evaluate_seen_classes(self, t: int) -> None:
        before = self.meter.seconds["eval"]
        n_seen, n_test, acc = evaluate_seen_classes(
            self.method, self.scenario, t, self.eval_tf, self.train_cfg.eval_batch_size,
            self.meter, self.device,
        )
        self.seen_curve.add_point(t, n_seen, n_test, acc)
        self.per_task[-1]["eval_time_s"] = self.meter.seconds["eval"] - before
        self.per_task[-1]["class_il_seen_classes"] = acc

    def run(self, resume: bool) -> dict[str, Any]:
        if resume and self.checkpoint_path.exists():
            self.restore()
        wall_start = time.perf_counter()
        nvml = NvmlEnergy(self.device)
        done_steps = sum(self.task_steps[: self.position["task"]]) + self.position["step"]
        self.progress(f"{self.spec.run_name}", done_steps)
        with self.meter.active():
            for t in range(self.position["task"], len(self.scenario.tasks)):
                self.train_task(t, wall_start)
                self.evaluate_task(t)
                self.position = {"task": t + 1, "epoch": 0, "batch": 0, "step": 0}
                self.checkpoint(self.elapsed_before + time.perf_counter() - wall_start)
        wall = self.elapsed_before + time.perf_counter() - wall_start
        return self.results(wall, nvml.joules())

    # -- results --
    def memory_summary(self) -> dict[str, Any]:
        saved = self.meter.saved_bytes_per_step or [0]
        state = sum(self.memory_peaks.get(k, 0) for k in (
            "parameter_bytes", "gradient_bytes", "optimizer_state_bytes", "buffer_bytes"))
        return {
            "peak_saved_for_backward_bytes": max(saved),
            "mean_saved_for_backward_bytes": float(np.mean(saved)),
            **{k: self.memory_peaks.get(k, 0) for k in (
                "parameter_bytes", "trainable_parameter_bytes", "gradient_bytes",
                "optimizer_state_bytes", "buffer_bytes")},
            "training_footprint_bytes": max(saved) + state,
            "training_footprint_mean_bytes": float(np.mean(saved)) + state,
            "peak_rss_bytes": peak_rss_bytes(),
            "cuda_max_allocated_bytes": (
                torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda"
                else None
            ),
        }

    def energy_summary(self, flops: dict[str, Any], memory: dict[str, Any],
                       measured: float | None) -> dict[str, Any]:
        steps = sum(self.task_steps)
        mem = self.memory_peaks
        # DRAM traffic model: activations written and read back once, weights read, gradients
        # and optimizer state read+written, every step; weights read per evaluation batch.
        train_bytes = steps * (
            2 * memory["mean_saved_for_backward_bytes"] + mem.get("parameter_bytes", 0)
            + 3 * mem.get("gradient_bytes", 0) + 2 * mem.get("optimizer_state_bytes", 0)
        )
        train_flops = flops["train"]["total"] + flops["selection"]
        times = self.meter.time_summary(0)
        estimates = {"host": host_estimate(
            times["train_total"], times["train_total"] + times["eval"], torch.get_num_threads())}
        for name in self.cfg.cost.device_profiles:
            prof = PROFILES[name]
            train = prof.estimate(train_flops, train_bytes)
            total = prof.estimate(train_flops + flops["eval"], train_bytes)
            estimates[name] = {
                "train_joules": train["joules"], "total_joules": total["joules"],
                "train_compute_seconds": train["compute_seconds"], "profile": prof.as_dict(),
            }
        return {
            "unit": "J", "estimates": estimates, "measured": measured,
            "note": "estimates, not measurements: device profiles use executed FLOPs and a "
                    "DRAM-traffic model (edgecl.metrics.devices); 'host' uses measured wall time "
                    "and an assumed power; 'measured' is NVML GPU energy when available",
        }

    def accuracy_summary(self) -> dict[str, Any]:
        if self.cfg.eval.protocol == "seen_classes":
            return {
                "protocol": "seen_classes",
                "class_il": self.seen_curve.summary(),
                "task_il": None,
                "seen_classes_curve": self.seen_curve.points,
            }
        return {"class_il": self.cil.summary(), "task_il": self.til.summary()}

    def results(self, wall: float, measured_joules: float | None) -> dict[str, Any]:
        flops = self.meter.flops_summary(self.train_samples)
        sparse = self.method.extra_results().get("sparse_flops")
        if sparse:
            flops["sparse"] = sparse
        memory = self.memory_summary()
        tasks = self.scenario.tasks
        return {
            "schema_version": SCHEMA_VERSION,
            "edgecl_version": __version__,
            "run_name": self.spec.run_name,
            "method": self.spec.name,
            "status": "completed",
            "config": {
                **self.cfg.model_dump(exclude={"methods"}),
                "method": self.spec.model_dump(),
                "method_params": self.method.params.model_dump(),  # defaults resolved
                "train": self.train_cfg.model_dump(),
                "optim": self.spec.optim_config(self.cfg.optim).model_dump(),
            },
            "environment": environment(self.device),
            "scenario": {
                "dataset": self.cfg.data.dataset,
                "n_tasks": len(tasks),
                "class_order": [int(c) for c in self.scenario.class_order],
                "classes_per_task": [len(t.classes) for t in tasks],
                "train_samples_per_task": [len(ix) for ix in self.task_train],
                "test_samples_per_task": [len(t.test_indices) for t in tasks],
            },
            "accuracy": self.accuracy_summary(),
            "cost": {
                "flops": flops,
                "memory": memory,
                "time_s": self.meter.time_summary(wall),
                "energy": self.energy_summary(flops, memory, measured_joules),
            },
            "per_task": self.per_task,
        }


# ---- a whole comparison ------------------------------------------------------------------
def method_dir(out_dir: Path, spec: MethodSpec) -> Path:
    return out_dir / spec.run_name


def load_completed(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return res if res.get("status") == "completed" else None


def run(
    cfg: RunConfig, out_dir: Path, *, resume: bool = False,
    progress_factory: Callable[[str, int], Callable[[str, int], None]] | None = None,
) -> list[dict[str, Any]]:
    """Run every method of ``cfg``; returns their results dicts (also written to disk)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.yaml",
                 lambda f: yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False),
                 mode="w")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    scenario = build_scenario(cfg)
    bundle: BackboneBundle | None = None
    results = []
    for spec in cfg.methods:
        run_dir = method_dir(out_dir, spec)
        done = load_completed(run_dir) if resume else None
        if done is not None:
            results.append(done)
            continue
        bundle = bundle or build_backbone(cfg)
        steps = [steps_in_task(len(train_indices(scenario, t, method_class(
            spec.name).trains_on_all_seen_data)), spec.train_config(cfg.train))
            for t in range(len(scenario.tasks))]
        progress = progress_factory(spec.run_name, sum(steps)) if progress_factory else None
        runner = MethodRun(cfg, spec, scenario, bundle, run_dir, device, progress)
        try:
            res = runner.run(resume=resume)
        except NonFiniteLossError as exc:
            write_json(run_dir / "failure.json", {"status": "failed", "error": str(exc),
                                                  "position": runner.position})
            raise
        write_json(run_dir / "results.json", res)
        results.append(res)
    return results
