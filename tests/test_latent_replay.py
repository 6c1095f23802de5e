"""Latent replay: mixing sizes, buffer replacement, CWR*, storage bytes, cache, resume."""

from __future__ import annotations

import copy

import pytest
import torch

from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.data.transforms import eval_transform, train_transform
from edgecl.efficiency.cwr import cwr_apply, cwr_consolidate, cwr_reset
from edgecl.efficiency.feature_cache import FeatureCacheConfigError
from edgecl.efficiency.latent_buffers import LatentBuffer, LatentReservoir
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.methods.latent_replay import (
    LatentReplay,
    LatentReplayParams,
    mixing_sizes,
    replacement_count,
    replay_count,
)
from edgecl.metrics.cost import CostMeter

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLASSES = [torch.tensor([0, 1]), torch.tensor([2, 3])]


# ---- the rules on hand-computed cases ---------------------------------------------------------
def test_mixing_sizes() -> None:
    # NICv2-391 first incremental batches: 3000 new, rm 1500 → 4500//100 = 45 minibatches
    assert mixing_sizes(3000, 1500, 100) == (66, 34, 45)
    # a later batch of 300: 1800//100 = 18 → 16 new + 84 replayed, 18 iterations
    assert mixing_sizes(300, 1500, 100) == (16, 84, 18)
    assert mixing_sizes(80, 200, 100) == (40, 60, 2)
    assert mixing_sizes(10, 1500, 100) == (1, 99, 10)  # 10 // 15 = 0 → at least 1 new
    assert replay_count(40, 40, 60) == 60  # runner batch == cur_sz: the reference minibatch
    assert replay_count(16, 40, 60) == 24  # same ratio for a smaller runner batch


def test_replacement_count() -> None:
    assert replacement_count(1500, 0, 3000) == 1500
    assert replacement_count(1500, 1, 300) == 300  # min(750, 300)
    assert replacement_count(1500, 9, 300) == 150
    assert replacement_count(200, 2, 80) == 66


def test_buffer_replacement_rule() -> None:
    g = torch.Generator().manual_seed(0)
    buf = LatentBuffer(6, "fp32")
    buf.update(torch.arange(4.0).view(4, 1), torch.tensor([0, 0, 0, 0]), g, grow=False)
    assert len(buf) == 4 and buf.labels.tolist() == [0, 0, 0, 0, 0, 0]
    buf.update(torch.full((2, 1), 9.0), torch.tensor([1, 1]), g, grow=False)
    assert len(buf) == 4  # the reference never grows past the first batch's h
    assert buf.labels[:4].tolist().count(1) == 2 and buf.labels[4:].tolist() == [0, 0]
    kept = [v for v, lab in zip(buf.read(torch.arange(4))[0].flatten().tolist(),
                                buf.labels[:4].tolist(), strict=True) if lab == 0]
    assert len(kept) == 2 and set(kept) <= {0.0, 1.0, 2.0, 3.0}

    grow = LatentBuffer(6, "fp32")
    grow.update(torch.zeros(4, 1), torch.tensor([0, 0, 0, 0]), g, grow=True)
    grow.update(torch.ones(3, 1), torch.tensor([1, 1, 1]), g, grow=True)
    # two go to the free slots 4, 5; the third replaces one of the 4 old entries
    assert len(grow) == 6 and grow.labels[4:].tolist() == [1, 1]
    assert grow.labels[:4].tolist().count(1) == 1


def test_reservoir_keeps_a_uniform_subset() -> None:
    g = torch.Generator().manual_seed(1)
    res = LatentReservoir(3, "fp32")
    for start in range(0, 10, 4):
        vals = torch.arange(start, min(start + 4, 10)).float().view(-1, 1)
        res.add(vals, vals.long().flatten(), g)
    latents, labels = res.contents()
    assert len(res) == 3 and len(set(labels.tolist())) == 3
    assert torch.equal(latents.flatten().long(), labels)
    everything = LatentReservoir(5, "fp32")
    everything.add(torch.arange(4.0).view(4, 1), torch.arange(4), g)
    assert everything.contents()[1].tolist() == [0, 1, 2, 3]


