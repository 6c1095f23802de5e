"""finetune / joint / ER / NCM on tiny synthetic inputs, against hand-computed values."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.data.base import ArrayDataset
from edgecl.data.scenarios import class_incremental
from edgecl.data.transforms import eval_transform
from edgecl.methods import REGISTRY, method_class
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo, mask_logits
from edgecl.methods.er import ER, ERParams
from edgecl.methods.finetune import Finetune
from edgecl.methods.ncm import NCM, NCMParams
from edgecl.metrics.cost import CostMeter
from edgecl.runner import train_indices


class TinyBackbone(nn.Module):
    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def info(num_classes: int = 4) -> BenchmarkInfo:
    return BenchmarkInfo(
        num_classes=num_classes, n_tasks=2,
        task_classes=[torch.tensor([0, 1]), torch.tensor([2, 3])],
        train_transform=eval_transform(2, (0.5,) * 3, (0.5,) * 3),
        device=torch.device("cpu"), meter=CostMeter(), seed=0, steps_per_task=[1, 1],
        input_size=2,
    )


def batch(n: int, task: int = 0, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 255, (n, 2, 2, 3), dtype=torch.uint8, generator=g)
    x = raw.permute(0, 3, 1, 2).float() / 255
    y = torch.randint(2 * task, 2 * task + 2, (n,), generator=g)
    return Batch(x, y, raw, torch.arange(n), task)


def test_mask_logits_keeps_only_allowed_classes():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert mask_logits(logits, 2).tolist() == [[1.0, 2.0, -math.inf]]
    assert mask_logits(logits, torch.tensor([2])).tolist() == [[-math.inf, -math.inf, 3.0]]


def test_finetune_loss_ignores_future_classes():
    m = Finetune(Finetune.Params(), OptimConfig(name="sgd", lr=0.1))
    m.setup(TinyBackbone(), info())
    m.begin_task(TaskInfo(0, torch.tensor([0, 1]), 4, 1))
    logits = torch.tensor([[2.0, 0.0, 50.0, 50.0]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert m.classification_loss(logits, torch.tensor([0])).item() == pytest.approx(
        expected.item())


def test_finetune_step_changes_weights_and_counts_optimizer_flops():
    m = Finetune(Finetune.Params(), OptimConfig(name="sgd", lr=0.1))
    m.setup(TinyBackbone(), info())
    m.begin_task(TaskInfo(0, torch.tensor([0, 1]), 4, 1))
    before = m.net.head.weight.detach().clone()
    stats = m.observe(batch(4))
    assert stats.n_samples == 4 and stats.loss > 0
    assert not torch.equal(before, m.net.head.weight)
    n_params = sum(p.numel() for p in m.net.parameters())
    assert m.meter.flops["optimizer"] == 2 * n_params  # plain SGD: 2 FLOPs per element


def test_er_replays_a_batch_of_the_same_size_after_the_first_step():
    m = ER(ERParams(buffer_size=10), OptimConfig(name="sgd", lr=0.1))
    m.setup(TinyBackbone(), info())
    m.begin_task(TaskInfo(0, torch.tensor([0, 1]), 4, 2))
    assert m.observe(batch(3, seed=1)).n_samples == 3  # empty buffer: nothing to replay
    assert len(m.buffer) == 3
    assert m.observe(batch(3, seed=2)).n_samples == 6
    assert m.buffer_bytes() == 10 * 2 * 2 * 3 + 10 * 8 + 10 * 8


def test_ncm_predicts_nearest_hand_computed_mean():
    m = NCM(NCMParams(normalize=False), OptimConfig())
    backbone = nn.Flatten()
    backbone.feature_dim = 12
    m.setup(backbone, info())
    m.begin_task(TaskInfo(0, torch.tensor([0, 1]), 4, 1))
    x = torch.zeros(4, 3, 2, 2)
    x[2:] = 1.0
    m.observe(Batch(x, torch.tensor([0, 0, 1, 1]), torch.zeros(4, 2, 2, 3), torch.arange(4), 0))
    probe = torch.full((2, 3, 2, 2), 0.2)
    probe[1] = 0.9
    logits = m.predict(probe)
    assert logits[:, :2].argmax(1).tolist() == [0, 1]
    assert logits[0, 0].item() == pytest.approx(-12 * 0.2**2, rel=1e-5)
    assert torch.isinf(logits[:, 2:]).all()  # classes not seen yet


def test_joint_trains_on_the_union_of_seen_tasks():
    images = np.zeros((40, 2, 2, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    ds = ArrayDataset(images, labels, ("a", "b", "c", "d"), "toy")
    scenario = class_incremental(ds, ds, 2)
    union = train_indices(scenario, 1, cumulative=True)
    assert sorted(union.tolist()) == list(range(40))
    assert len(train_indices(scenario, 1, cumulative=False)) == 20


def test_cosine_lr_schedule_continues_after_loading_a_mid_task_state():
    # cosine over 4 steps from lr 0.1: lr before step k is 0.05 * (1 + cos(pi * k / 4))
    expected = [0.05 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    optim = OptimConfig(name="sgd", lr=0.1, lr_schedule="cosine")
    task = TaskInfo(0, torch.tensor([0, 1]), 8, 4)

    def lr(m: Finetune) -> float:
        return m.optimizer.param_groups[0]["lr"]

    first = Finetune(Finetune.Params(), optim)
    first.setup(TinyBackbone(), info())
    first.begin_task(task)
    for k in range(2):
        assert lr(first) == pytest.approx(expected[k])
        first.observe(batch(4, seed=k))
    state = first.state_dict()

    resumed = Finetune(Finetune.Params(), optim)
    resumed.setup(TinyBackbone(), info())
    resumed.begin_task(task)
    resumed.load_state_dict(state)
    for k in range(2, 4):
        assert lr(resumed) == pytest.approx(expected[k])
        resumed.observe(batch(4, seed=k))
        first.observe(batch(4, seed=k))
        assert lr(resumed) == pytest.approx(expected[k + 1])
    for a, b in zip(first.modules.parameters(), resumed.modules.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_task_of_known_classes_only_keeps_all_seen_classes():
    m = Finetune(Finetune.Params(), OptimConfig(name="sgd", lr=0.1))
    m.setup(TinyBackbone(), info())
    m.begin_task(TaskInfo(0, torch.tensor([0, 1, 2]), 4, 1))
    m.begin_task(TaskInfo(1, torch.tensor([0, 1]), 4, 1))  # e.g. a CORe50 NIC batch
    assert m.seen_classes == 3


# ---- checkpoints load with torch.load(weights_only=True) -------------------------------------
class TinyConvNet(nn.Module):
    """Two 3x3 convs, the second under a ``layer`` prefix (SparCL's sparse layers)."""

    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.stem(x)).mean((2, 3))


