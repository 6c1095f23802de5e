"""Reference-faithful data pipelines as config fields (issue 14): each field's effect on a small
hand-computed case — augmentation policies, crop scale, test-time resize, normalization,
per-class subsets — and the paper configs following their references."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecl.backbones.registry import create_backbone
from edgecl.config import RunConfig, load_config
from edgecl.data.base import ArrayDataset
from edgecl.data.scenarios import class_incremental
from edgecl.data.transforms import (
    BatchTransform,
    RandomCropPadFlip,
    RandomResizedCropFlip,
    make_transforms,
)
from edgecl.efficiency.feature_cache import transform_is_deterministic
from edgecl.efficiency.prompts import init_tensor
from edgecl.errors import ConfigError, DataError
from edgecl.methods.l2p import L2PParams
from edgecl.runner.build import normalization

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean 0, std 1: the output is x / 255


def _ramp(n: int, size: int) -> torch.Tensor:
    """(n, size, size, 3) uint8 images whose pixel (r, c) holds r * size + c (+ 1 per image)."""
    base = torch.arange(size * size, dtype=torch.int64).view(size, size)
    images = torch.stack([base + i for i in range(n)]).clamp(max=255).to(torch.uint8)
    return images.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()


# ---- augmentation policies --------------------------------------------------------------------
def test_random_crop_pad4_is_a_shifted_window_of_the_zero_padded_image() -> None:
    images = _ramp(64, 8)
    tf = RandomCropPadFlip(8, *UNIT, pad=4)
    out = tf(images, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 8, 8)
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (4, 4, 4, 4)) / 255.0
    offsets, flips = set(), 0
    for i in range(64):
        windows = {(t, lf): padded[i, :, t:t + 8, lf:lf + 8]
                   for t in range(9) for lf in range(9)}
        matches = [(t, lf, f) for (t, lf), w in windows.items() for f in (False, True)
                   if torch.allclose(out[i], w.flip(-1) if f else w, atol=1e-6)]
        assert matches, f"image {i} is no padded window"
        t, lf, f = matches[0]
        offsets.add((t, lf))
        flips += f
    assert len(offsets) > 20  # offsets drawn over [0, 8] x [0, 8], not one fixed window
    assert 10 < flips < 54  # flipped with probability 0.5


def test_random_crop_pad4_resizes_to_the_model_size_and_is_seeded() -> None:
    images = _ramp(4, 32)
    tf = RandomCropPadFlip(224, *UNIT)
    a = tf(images, torch.Generator().manual_seed(3))
    b = tf(images, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 224, 224) and torch.equal(a, b)


def test_augment_names_and_the_older_bools() -> None:
    size, (mean, std) = 32, UNIT
    train, test = make_transforms(size, mean, std, augment="none")
    assert train is test and transform_is_deterministic(train)
    train, _ = make_transforms(size, mean, std, augment="random_crop_pad4")
    assert isinstance(train, RandomCropPadFlip) and not transform_is_deterministic(train)
    train, _ = make_transforms(size, mean, std, augment="random_resized_crop",
                               crop_scale=(0.05, 1.0))
    assert isinstance(train, RandomResizedCropFlip) and train.scale == (0.05, 1.0)
    with pytest.raises(DataError, match="Unknown augmentation"):
        make_transforms(size, mean, std, augment="mixup")  # type: ignore[arg-type]
    cfg = RunConfig.model_validate({"train": {"augment": True}})
    assert cfg.train.augment_policy == "random_resized_crop"
    cfg = RunConfig.model_validate({"train": {"augment": False}})
    assert cfg.train.augment_policy == "none"
    cfg = RunConfig.model_validate({"train": {"augment": "random_crop_pad4"}})
    assert cfg.train.augment_policy == "random_crop_pad4"
    with pytest.raises(ConfigError, match="train.crop_scale"):
        load_config(overrides=["train.crop_scale=[0.5, 0.2]"])


def test_crop_scale_bounds_the_crop_area() -> None:
    """Scale (0.05, 0.05): every crop covers 5 % of the image; the smallest box of scale
    (0.08, 1) is larger. A 100 x 100 ramp image: a crop's pixel range measures its box."""
    images = torch.arange(100, dtype=torch.float32).view(1, 100, 1).expand(8, 100, 100)
    images = images.round().to(torch.uint8).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    small = RandomResizedCropFlip(50, *UNIT, scale=(0.05, 0.05), hflip=0.0)
    out = small(images, torch.Generator().manual_seed(1)) * 255
    heights = out[:, 0, -1, 0] - out[:, 0, 0, 0]  # rows span about box_height - 1 pixels
    # area 500 px with aspect in [3/4, 4/3]: box height in [19.4, 25.8]
    assert heights.min() > 17 and heights.max() < 26


