"""Latent replay with a CWR* head: AR1* (Pellegrini et al. 2020) and ViT-LR (Dequino et al. 2022).

The backbone is split at layer ``k``: layers ``< k`` are frozen and run once per new sample
under ``no_grad``; a buffer of ``rm_sz`` layer-k activations (ViT: the whole token sequence,
CNN: the feature map) is replayed by concatenating it to the new samples' activations at
layer k, so replay costs no forward pass through the frozen part.

Per incremental batch ``i`` (one runner task; on Split CIFAR-100 each task is one batch),
following ``vlomonaco/ar1-pytorch`` and ``Dequino/ViT-LR``:

- *mixing*: ``cur_sz = N_cur // ((N_cur + rm_sz) // mb_size)`` new samples and
  ``mb_size − cur_sz`` replayed latents per minibatch (none in batch 0). The runner hands
  ``observe`` minibatches of ``train.batch_size`` new samples; each is joined by
  ``round(batch_size · (mb_size − cur_sz) / cur_sz)`` latents, which is exactly the reference
  minibatch when ``train.batch_size == cur_sz``. Latents are taken in buffer order, from the
  start again every epoch (``replay_order: random`` draws them instead).
- *buffer update* after the batch: ``h = min(rm_sz // (i+1), N_cur)`` latents of the batch
  (a uniform random subset of those computed in its first epoch) overwrite ``h`` random
  slots; the first batch fills the buffer with its ``h``. In the reference the buffer never
  grows past the first batch's ``h`` (``grow_buffer: true`` fills empty slots first).
- *CWR\\* head*: before the batch the head is zeroed and the consolidated weights of the
  batch's classes (its own ∪ those in the buffer) are loaded; after it, the scalar mean of
  those rows is subtracted and ``w̄_c ← (w̄_c·√(past_c/cur_c) + w_c) / (√(past_c/cur_c) + 1)``
  (``w̄_c = w_c`` for a new class); evaluation uses ``w̄``. ``cur_c`` counts the batch's and
  the buffer's examples of class c, ``past_c`` accumulates them. ``head: plain`` trains a
  normal linear head instead.
- ViT-LR hyper-parameters: SGD momentum 0.9, L2 5e-4, lr 1e-3 on the first batch and 5e-5
  afterwards (the optimizer is rebuilt when the lr changes and kept after that), 4 epochs
  (``train.epochs``), latents after the last block (only the final norm and head train).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.efficiency.feature_cache import (
    FeatureCache,
    FeatureCacheConfigError,
    Storage,
    TensorStore,
    require_unaugmented,
)
from edgecl.efficiency.freezing import (
    FreezeSpec,
    FrozenPrefix,
    is_vit,
    layer_names,
    resolve_freeze_point,
)
from edgecl.methods.base import (
    Batch,
    BenchmarkInfo,
    Method,
    MethodParams,
    StepStats,
    TaskInfo,
    feature_dim_of,
)


class LatentReplayParams(MethodParams):
    # Frozen layers before the latent layer: a count or a layer name (frozen up to and
    # including it). None: ViT all blocks (ViT-LR); ResNet-18 up to layer3; EfficientNet up
    # to stage6.
    split_layer: FreezeSpec = None
    rm_sz: int = 1500
    storage: Storage = "fp32"
    mb_size: int = 100
    replay_per_step: int | None = None  # None: the mixing rule above
    replay_order: Literal["sequential", "random"] = "sequential"
    grow_buffer: bool = False
    head: Literal["cwr_star", "plain"] = "cwr_star"
    lr_init: float | None = 1e-3  # None: optim.lr
    lr_inc: float | None = 5e-5
    momentum: float | None = 0.9  # None: optim.momentum
    weight_decay: float | None = 5e-4  # None: optim.weight_decay
    optimizer_reset: Literal["lr_change", "each_task"] = "lr_change"
    cache_features: bool = False
    cache_storage: Storage = "fp32"


# ---- the rules, as small functions -----------------------------------------------------------
def mixing_sizes(n_cur: int, rm_sz: int, mb_size: int) -> tuple[int, int, int]:
    """(cur_sz, n_inject, iterations per epoch) of the reference for a batch of n_cur."""
    cur_sz = max(1, n_cur // max(1, (n_cur + rm_sz) // mb_size))
    return cur_sz, max(0, mb_size - cur_sz), n_cur // cur_sz


def replay_count(batch_len: int, cur_sz: int, n_inject: int) -> int:
    """Latents joining a runner minibatch of ``batch_len`` new samples (same ratio)."""
    return int(round(batch_len * n_inject / cur_sz))


def replacement_count(rm_sz: int, batch_index: int, n_cur: int) -> int:
    """h = min(rm_sz // (i + 1), N_cur): latents of batch i that enter the buffer."""
    return min(rm_sz // (batch_index + 1), n_cur)


def reservoir_slots(seen: int, n: int, capacity: int, generator: torch.Generator) -> Tensor:
    """Slot for each of n arriving items (-1 = dropped): a uniform capacity-subset overall."""
    positions = torch.arange(seen, seen + n)
    draws = (torch.rand(n, generator=generator, dtype=torch.float64) * (positions + 1)).long()
    keep = torch.where(draws < capacity, draws, torch.full_like(draws, -1))
    return torch.where(positions < capacity, positions, keep)


def default_split(backbone: nn.Module) -> int:
    names = layer_names(backbone)
    if is_vit(backbone):
        return len(names)  # ViT-LR: the latent layer is the last block's output
    for stage in ("layer3", "stage6"):
        if stage in names:
            return names.index(stage) + 1
    return max(0, len(names) - 1)


@torch.no_grad()
def cwr_reset(weight: Tensor, saved: Tensor, has_saved: Tensor, cur: Tensor) -> None:
    """Zero the head, then load the consolidated rows of the current classes."""
    weight.zero_()
    load = cur & has_saved
    weight[load] = saved[load].to(weight.dtype)


@torch.no_grad()
def cwr_consolidate(
    weight: Tensor, saved: Tensor, has_saved: Tensor, cur: Tensor, past_j: Tensor,
    cur_j: Tensor,
) -> None:
    """CWR* consolidation of the current classes' rows into ``saved`` (in place)."""
    classes = torch.nonzero(cur).squeeze(1)
    if len(classes) == 0:
        return
    rows = weight[classes].detach().float()
    centred = rows - rows.mean()  # the reference subtracts one scalar: the mean of all rows
    for row, c in zip(centred, classes.tolist(), strict=True):
        if has_saved[c] and cur_j[c] > 0:
            wp = float(torch.sqrt(past_j[c].double() / cur_j[c].double()))
            saved[c] = (saved[c] * wp + row) / (wp + 1)
        elif not has_saved[c]:
            saved[c] = row
            has_saved[c] = True


@torch.no_grad()
def cwr_apply(weight: Tensor, saved: Tensor, has_saved: Tensor) -> None:
    weight[has_saved] = saved[has_saved].to(weight.dtype)


class LatentBuffer:
    """``rm_sz`` latents (fp32/fp16/int8) with labels; the reference's replacement rule."""

    def __init__(self, capacity: int, storage: Storage) -> None:
        self.store = TensorStore(capacity, storage)
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def nbytes(self) -> int:
        return self.store.nbytes() + self.labels.numel() * self.labels.element_size()

    def update(self, latents: Tensor, labels: Tensor, generator: torch.Generator,
               grow: bool) -> None:
        """Put ``len(latents)`` (= h) new latents in: free slots (first batch, or grow), then
        over random distinct occupied slots."""
        h = len(labels)
        if h == 0:
            return
        n_free = min(h, self.store.capacity - self.size) if (grow or self.size == 0) else 0
        slots = [torch.arange(self.size, self.size + n_free)]
        n_replace = min(h - n_free, self.size)
        slots.append(torch.randperm(self.size, generator=generator)[:n_replace])
        dst = torch.cat(slots)
        self.store.write(dst, latents[: len(dst)])
        self.labels[dst] = labels[: len(dst)]
        self.size += n_free

    def read(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        return self.store.read(slots), self.labels[slots]

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "labels": self.labels, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state["store"])
        self.labels, self.size = state["labels"], state["size"]


class LatentReservoir:
    """A uniform random subset of ``capacity`` of the latents streaming by."""

    def __init__(self, capacity: int, storage: Storage) -> None:
        self.store = TensorStore(capacity, storage)
        self.labels = torch.zeros(capacity, dtype=torch.long)
        self.seen = 0

    def __len__(self) -> int:
        return min(self.seen, self.store.capacity)

    def nbytes(self) -> int:
        return self.store.nbytes() + self.labels.numel() * self.labels.element_size()

    def add(self, latents: Tensor, labels: Tensor, generator: torch.Generator) -> None:
        slots = reservoir_slots(self.seen, len(labels), self.store.capacity, generator)
        self.seen += len(labels)
        for src, dst in enumerate(slots.tolist()):  # in arrival order: a later draw wins
            if dst >= 0:
                self.store.write(torch.tensor([dst]), latents[src : src + 1])
                self.labels[dst] = labels[src]

    def contents(self) -> tuple[Tensor, Tensor]:
        n = len(self)
        if n == 0:
            return torch.zeros(0), self.labels[:0]
        return self.store.read(torch.arange(n)), self.labels[:n].clone()

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "labels": self.labels, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state["store"])
        self.labels, self.seen = state["labels"], state["seen"]


# ---- the method --------------------------------------------------------------------------------
class LatentReplay(Method):
    name = "latent_replay"
    Params = LatentReplayParams
    params: LatentReplayParams

    def setup(self, backbone: nn.Module, info: BenchmarkInfo) -> None:
        super().setup(backbone, info)
        p = self.params
        k = resolve_freeze_point(backbone, p.split_layer, default_split(backbone))
        self.frozen = FrozenPrefix(backbone, k, "eval")
        cwr = p.head == "cwr_star"
        self.head = nn.Linear(feature_dim_of(backbone), info.num_classes, bias=not cwr)
        if cwr:
            nn.init.zeros_(self.head.weight)
        self.modules["backbone"] = backbone.to(self.device)
        self.modules["head"] = self.head.to(self.device)
        self.base_optim = self.optim_cfg
        self.buffer = LatentBuffer(p.rm_sz, p.storage)
        self.pending = LatentReservoir(0, p.storage)
        c, d = info.num_classes, feature_dim_of(backbone)
        self.saved = torch.zeros(c, d)
        self.has_saved = torch.zeros(c, dtype=torch.bool)
        self.past_j = torch.zeros(c, dtype=torch.long)
        self.task_counts = torch.zeros(c, dtype=torch.long)
        self.buffer_counts = torch.zeros(c, dtype=torch.long)
        self.cur_class = torch.zeros(c, dtype=torch.bool)
        self.cursor, self.cursor_epoch = 0, -1
        self.mix = (1, 0, 0)
        self.peak_bytes = 0
        self.cache: FeatureCache | None = None
        if p.cache_features:
            require_unaugmented(info.train_transform, self.name)
            if k == 0:
                raise FeatureCacheConfigError("latent_replay: cache_features needs split_layer > 0")
            self.cache = FeatureCache(p.cache_storage)

    # ---- lifecycle -----------------------------------------------------------------------
    def optim_for(self, index: int) -> None:
        p, base = self.params, self.base_optim
        lr = p.lr_init if index == 0 else p.lr_inc
        self.optim_cfg = base.model_copy(update={
            "lr": base.lr if lr is None else lr,
            "momentum": base.momentum if p.momentum is None else p.momentum,
            "weight_decay": base.weight_decay if p.weight_decay is None else p.weight_decay,
            "reset_each_task": p.optimizer_reset == "each_task" or index <= 1,
        })

    def begin_task(self, task: TaskInfo) -> None:
        p, previous = self.params, self.seen_classes
        h = replacement_count(p.rm_sz, task.index, task.n_train)
        self.pending = LatentReservoir(h, p.storage)
        self.task_counts.zero_()
        self.cursor, self.cursor_epoch = 0, -1
        self.mix = mixing_sizes(task.n_train, p.rm_sz, p.mb_size)
        labels = self.buffer.labels[: len(self.buffer)]
        self.buffer_counts = torch.bincount(labels, minlength=self.info.num_classes)
        self.cur_class.zero_()
        self.cur_class[task.classes.long()] = True
        self.cur_class[labels] = True
        if p.head == "cwr_star":
            cwr_reset(self.head.weight, self.saved, self.has_saved, self.cur_class)
        if self.cache is not None:
            self.cache.clear()
            self.cache.reserve(task.n_train)
        self.optim_for(task.index)
        self.peak_bytes = 0
        super().begin_task(task)
        self.seen_classes = max(previous, self.seen_classes)

    def prefix_of(self, batch: Batch) -> Tensor:
        if self.cache is not None:
            return self.cache.fetch(batch.index, batch.x, self.frozen.prefix)
        return self.frozen.prefix(batch.x)

    def replay(self, n_batch: int, epoch: int) -> tuple[Tensor, Tensor] | None:
        if self.task_index == 0 or len(self.buffer) == 0:
            return None
        p = self.params
        n = p.replay_per_step if p.replay_per_step is not None else replay_count(
            n_batch, self.mix[0], self.mix[1])
        if p.replay_order == "random":
            slots = torch.randperm(len(self.buffer), generator=self.rng)[:n]
        else:
            if epoch != self.cursor_epoch:
                self.cursor, self.cursor_epoch = 0, epoch
            size = len(self.buffer)
            slots = torch.arange(min(self.cursor, size), min(self.cursor + n, size))
            self.cursor += n
        if len(slots) == 0:
            return None
        latents, labels = self.buffer.read(slots)
        return latents.to(self.device), labels.to(self.device)

    def observe(self, batch: Batch) -> StepStats:
        self.frozen.train_mode()
        with self.meter.phase("forward"):
            h, y = self.prefix_of(batch), batch.y
            if batch.epoch == 0:
                self.pending.add(h, y.cpu(), self.rng)
                self.task_counts += torch.bincount(y.cpu(), minlength=self.info.num_classes)
            replayed = self.replay(len(y), batch.epoch)
            if replayed is not None:
                h = torch.cat([h, replayed[0].to(h.dtype)])
                y = torch.cat([y, replayed[1]])
            loss = F.cross_entropy(self.head(self.frozen.suffix(h)), y)
        self.optimize(loss)
        self.peak_bytes = max(self.peak_bytes, self.current_bytes())
        return StepStats(float(loss.detach()), len(y), {"replayed": float(len(y) - len(batch.y))})

    def end_task(self, task: TaskInfo) -> None:
        if self.params.head == "cwr_star":
            cur_j = self.task_counts + self.buffer_counts
            cwr_consolidate(self.head.weight, self.saved, self.has_saved, self.cur_class,
                            self.past_j, cur_j)
            cwr_apply(self.head.weight, self.saved, self.has_saved)
            self.past_j += cur_j
        latents, labels = self.pending.contents()
        self.buffer.update(latents, labels, self.rng, self.params.grow_buffer)
        self.peak_bytes = max(self.peak_bytes, self.current_bytes())
        self.pending = LatentReservoir(0, self.params.storage)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        self.frozen.eval_mode()
        return self.head(self.frozen.features(x))

    # ---- accounting / resume ---------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Latent buffer + this task's pending latents + CWR* statistics + cache: the largest
        total of the current task (the runner samples at task ends)."""
        return max(self.peak_bytes, self.current_bytes())

    def current_bytes(self) -> int:
        head_state = sum(t.numel() * t.element_size() for t in (
            self.saved, self.has_saved, self.past_j)) if self.params.head == "cwr_star" else 0
        cache = self.cache.nbytes() if self.cache is not None else 0
        return self.buffer.nbytes() + self.pending.nbytes() + head_state + cache

    def extra_state(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(), "pending": self.pending.state_dict(),
            "saved": self.saved, "has_saved": self.has_saved, "past_j": self.past_j,
            "task_counts": self.task_counts, "buffer_counts": self.buffer_counts,
            "cur_class": self.cur_class, "cursor": (self.cursor, self.cursor_epoch),
            "mix": self.mix, "cache": self.cache.state_dict() if self.cache else None,
            "peak_bytes": self.peak_bytes,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.pending = LatentReservoir(0, self.params.storage)
        self.pending.load_state_dict(state["pending"])
        self.saved, self.has_saved = state["saved"], state["has_saved"]
        self.past_j, self.task_counts = state["past_j"], state["task_counts"]
        self.buffer_counts, self.cur_class = state["buffer_counts"], state["cur_class"]
        self.cursor, self.cursor_epoch = state["cursor"]
        self.mix = tuple(state["mix"])
        self.peak_bytes = state["peak_bytes"]
        if self.cache is not None and state["cache"] is not None:
            self.cache.load_state_dict(state["cache"])
