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
- *CWR\\* head* (:mod:`edgecl.efficiency.cwr`): before the batch the head is zeroed and the
  consolidated weights of the batch's classes (its own ∪ those in the buffer) are loaded;
  after it, the rows are consolidated by class counts; evaluation uses the consolidated
  weights. ``head: plain`` trains a normal linear head instead.
- *first batch* (``first_batch``): ``runner`` trains batch 0 in the runner's minibatches of
  ``train.batch_size``; ``reference`` does what ar1-pytorch does (``pad_data``): minibatches
  of ``mb_size`` (100), the batch padded to a multiple of it. The runner's minibatches are
  gathered (their frozen-prefix latents) until ``mb_size`` are queued, then one update runs on
  those ``mb_size``; the last group of an epoch is padded with the epoch's first latents, as
  the reference prepends its first samples. The padding duplicates are not buffer candidates
  (in the reference they may be), and a step that only queues reports ``n_samples`` 0.
- ViT-LR hyper-parameters: SGD momentum 0.9, L2 5e-4, lr 1e-3 on the first batch and 5e-5
  afterwards (the optimizer is rebuilt when the lr changes and kept after that), 4 epochs
  (``train.epochs``), latents after the last block (only the final norm and head train).

The frozen prefix and its optional per-sample cache are
:class:`~edgecl.efficiency.prefix_features.PrefixFeatures`; the buffers are
:mod:`edgecl.efficiency.latent_buffers`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl.efficiency.cwr import CWRStar
from edgecl.efficiency.feature_cache import Storage
from edgecl.efficiency.freezing import (
    FreezeSpec,
    FrozenPrefix,
    is_vit,
    layer_names,
    reference_cnn_split,
    resolve_freeze_point,
)
from edgecl.efficiency.latent_buffers import LatentBuffer, LatentReservoir
from edgecl.efficiency.prefix_features import PrefixFeatures
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
    first_batch: Literal["runner", "reference"] = "runner"  # reference: pad, mb_size steps


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



class FirstBatchGroups:
    """Minibatches of ``mb_size`` from runner minibatches of any size, each epoch of ``n``
    samples padded to a multiple of ``mb_size`` with its first samples (ar1-pytorch's
    ``pad_data``): ``ceil(n / mb_size)`` groups per epoch."""

    def __init__(self, mb_size: int, n: int = 0) -> None:
        self.mb_size, self.n = mb_size, n
        self.queue: list[tuple[Tensor, Tensor]] = []
        self.head: list[tuple[Tensor, Tensor]] = []  # the epoch's first mb_size samples
        self.epoch, self.seen = -1, 0

    def queued(self) -> int:
        return sum(len(y) for _, y in self.queue)

    def _take(self, count: int) -> tuple[Tensor, Tensor]:
        h = torch.cat([a for a, _ in self.queue])
        y = torch.cat([b for _, b in self.queue])
        self.queue = [(h[count:], y[count:])] if len(y) > count else []
        return h[:count], y[:count]

    def add(self, h: Tensor, y: Tensor, epoch: int) -> list[tuple[Tensor, Tensor]]:
        """The full groups ready after this runner minibatch (the last padded at epoch end)."""
        out = self.flush() if epoch != self.epoch else []
        if epoch != self.epoch:
            self.epoch, self.seen, self.head = epoch, 0, []
        if sum(len(b) for _, b in self.head) < self.mb_size:
            self.head.append((h, y))
        self.queue.append((h, y))
        self.seen += len(y)
        while self.queued() >= self.mb_size:
            out.append(self._take(self.mb_size))
        if self.n and self.seen >= self.n:
            out.extend(self.flush())
        return out

    def state_dict(self) -> dict[str, Any]:
        def pair(parts: list[tuple[Tensor, Tensor]]) -> list[Tensor] | None:
            return [torch.cat([a for a, _ in parts]).cpu(),
                    torch.cat([b for _, b in parts]).cpu()] if parts else None
        return {"queue": pair(self.queue), "head": pair(self.head), "epoch": self.epoch,
                "seen": self.seen, "n": self.n}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        def parts(saved: list[Tensor] | None) -> list[tuple[Tensor, Tensor]]:
            return [(saved[0].to(device), saved[1].to(device))] if saved else []
        self.queue, self.head = parts(state["queue"]), parts(state["head"])
        self.epoch, self.seen, self.n = state["epoch"], state["seen"], state["n"]

    def flush(self) -> list[tuple[Tensor, Tensor]]:
        """The queued rest, padded with the epoch's first samples to one group (or none)."""
        missing = self.mb_size - self.queued()
        if not self.queue or missing <= 0:
            return []
        pad_h = torch.cat([a for a, _ in self.head])[:missing]
        pad_y = torch.cat([b for _, b in self.head])[:missing]
        self.queue.append((pad_h, pad_y))
        return [self._take(self.mb_size)]