# ---- test-time resize -------------------------------------------------------------------------
def test_resize_crop_takes_the_centre_after_a_256_over_224_resize() -> None:
    # size 14 -> Resize(int(256 / 224 * 14) = 16): a 16-px image keeps its size; the centre
    # 14 x 14 starts at round((16 - 14) / 2) = 1
    images = _ramp(1, 16)
    out = BatchTransform(14, *UNIT, resize="resize_crop")(images)
    expected = images[0, 1:15, 1:15, 0].float() / 255
    assert torch.allclose(out[0, 0], expected)
    # the direct resize squeezes the whole image instead
    direct = BatchTransform(14, *UNIT, resize="direct")(images)
    assert not torch.allclose(direct[0, 0], expected)


def test_resize_crop_is_bicubic_and_stays_in_pixel_range() -> None:
    images = _ramp(2, 32)
    out = BatchTransform(224, *UNIT, resize="resize_crop")(images)
    up = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(256, 256), mode="bicubic",
                       align_corners=False).clamp(0, 255)
    assert torch.allclose(out * 255, up[..., 16:240, 16:240], atol=1e-3)
    assert transform_is_deterministic(BatchTransform(224, *UNIT, resize="resize_crop"))
    with pytest.raises(DataError, match="direct or resize_crop"):
        BatchTransform(8, *UNIT, resize="nearest")  # type: ignore[arg-type]


# ---- normalization ----------------------------------------------------------------------------
def _bundle(name: str):
    return create_backbone(name, weights="random", img_size=32)


def test_normalization_comes_from_the_weights_or_the_data_set() -> None:
    vit = _bundle("vit_tiny_patch16_224")
    resnet = _bundle("resnet18_cifar")
    cfg = RunConfig.model_validate({"data": {"dataset": "cifar100"}})
    assert normalization(cfg, vit) == (vit.mean, vit.std) == ((0.5,) * 3, (0.5,) * 3)
    c10 = RunConfig.model_validate({"data": {"dataset": "cifar10"},
                                    "backbone": {"name": "resnet18_cifar", "weights": "random"}})
    assert normalization(c10, resnet) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    c100 = RunConfig.model_validate({"backbone": {"name": "resnet18_cifar"}})
    assert normalization(c100, resnet)[0] == (0.5071, 0.4865, 0.4409)
    none = RunConfig.model_validate({"data": {"normalize": "none"}})
    assert normalization(none, vit) == UNIT
    # mean 0 / std 1 leaves x / 255: pixel 255 -> 1.0, pixel 0 -> 0.0
    out = BatchTransform(2, *normalization(none, vit))(torch.tensor(
        [[[[0, 0, 0], [255, 255, 255]], [[0, 0, 0], [255, 255, 255]]]], dtype=torch.uint8))
    assert out[0, :, 0, 0].tolist() == [0.0] * 3 and out[0, :, 0, 1].tolist() == [1.0] * 3


# ---- per-class subsets ------------------------------------------------------------------------
def _dataset(labels: list[int]) -> ArrayDataset:
    images = np.zeros((len(labels), 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))  # pixel (0, 0) names the file position
    return ArrayDataset(images, np.asarray(labels, dtype=np.int64), ("a", "b"), "toy-train")


