"""``edgecl.Learner``: a persistent continual learner for one device.

Labelled samples arrive (:meth:`Learner.add`) and are stored durably before the call
returns; a background thread trains the configured method on them; predictions
(:meth:`Learner.predict`) use the last consistent snapshot and never wait for training. The
state directory holds everything (``samples.db``, ``checkpoint.pt``, ``learner.yaml``): a
learner killed at any moment and started again on it loses no acknowledged sample and
resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from edgecl.backbones.registry import create_backbone
from edgecl.data.base import resolve_data_root
from edgecl.errors import BudgetError, ConfigError, InputError
from edgecl.io import atomic_write_text
from edgecl.learner import budget as budget_plan
from edgecl.learner.config import LearnerConfig, load_learner_config
from edgecl.learner.engine import Engine
from edgecl.learner.evaluation import HeldOut
from edgecl.learner.images import check_label, decode, open_image
from edgecl.learner.memory import Migrator, RamTier, Sample
from edgecl.learner.store import SampleStore
from edgecl.learner.worker import Trainer
from edgecl.learner.yielding import PredictionGate, yield_to_predictions
from edgecl.metrics.cost import peak_rss_bytes
from edgecl.planner.proc import rss_bytes
from edgecl.runner.checkpoint import weights_sha256

log = logging.getLogger("edgecl.learner")
CONFIG_FILE = "learner.yaml"
MAX_KEY_CHARS = 128
STEP_RESERVE_MIB = 256  # transient memory of a training step and of a request in flight
# Fields a restart may not change: the stored checkpoint depends on them.
FIXED = ("max_classes", "backbone", "method", "seed")


class _Clock:
    """Seconds between laps into a dict (no-op without one)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into, self.last = into, time.perf_counter()

    def lap(self, name: str) -> None:
        if self.into is not None:
            now = time.perf_counter()
            self.into[name] = now - self.last
            self.last = now


def rss_mib() -> float:
    return rss_bytes() / 2**20


def peak_rss_mib() -> float:
    return peak_rss_bytes() / 2**20