def test_cwr_star_consolidation_formula() -> None:
    weight = torch.tensor([[1.0, 3.0], [5.0, 7.0], [8.0, 8.0]])
    saved = torch.tensor([[2.0, 2.0], [0.0, 0.0], [4.0, 4.0]])
    has = torch.tensor([True, False, True])
    cur = torch.tensor([True, True, False])
    past_j, cur_j = torch.tensor([4, 0, 7]), torch.tensor([1, 5, 0])
    cwr_consolidate(weight, saved, has, cur, past_j, cur_j)
    # mean of rows 0,1 = 4 → centred [-3,-1], [1,3]; class 0: wp = √(4/1) = 2
    torch.testing.assert_close(saved[0], torch.tensor([(2 * 2 - 3) / 3, (2 * 2 - 1) / 3]))
    torch.testing.assert_close(saved[1], torch.tensor([1.0, 3.0]))  # new class
    torch.testing.assert_close(saved[2], torch.tensor([4.0, 4.0]))  # not current: untouched
    assert has.tolist() == [True, True, True]
    cwr_reset(weight, saved, has, torch.tensor([False, True, False]))
    assert weight.tolist() == [[0.0, 0.0], [1.0, 3.0], [0.0, 0.0]]
    cwr_apply(weight, saved, has)
    torch.testing.assert_close(weight, saved)


@pytest.mark.parametrize(("storage", "per_latent"), [
    ("fp32", 17 * 32 * 4), ("fp16", 17 * 32 * 2), ("bf16", 17 * 32 * 2),
    ("int8", 17 * 32 + 17 * 4)])
def test_latent_buffer_bytes(storage: str, per_latent: int) -> None:
    buf = LatentBuffer(10, storage)
    buf.update(torch.randn(3, 17, 32), torch.tensor([0, 1, 2]), torch.Generator(), grow=False)
    assert buf.nbytes() == 10 * per_latent + 10 * 8
    back = buf.read(torch.arange(3))[0]
    assert back.dtype == torch.float32 and back.shape == (3, 17, 32)


# ---- the method on a tiny ViT ---------------------------------------------------------------
def make_info(transform=None) -> BenchmarkInfo:
    return BenchmarkInfo(
        num_classes=4, n_tasks=2, task_classes=CLASSES,
        train_transform=transform or eval_transform(32, *MEAN_STD),
        device=torch.device("cpu"), meter=CostMeter(), seed=0,
        steps_per_task=[2, 2], input_size=32,
    )


def make_batch(info: BenchmarkInfo, t: int, step: int, epoch: int = 0, n: int = 16) -> Batch:
    g = torch.Generator().manual_seed(100 * t + step)
    y = CLASSES[t][torch.randint(0, 2, (n,), generator=g)]
    raw = ((y.float() * 50 + 30).view(-1, 1, 1, 1)
           + torch.randint(0, 40, (n, 32, 32, 3), generator=g)).clamp(0, 255).to(torch.uint8)
    x = info.train_transform(raw, torch.Generator().manual_seed(step))
    return Batch(x, y, raw, torch.arange(n) + n * step + 1000 * t, t, epoch)


def task_info(t: int) -> TaskInfo:
    return TaskInfo(t, CLASSES[t], 32, 2)


def build(params: dict | None = None, info: BenchmarkInfo | None = None) -> LatentReplay:
    torch.manual_seed(0)
    base = {"rm_sz": 20, "mb_size": 48}
    method = LatentReplay(LatentReplayParams(**{**base, **(params or {})}),
                          OptimConfig(lr=0.1, momentum=0.0))
    method.setup(VisionTransformer(TINY), info or make_info())
    return method


def run_task(m: LatentReplay, t: int, epochs: int = 1, n: int = 16) -> list[float]:
    m.begin_task(task_info(t))
    out = [m.observe(make_batch(m.info, t, s, e, n)).extra["replayed"]
           for e in range(epochs) for s in range(2)]
    m.end_task(task_info(t))
    return out


def test_vit_lr_defaults_and_trainable_part() -> None:
    m = build()
    assert m.frozen.k == 4  # latents after the last block
    trainable = {n for n, p in m.modules.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.norm.weight", "backbone.norm.bias", "head.weight"}
    m.begin_task(task_info(0))
    group = m.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.9, 5e-4)
    opt0 = m.optimizer
    m.end_task(task_info(0))
    m.begin_task(task_info(1))
    assert m.optimizer is not opt0 and m.optimizer.param_groups[0]["lr"] == 5e-5
    opt1 = m.optimizer
    m.begin_task(TaskInfo(2, CLASSES[1], 32, 2))
    assert m.optimizer is opt1  # kept after the lr change, as in the reference