def test_first_n_in_file_order_versus_the_seeded_draw() -> None:
    labels = [0, 1, 1, 0, 0, 1, 0, 1, 0, 1]  # class 0 at 0, 3, 4, 6, 8; class 1 at 1, 2, 5, 7, 9
    train = _dataset(labels)
    first = class_incremental(train, train, 1, train_per_class=2, test_per_class=3,
                              per_class_subset="first")
    assert first.train.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert first.test.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    seeded = [class_incremental(train, train, 1, train_per_class=2, seed=s)
              .train.images[:, 0, 0, 0].tolist() for s in range(6)]
    assert any(kept != [0, 1, 2, 3] for kept in seeded)  # a draw, not the first ones
    with pytest.raises(DataError, match="per_class_subset"):
        class_incremental(train, train, 1, train_per_class=2, per_class_subset="last")
    with pytest.raises(ConfigError, match="data.per_class_subset"):
        load_config(overrides=["data.dataset=core50", "data.per_class_subset=first"])


# ---- L2P's prompt and key initialisation ------------------------------------------------------
def test_l2p_initialises_prompts_and_keys_in_minus_one_to_one() -> None:
    params = L2PParams()
    assert params.prompt_init == params.key_init == "uniform"
    values = init_tensor((10_000,), params.prompt_init, torch.Generator().manual_seed(0))
    assert -1.0 <= values.min() < -0.99 and 0.99 < values.max() <= 1.0
    old = init_tensor((10_000,), "uniform01", torch.Generator().manual_seed(0))
    assert old.min() >= 0.0  # the reference before commit 173a6af


# ---- the paper configs ------------------------------------------------------------------------
PROMPT_REFERENCES = ("cifar100_l2p.yaml", "cifar100_dualprompt.yaml")


@pytest.mark.parametrize("name", PROMPT_REFERENCES)
def test_l2p_and_dualprompt_configs_follow_their_reference(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.train.augment_policy == "random_resized_crop"
    assert cfg.train.crop_scale == (0.05, 1.0)
    assert cfg.eval.test_resize == "resize_crop" and cfg.eval.class_il_logits == "all"
    assert cfg.data.normalize == "none"
    params = cfg.methods[0].method_params()
    assert params.prompt_init == params.key_init == "uniform"  # type: ignore[attr-defined]


def test_coda_config_uses_the_reference_random_split() -> None:
    cfg = load_config(CONFIGS / "cifar100_coda.yaml")
    order = list(range(100))
    random.seed(1)  # CODA-Prompt trainer.py, trial 1: random.seed(seed); random.shuffle(order)
    random.shuffle(order)
    assert cfg.data.class_order == order
    assert cfg.data.normalize == "none" and cfg.eval.test_resize == "direct"
    assert cfg.eval.class_il_logits == "seen" and cfg.train.crop_scale == (0.08, 1.0)


@pytest.mark.parametrize("name", ("cifar10_sparcl.yaml", "tinyimagenet_sparcl.yaml",
                                  "cifar100_lightcl.yaml"))
def test_cnn_references_crop_with_padding(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.train.augment_policy == "random_crop_pad4"
    if name == "cifar100_lightcl.yaml":
        assert cfg.eval.class_il_logits == "all"


def test_every_pretrained_backbone_is_normalized_with_its_own_statistics() -> None:
    """The audit as a test: for every registered backbone with pretrained weights the runner
    normalizes with the entry's mean/std (never a hard-coded 0.5), whatever the data set."""
    from types import SimpleNamespace

    from edgecl.backbones.registry import BACKBONES

    for name, entry in BACKBONES.items():
        bundle = SimpleNamespace(entry=entry, mean=entry.mean, std=entry.std)
        for dataset in ("cifar100", "cifar10"):
            cfg = RunConfig.model_validate({"data": {"dataset": dataset},
                                            "backbone": {"name": name}})
            got = normalization(cfg, bundle)  # type: ignore[arg-type]
            if entry.pretrained:
                assert got == (entry.mean, entry.std), name
            else:  # trained from scratch: the data set's own statistics
                from edgecl.data.registry import dataset_entry
                info = dataset_entry(dataset).info
                assert got == (tuple(info["mean"]), tuple(info["std"])), name