TINY_VIT = ViTConfig(img_size=16, patch_size=8, embed_dim=16, depth=4, num_heads=2)
REP_FAST = {"selector": {"resolution": 8}}
EVERY_OPTION = {  # small sizes, and every piece of state switched on
    "er": {"buffer_size": 4},
    "derpp": {"buffer_size": 4, "replay_batch_size": 2},
    "ewc": {"fisher_samples": 2},
    "sparcl": {"buffer_size": 4, "replay_batch_size": 2, "sparsity": 0.5,
               "schedule_scale": 0.2, "replay_in_first_task": True},
    "l2p": {"pool_size": 4, "top_k": 2, "prompt_length": 2},
    "dualprompt": {"prompt_layers": [1], "g_layers": [0], "pool_size": 2},
    "coda_prompt": {"pool_size": 4, "prompt_layers": [1]},
    "cps_prompt": {"pool_size": 4, "prompt_layers": [1], "phase_split": "steps"},
    "l2p_rep": {"pool_size": 4, "top_k": 2, "prompt_length": 2, **REP_FAST},
    "dualprompt_rep": {"prompt_layers": [1], "g_layers": [0], "pool_size": 2, **REP_FAST},
    "coda_prompt_rep": {"pool_size": 4, "prompt_layers": [1], **REP_FAST},
    "cps_prompt_rep": {"pool_size": 4, "prompt_layers": [1], "phase_split": "steps",
                       **REP_FAST},
    "lightcl": {"cache_features": True, "freeze_until": 2},
    "latent_replay": {"rm_sz": 4, "mb_size": 8, "cache_features": True, "split_layer": 2},
    "csko": {"selection_batches": 1, "stats_batches": 1},
}
CONV_METHODS = {"finetune", "joint", "er", "ncm", "derpp", "ewc", "lwf", "sparcl", "csko"}


def tiny_method(name: str):
    torch.manual_seed(0)
    cls = method_class(name)
    size = 8 if name in CONV_METHODS else 16
    optim = OptimConfig(name="adam", lr=0.01, lr_schedule="cosine")
    method = cls(cls.Params(**EVERY_OPTION.get(name, {})), optim)
    tiny = BenchmarkInfo(
        num_classes=4, n_tasks=2, task_classes=[torch.tensor([0, 1]), torch.tensor([2, 3])],
        train_transform=eval_transform(size, (0.5,) * 3, (0.5,) * 3),
        device=torch.device("cpu"), meter=CostMeter(), seed=0, steps_per_task=[2, 2],
        input_size=size,
    )
    method.setup(TinyConvNet() if name in CONV_METHODS else VisionTransformer(TINY_VIT), tiny)
    return method, size


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_state_loads_with_weights_only(name: str, one_thread) -> None:
    method, size = tiny_method(name)
    for t in range(2):
        task = TaskInfo(t, torch.tensor([2 * t, 2 * t + 1]), 8, 2)
        method.begin_task(task)
        for epoch in range(2):
            method.begin_epoch(task, epoch, np.arange(8))
            for step in range(2):
                g = torch.Generator().manual_seed(10 * t + step)
                raw = torch.randint(0, 256, (4, size, size, 3), dtype=torch.uint8, generator=g)
                x = method.info.train_transform(raw)
                y = torch.tensor([2 * t, 2 * t + 1] * 2)
                method.observe(Batch(x, y, raw, torch.arange(4) + 4 * step, t, epoch))
        if t == 0:
            method.end_task(task)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)  # mid-task: per-task buffers and caches are full
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed, _ = tiny_method(name)
    resumed.begin_task(TaskInfo(1, torch.tensor([2, 3]), 8, 2))
    resumed.load_state_dict(state)
    for a, b in zip(method.modules.state_dict().values(), resumed.modules.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
