"""Frozen prefixes (ViT blocks, CNN stages), taps, and the per-index feature cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecl.backbones.cnn import CifarResNet18
from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.config import ConfigError
from edgecl.data.transforms import eval_transform, train_transform
from edgecl.efficiency.feature_cache import (
    FeatureCache,
    FeatureCacheConfigError,
    TensorStore,
    dequantize_int8,
    quantize_int8,
    require_unaugmented,
)
from edgecl.efficiency.freezing import (
    FrozenPrefix,
    TapRecorder,
    layer_names,
    resolve_freeze_point,
    tap_points,
)
from edgecl.metrics.cost import CostMeter

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


def tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(TINY)


@pytest.fixture(scope="module")
def resnet() -> CifarResNet18:
    torch.manual_seed(0)
    return CifarResNet18()


def test_layer_names_and_freeze_point_resolution(resnet) -> None:
    vit = tiny_vit()
    assert layer_names(vit) == ["block0", "block1", "block2", "block3"]
    assert resolve_freeze_point(vit, None, default=3) == 3
    assert resolve_freeze_point(vit, 2, default=3) == 2
    assert resolve_freeze_point(vit, "block1", default=3) == 2  # up to and including
    assert resolve_freeze_point(resnet, "layer3", default=0) == 4
    with pytest.raises(ValueError, match="unknown layer"):
        resolve_freeze_point(vit, "layer3", default=0)
    with pytest.raises(ValueError, match="outside"):
        resolve_freeze_point(vit, 5, default=0)


def test_vit_prefix_is_frozen_no_grad_and_suffix_reproduces_forward() -> None:
    vit = tiny_vit()
    fp = FrozenPrefix(vit, 2)
    frozen = {id(p) for p in [vit.cls_token, vit.pos_embed, *vit.patch_embed.parameters(),
                              *vit.blocks[0].parameters(), *vit.blocks[1].parameters()]}
    for p in vit.parameters():
        assert p.requires_grad == (id(p) not in frozen)
    x = torch.randn(3, 3, 32, 32)
    h = fp.prefix(x)
    assert h.shape == (3, 17, 32) and not h.requires_grad
    vit.eval()
    with torch.no_grad():
        full = vit(x)
    torch.testing.assert_close(fp.suffix(h), full, rtol=0, atol=0)


def test_frozen_prefix_saves_less_and_books_no_backward_flops() -> None:
    x = torch.randn(4, 3, 32, 32)

    def measure(k: int) -> tuple[int, int]:
        vit = tiny_vit()
        fp = FrozenPrefix(vit, k)
        meter = CostMeter()
        meter.watch_parameters([vit])
        with meter.active(), meter.training_step():
            fp.suffix(fp.prefix(x)).sum().backward()
        return meter.saved_bytes_per_step[-1], meter.flops["backward"]

    saved_full, bwd_full = measure(0)
    saved_half, bwd_half = measure(2)
    saved_all, bwd_all = measure(4)
    assert 0 < saved_half < saved_full
    assert 0 < bwd_half < bwd_full and bwd_all == 0
    assert saved_all < saved_half


def test_cnn_bn_policy_eval_keeps_frozen_running_stats(resnet) -> None:
    fp = FrozenPrefix(resnet, 4, "eval")
    fp.train_mode()
    stem_bn, top_bn = resnet.stem[1], resnet.layer4[0].bn1
    assert not stem_bn.training and top_bn.training
    before = stem_bn.running_mean.clone()
    top_before = top_bn.running_mean.clone()
    fp.suffix(fp.prefix(torch.randn(4, 3, 32, 32) + 3.0))
    assert torch.equal(stem_bn.running_mean, before)  # frozen: untouched
    assert not torch.equal(top_bn.running_mean, top_before)  # trainable: moves
    assert fp.deterministic

    ref = FrozenPrefix(resnet, 4, "train")
    ref.train_mode()
    assert stem_bn.training and not ref.deterministic
    ref.prefix(torch.randn(4, 3, 32, 32) + 3.0)
    assert not torch.equal(stem_bn.running_mean, before)  # the reference's behaviour
    resnet.stem[1].reset_running_stats()


def test_cnn_prefix_suffix_matches_forward(resnet) -> None:
    resnet.eval()
    fp = FrozenPrefix(resnet, 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fp.suffix(fp.prefix(x)), resnet(x), rtol=0, atol=0)
        last = FrozenPrefix(resnet, 5)
        torch.testing.assert_close(last.suffix(last.prefix(x)), resnet(x), rtol=0, atol=0)


def test_tap_points_and_recorder(resnet) -> None:
    assert list(tap_points(resnet, 4)) == [
        "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert list(tap_points(tiny_vit(), 2)) == ["block2", "block3"]
    resnet.eval()
    fp = FrozenPrefix(resnet, 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = fp.prefix(x)
        with TapRecorder(tap_points(resnet, 4)) as rec:
            fp.suffix(h)
        taps = rec.outputs()
        block = resnet.layer4[0]
        conv1 = F.relu(block.bn1(block.conv1(h)))
    torch.testing.assert_close(taps["layer4.0.conv1"], conv1)
    assert taps["layer4.1.conv2"].shape == (2, 512, 4, 4)
    assert not any(len(m._forward_hooks) for m in resnet.modules())  # hooks removed


# ---- feature cache --------------------------------------------------------------------------
def test_int8_quantization_is_per_slice_and_bounded() -> None:
    x = torch.tensor([[[1.0, -2.0, 0.5], [10.0, 0.0, -5.0]]])  # (1, 2 slices, 3)
    q, scale = quantize_int8(x)
    torch.testing.assert_close(scale, torch.tensor([[2.0 / 127, 10.0 / 127]]))
    assert q.dtype == torch.int8 and q[0, 0, 1] == -127 and q[0, 1, 0] == 127
    err = (dequantize_int8(q, scale) - x).abs()
    assert (err <= scale.unsqueeze(2) / 2 + 1e-7).all()


@pytest.mark.parametrize(("storage", "row_bytes"), [
    ("fp32", 6 * 4), ("fp16", 6 * 2), ("bf16", 6 * 2), ("int8", 6 * 1 + 2 * 4)])
def test_tensor_store_bytes(storage: str, row_bytes: int) -> None:
    store = TensorStore(5, storage)
    store.write(torch.tensor([0, 3]), torch.randn(2, 2, 3))
    assert store.nbytes() == 5 * row_bytes
    store.grow(7)
    assert store.nbytes() == 7 * row_bytes


def test_cache_computes_misses_only_and_returns_stored_values() -> None:
    calls: list[int] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x * 2.0

    cache = FeatureCache("fp16")
    cache.reserve(4)
    x = torch.randn(3, 2, 2)
    first = cache.fetch(torch.tensor([10, 11, 12]), x, compute)
    torch.testing.assert_close(first, (x * 2).half().float())  # as stored
    second = cache.fetch(torch.tensor([12, 13, 10]), torch.stack([x[2], x[0], x[0]]), compute)
    assert calls == [3, 1] and (cache.hits, cache.misses) == (2, 4)
    torch.testing.assert_close(second[0], first[2])
    assert len(cache) == 4 and cache.store.capacity == 4
    assert cache.nbytes() == 4 * 4 * 2 + 16 * 4
    cache.put(torch.tensor([20]), torch.ones(1, 2, 2))  # grows by doubling
    assert cache.store.capacity == 8
    clone = FeatureCache("fp16")
    clone.load_state_dict(cache.state_dict())
    torch.testing.assert_close(clone.get(torch.tensor([10, 20])), cache.get(torch.tensor([10, 20])))


def test_cache_refused_with_augmentation() -> None:
    mean = std = (0.5, 0.5, 0.5)
    with pytest.raises(FeatureCacheConfigError, match="augment: false"):
        require_unaugmented(train_transform(32, mean, std), "lightcl")
    assert issubclass(FeatureCacheConfigError, ConfigError)
    require_unaugmented(eval_transform(32, mean, std), "lightcl")


def test_frozen_modules_stay_frozen_after_refreeze() -> None:
    vit = tiny_vit()
    FrozenPrefix(vit, 3)
    FrozenPrefix(vit, 1)  # moving the split re-enables the layers after it
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert not any(n.startswith("blocks.0.") for n in trainable)
    assert any(n.startswith("blocks.1.") for n in trainable)
    assert isinstance(vit.blocks[0], nn.Module)