def default_split(backbone: nn.Module) -> int:
    if is_vit(backbone):
        return len(layer_names(backbone))  # ViT-LR: the latent layer is the last block's output
    cnn = reference_cnn_split(backbone)
    return cnn if cnn is not None else max(0, len(layer_names(backbone)) - 1)


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
        dim = feature_dim_of(backbone)
        self.cwr = CWRStar(info.num_classes, dim) if p.head == "cwr_star" else None
        self.head = nn.Linear(dim, info.num_classes, bias=self.cwr is None)
        if self.cwr is not None:
            nn.init.zeros_(self.head.weight)
        self.modules["backbone"] = backbone.to(self.device)
        self.modules["head"] = self.head.to(self.device)
        storage = p.cache_storage if p.cache_features else None
        self.features = PrefixFeatures.build(self.frozen, storage, info.train_transform,
                                             self.name, "split_layer", self.meter)
        self.base_optim = self.optim_cfg
        self.buffer = LatentBuffer(p.rm_sz, p.storage)
        self.pending = LatentReservoir(0, p.storage)
        self.cursor, self.cursor_epoch = 0, -1
        self.mix = (1, 0, 0)
        self.group = FirstBatchGroups(p.mb_size)

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
        p = self.params
        h = replacement_count(p.rm_sz, task.index, task.n_train)
        self.pending = LatentReservoir(h, p.storage)
        self.cursor, self.cursor_epoch = 0, -1
        self.mix = mixing_sizes(task.n_train, p.rm_sz, p.mb_size)
        if self.cwr is not None:
            self.cwr.begin_batch(self.head.weight, task.classes, self.buffer.stored_labels())
        self.features.begin_task(task.n_train)
        self.optim_for(task.index)
        self.group = FirstBatchGroups(p.mb_size, task.n_train)
        super().begin_task(task)

    def replay_slots(self, n: int, epoch: int) -> Tensor:
        size = len(self.buffer)
        if self.params.replay_order == "random":
            return torch.randperm(size, generator=self.rng)[:n]
        if epoch != self.cursor_epoch:
            self.cursor, self.cursor_epoch = 0, epoch
        slots = torch.arange(min(self.cursor, size), min(self.cursor + n, size))
        self.cursor += n
        return slots

    def replay(self, n_batch: int, epoch: int) -> tuple[Tensor, Tensor] | None:
        if self.task_index == 0 or len(self.buffer) == 0:
            return None
        p = self.params
        n = p.replay_per_step if p.replay_per_step is not None else replay_count(
            n_batch, self.mix[0], self.mix[1])
        slots = self.replay_slots(n, epoch)
        return self.buffer.read(slots, self.device) if len(slots) else None

    def observe(self, batch: Batch) -> StepStats:
        self.frozen.train_mode()
        with self.meter.phase("forward"):
            h, y = self.features(batch.x, batch.index), batch.y
            if batch.epoch == 0:
                self.pending.add(h, y.cpu(), self.rng)
                if self.cwr is not None:
                    self.cwr.count(y)
        if self.task_index == 0 and self.params.first_batch == "reference":
            return self.observe_grouped(h, y, batch.epoch)
        with self.meter.phase("forward"):
            replayed = self.replay(len(y), batch.epoch)
            if replayed is not None:
                h = torch.cat([h, replayed[0].to(h.dtype)])
                y = torch.cat([y, replayed[1]])
            loss = F.cross_entropy(self.head(self.frozen.suffix(h)), y)
        self.optimize(loss)
        return StepStats(float(loss.detach()), len(y), {"replayed": float(len(y) - len(batch.y))})

    def observe_grouped(self, h: Tensor, y: Tensor, epoch: int) -> StepStats:
        """Batch 0 as the reference trains it: one update per ``mb_size`` queued latents."""
        loss_value, n = 0.0, 0
        for gh, gy in self.group.add(h.detach(), y, epoch):
            with self.meter.phase("forward"):
                loss = F.cross_entropy(self.head(self.frozen.suffix(gh)), gy)
            self.optimize(loss)
            loss_value, n = float(loss.detach()), n + len(gy)
        return StepStats(loss_value, n, {"replayed": 0.0})

    def end_task(self, task: TaskInfo) -> None:
        for gh, gy in self.group.flush():  # an epoch cut short (train.max_steps_per_task)
            with self.meter.phase("forward"):
                loss = F.cross_entropy(self.head(self.frozen.suffix(gh)), gy)
            self.optimize(loss)
        if self.cwr is not None:
            self.cwr.end_batch(self.head.weight)
        latents, labels = self.pending.contents()
        self.buffer.update(latents, labels, self.rng, self.params.grow_buffer)
        self.pending = LatentReservoir(0, self.params.storage)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        self.frozen.eval_mode()
        return self.head(self.frozen.features(x))

    # ---- accounting / resume ---------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Latent buffer + this task's pending latents + CWR* statistics + cache, as held now."""
        head_state = self.cwr.nbytes() if self.cwr is not None else 0
        return self.buffer.nbytes() + self.pending.nbytes() + head_state + self.features.nbytes()

    def extra_state(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(), "pending": self.pending.state_dict(),
            "cwr": self.cwr.state_dict() if self.cwr is not None else None,
            "cursor": (self.cursor, self.cursor_epoch), "mix": self.mix,
            "cache": self.features.state_dict(),
            "first_batch_groups": self.group.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.pending = LatentReservoir(0, self.params.storage)
        self.pending.load_state_dict(state["pending"])
        if self.cwr is not None:
            self.cwr.load_state_dict(state["cwr"])
        self.cursor, self.cursor_epoch = state["cursor"]
        self.mix = tuple(state["mix"])
        self.features.load_state_dict(state["cache"])
        if "first_batch_groups" in state:
            self.group.load_state_dict(state["first_batch_groups"], self.device)