class Learner:
    def __init__(self, state_dir: str | Path, config: Any = None, *, start: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = self._config(config)
        discard_torn_writes(self.state_dir)
        torch.set_num_threads(self.cfg.threads)
        self.store = SampleStore(self.state_dir / "samples.db")
        bundle = self._backbone()
        self.img_size = bundle.img_size
        self.gate = PredictionGate()
        s = self.cfg.service
        self.predict_threads = s.predict_threads or (
            os.cpu_count() or 1 if s.predictions_first else self.cfg.threads)
        planned = self._planning() and budget_plan.cached_choice(self.cfg, self.state_dir)
        self.choice: budget_plan.Choice | None = planned or None
        if planned:
            self.cfg = planned.apply(self.cfg)
        self._build_engines(bundle)
        self.predict_lock = threading.Lock()
        self.loaded_version = -1
        mem = self.cfg.memory
        self.ram = RamTier(self._ram_capacity(), mem.eviction, self.cfg.seed)
        if self._planning() and not planned:
            self._fit_budget(bundle)
        self.held_out = HeldOut.build(self.cfg, self)
        self.migrator = Migrator(
            self.store, self.ram, self.decode, 0, mem.migration, mem.refresh_every_s,
            mem.refresh_fraction, mem.queue_samples)
        self.migrator.nice = self.cfg.background_nice
        self.trainer = Trainer(self.cfg, self.trainer_engine, self.migrator, self.ram,
                               self.state_dir, weights_sha256(bundle.module),
                               self.held_out.evaluate if self.held_out else None,
                               after_task=self.enforce_budget)
        for row in self.store.by_ids(self.trainer.restore()):
            self.ram.put(Sample(row.id, row.class_id, self.decode(row.image)))
        self.migrator.last_queued = self.migrator.trained_up_to = (
            self.trainer.progress.last_trained_id)
        self.started = time.time()
        if start:
            self.start()

    def _config(self, config: Any) -> LearnerConfig:
        saved_path = self.state_dir / CONFIG_FILE
        saved = load_learner_config(saved_path) if saved_path.exists() else None
        cfg = load_learner_config(config) if config is not None else (saved or LearnerConfig())
        if saved is not None:
            changed = [f for f in FIXED if getattr(saved, f) != getattr(cfg, f)]
            if changed:
                raise ConfigError(
                    f"{self.state_dir} was trained with other {', '.join(changed)}; use that "
                    "config or a new --state directory")
        atomic_write_text(saved_path, yaml.safe_dump(cfg.model_dump(mode="json"),
                                                     sort_keys=False))
        return cfg

    def _backbone(self) -> Any:
        b = self.cfg.backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            return create_backbone(b.name, weights=b.weights, img_size=b.img_size,
                                   data_root=resolve_data_root(self.cfg.data_root))

    def _build_engines(self, bundle: Any) -> None:
        device = torch.device("cpu")
        self.trainer_engine = Engine(self.cfg, bundle, device)
        self.predictor = Engine(self.cfg, bundle, device)
        if self.cfg.service.predictions_first:
            yield_to_predictions(nn.ModuleList([self.trainer_engine.method.modules,
                                                self.trainer_engine.backbone]), self.gate)

    def _planning(self) -> bool:
        return self.cfg.budget.memory_mib is not None and self.cfg.budget.plan

    def _fit_budget(self, bundle: Any) -> None:
        """The planner's batch size and method knobs under the budget, for this process
        with its engines, RAM tier and decode queue at capacity; engines rebuilt if the
        knobs change."""
        per_sample = self.img_size * self.img_size * 3 / 2**20
        resident = rss_mib() + per_sample * (self.ram.capacity + self.cfg.memory.queue_samples)
        choice = self.choice = budget_plan.choose(self.cfg, resident, self.state_dir)
        chosen = choice.apply(self.cfg)
        if chosen is not self.cfg:
            self.cfg = chosen
            del self.trainer_engine, self.predictor
            gc.collect()
            self._build_engines(bundle)

    def _ram_capacity(self) -> int:
        """The RAM tier's capacity: as configured, or less so that the learner's RSS stays
        under ``budget.memory_mib`` (measured now, with every model loaded, plus a reserve
        for a training step); a budget the loaded learner already exceeds is refused."""
        wanted, budget = self.cfg.memory.ram_samples, self.cfg.budget.memory_mib
        if budget is None:
            return wanted
        now = rss_mib()
        per_sample = self.img_size * self.img_size * 3 / 2**20
        # with the planner, what a step adds is predicted next; without, a fixed reserve
        reserve = budget_plan.REQUEST_RESERVE_MIB if self._planning() else STEP_RESERVE_MIB
        room = budget - now - reserve
        if room < 0:
            raise BudgetError(
                f"budget.memory_mib {budget} is below what the loaded learner needs "
                f"({now:.0f} MiB now + {reserve} MiB reserved); raise it to at least "
                f"{now + reserve:.0f}, or use a smaller backbone or backbone.img_size "
                "(`edgecl plan` predicts each option)")
        fits = int(room / per_sample)
        if fits < wanted:
            log.warning("budget %d MiB: the RAM tier holds %d samples instead of %d", budget,
                        fits, wanted)
        return min(wanted, fits)

    def enforce_budget(self) -> None:
        """After a task: over 95 % of the budget, the RAM tier gives up half its samples."""
        budget = self.cfg.budget.memory_mib
        if budget is not None and rss_mib() > 0.95 * budget and self.ram.capacity:
            self.ram.shrink(self.ram.capacity // 2)
            log.warning("RSS near the %d MiB budget: RAM tier capacity now %d", budget,
                        self.ram.capacity)

    def start(self) -> None:
        self.migrator.start()
        self.trainer.start()

    def close(self, checkpoint: bool = True) -> None:
        """Stop the threads (a task in training finishes) and write a final checkpoint."""
        self.migrator.stop()
        self.trainer.stop()
        if self.trainer.is_alive():
            self.trainer.join()
        if self.migrator.is_alive():
            self.migrator.join()
        if checkpoint and self.trainer.unsaved() and self.trainer.progress.train_steps:
            self.trainer.save_checkpoint()
        self.store.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- samples in --
    def decode(self, data: bytes) -> np.ndarray:
        return decode(data, self.img_size)

    def decode_array(self, image: np.ndarray) -> np.ndarray:
        """A dataset's uint8 (H, W, C) image as the learner stores samples."""
        from PIL import Image

        rgb = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("RGB")
        return np.asarray(rgb.resize((self.img_size, self.img_size), Image.BILINEAR))

    def add(self, images: list[bytes], labels: list[Any],
            keys: list[str | None] | None = None) -> list[int]:
        """Validate and durably store labelled samples; their ids (an existing id for a key
        already stored). Raises :class:`InputError` and stores nothing on bad input."""
        if not images:
            raise InputError("no image: send one or more 'image' parts")
        if len(labels) != len(images):
            raise InputError(f"{len(images)} images but {len(labels)} labels: send one "
                             "'label' per image, in the same order")
        keys = list(keys) if keys else [None] * len(images)
        if len(keys) != len(images):
            raise InputError(f"{len(images)} images but {len(keys)} keys")
        for i, key in enumerate(keys):
            if key is not None and (not isinstance(key, str) or not key
                                    or len(key) > MAX_KEY_CHARS):
                raise InputError(f"key {i}: must be text of 1 to {MAX_KEY_CHARS} characters")
        labels = [check_label(label, i) for i, label in enumerate(labels)]
        for i, data in enumerate(images):
            open_image(data, i)
        known = self.store.classes()
        new = {label for label in labels if label not in known}
        if len(known) + len(new) > self.cfg.max_classes:
            raise InputError(f"class capacity reached: {len(known)} classes known, "
                             f"{len(new)} new, max_classes is {self.cfg.max_classes}")
        ids = self.store.add(images, labels, keys)
        self.migrator.wake.set()
        return ids

    # -- predictions --
    def _predictor(self) -> tuple[Engine, int]:
        snap = self.trainer.snapshot  # one reference read: a consistent snapshot
        if snap.version != self.loaded_version:
            self.predictor.load(snap.task, snap.state)
            self.loaded_version = snap.version
        return self.predictor, snap.version

    def logits(self, images: np.ndarray, timings: dict[str, float] | None = None
               ) -> tuple[torch.Tensor, int, int]:
        """Logits over the trained classes of (B, S, S, 3) uint8 images, the model version
        and the number of classes they cover. ``timings`` gets the seconds spent waiting for
        the prediction engine (``wait``), loading a newer snapshot (``load``) and in the
        model (``model``)."""
        clock = _Clock(timings)
        # the thread count goes back before the gate opens: training resumes with its own
        with self.gate.predicting(), self.predict_lock, torch_threads(self.predict_threads):
            clock.lap("wait")
            engine, version = self._predictor()
            clock.lap("load")
            logits = engine.method.predict(engine.inputs(images))
            n = engine.method.seen_classes
            clock.lap("model")
        return logits[:, :n], version, n

    def predict(self, images: list[bytes], top: int | None = None,
                timings: dict[str, float] | None = None) -> dict[str, Any]:
        """Predictions for encoded images; ``timings`` (if given) gets the seconds of each
        part: ``decode`` and those of :meth:`logits`."""
        if not images:
            raise InputError("no image: send one or more 'image' parts")
        clock = _Clock(timings)
        arrays = np.stack([decode(data, self.img_size, i) for i, data in enumerate(images)])
        clock.lap("decode")
        logits, version, n = self.logits(arrays, timings)
        names = self.store.classes()
        k = min(top or self.cfg.service.top_k, n)
        out = []
        for row in logits.softmax(dim=1) if n else [None] * len(images):
            if row is None:
                out.append({"label": None, "score": 0.0, "top": []})
                continue
            scores, idx = row.topk(k)
            ranked = [[names[i], float(s)] for s, i in zip(scores.tolist(), idx.tolist(),
                                                          strict=True)]
            out.append({"label": ranked[0][0], "score": ranked[0][1], "top": ranked})
        return {"predictions": out, "model_version": version}

    # -- state --
    def checkpoint(self) -> dict[str, float]:
        return self.trainer.save_checkpoint()

    def status(self) -> dict[str, Any]:
        p = self.trainer.progress
        stored = self.store.count()
        queued = self.store.count(after=p.last_trained_id)
        now = rss_mib()
        return {
            "samples_stored": stored,
            "classes": self.store.classes(),
            "model_version": p.model_version,
            "train_steps": p.train_steps,
            "tasks": p.task_index + 1,
            "samples_trained": p.samples_trained,
            "queue": max(0, queued),
            "training": self.trainer.busy,
            "rolled_back_updates": p.rolled_back,
            "memory": {"rss_mib": round(now, 1), "peak_rss_mib": round(max(now, peak_rss_mib()), 1),
                       "budget_mib": self.cfg.budget.memory_mib,
                       "ram_tier_samples": len(self.ram), "ram_tier_capacity": self.ram.capacity,
                       "planned": None if self.choice is None else {
                           "batch_size": self.choice.batch_size, "changed": self.choice.params,
                           "predicted_peak_mib": round(self.choice.predicted_peak_mib, 1)}},
            "last_checkpoint": self.trainer.last_checkpoint,
            "method": self.cfg.method.name,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def history(self) -> dict[str, Any]:
        """Samples and classes over time, held-out accuracy over time (the status page)."""
        return {"samples": [{"time": t, "samples": n, "classes": c}
                            for t, n, c in self.store.history()],
                "accuracy": self.trainer.progress.accuracy}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count (process-wide) set to ``n`` for the block."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def discard_torn_writes(state_dir: Path) -> None:
    """Temp files of an atomic write that a crash interrupted: never read, removed."""
    for tmp in state_dir.glob(".*.tmp"):
        log.warning("discarding torn write %s (a crash interrupted it)", tmp.name)
        tmp.unlink(missing_ok=True)