def test_stream_mixing_buffer_and_cwr_head() -> None:
    m = build()
    assert run_task(m, 0) == [0.0, 0.0]  # nothing replayed in the first batch
    assert len(m.buffer) == 20 and set(m.buffer.labels[:20].tolist()) <= {0, 1}
    assert m.cwr.has_saved.tolist() == [True, True, False, False]
    assert torch.equal(m.head.weight[:2], m.cwr.saved[:2])
    # task 1: cur_sz = 32 // (52 // 48) = 32, inject 16 → 8 per runner batch of 16
    m.begin_task(task_info(1))
    assert m.cwr.cur_class.tolist() == [True, True, True, True]  # own classes ∪ buffer's
    counts = m.cwr.buffer_counts.clone()
    replayed = [m.observe(make_batch(m.info, 1, s)).extra["replayed"] for s in range(2)]
    assert replayed == [8.0, 8.0] and m.cursor == 16
    m.end_task(task_info(1))
    h = min(20 // 2, 32)
    assert len(m.buffer) == 20 and int((m.buffer.labels >= 2).sum()) == h
    assert m.cwr.past_j[:2].sum() == 32 + counts[:2].sum()  # task-0 counts + buffer counts
    assert m.cwr.has_saved.all()


def test_sequential_cursor_restarts_each_epoch() -> None:
    m = build()
    run_task(m, 0)
    assert run_task(m, 1, epochs=2) == [8.0, 8.0, 8.0, 8.0]


def test_frozen_prefix_unchanged_and_predict_uses_consolidated_head() -> None:
    m = build({"split_layer": 2, "storage": "int8"})
    before = m.modules["backbone"].blocks[1].attn.qkv.weight.clone()
    run_task(m, 0)
    m.begin_task(task_info(1))
    m.observe(make_batch(m.info, 1, 0))
    held = m.buffer.nbytes() + 4 * 32 * 4 + 4 + 4 * 8  # buffer + CWR* stats
    # during the task: also its 10 pending int8 latents (17 x 32 + 17 scales, label)
    assert m.buffer_bytes() == held + 10 * (17 * 32 + 17 * 4 + 8)
    m.observe(make_batch(m.info, 1, 1))
    m.end_task(task_info(1))
    assert m.buffer_bytes() == held  # the pending latents are released at the task's end
    assert torch.equal(m.modules["backbone"].blocks[1].attn.qkv.weight, before)
    x = make_batch(m.info, 0, 0).x
    assert m.predict(x).shape == (16, 4)
    assert m.buffer.store.values.dtype == torch.int8


def test_plain_head_option() -> None:
    m = build({"head": "plain", "replay_order": "random"})
    assert m.head.bias is not None
    run_task(m, 0)
    assert run_task(m, 1) == [8.0, 8.0]
    assert m.cwr is None


def test_cache_and_resume() -> None:
    m = build({"cache_features": True, "split_layer": 3})
    run_task(m, 0, epochs=2)
    cache = m.features.cache
    assert cache is not None and (cache.hits, cache.misses) == (32, 32)
    m.begin_task(task_info(1))
    m.observe(make_batch(m.info, 1, 0))
    state = copy.deepcopy(m.state_dict())  # as torch.save/load would
    r = build({"cache_features": True, "split_layer": 3})
    r.begin_task(task_info(1))
    r.load_state_dict(state)
    a, b = m.observe(make_batch(m.info, 1, 1)), r.observe(make_batch(r.info, 1, 1))
    assert a.loss == b.loss and r.features.cache.hits == cache.hits
    m.end_task(task_info(1))
    r.end_task(task_info(1))
    assert torch.equal(m.buffer.labels, r.buffer.labels)
    assert torch.equal(m.head.weight, r.head.weight)


def test_cache_refused_with_augmentation() -> None:
    with pytest.raises(FeatureCacheConfigError, match="augment"):
        build({"cache_features": True}, info=make_info(train_transform(32, *MEAN_STD)))


def test_cnn_split_keeps_feature_maps() -> None:
    from edgecl.backbones.cnn import CifarResNet18

    torch.manual_seed(0)
    m = LatentReplay(LatentReplayParams(rm_sz=20, mb_size=48, storage="fp16"),
                     OptimConfig(lr=0.1))
    m.setup(CifarResNet18(), make_info())
    assert m.frozen.k == 4  # default: up to layer3, layer4 + head train
    run_task(m, 0, n=4)
    assert m.buffer.store.values.shape == (20, 256, 8, 8) and len(m.buffer) == 8  # 8 seen
    assert m.buffer.store.values.dtype == torch.float16
    assert run_task(m, 1, n=4) == [2.0, 2.0]  # round(4 * 16 / 32)
