"""The backbone and data set registries: look-ups, weights, scenarios and registration."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgecl.backbones.pretrained as pretrained
import edgecl.backbones.registry as backbones
import edgecl.data.registry as datasets
from edgecl.backbones.registry import (
    BackboneEntry,
    backbone_entry,
    create_backbone,
    default_img_size,
    register_backbone,
    resolve_weights,
)
from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.config import DataConfig
from edgecl.data import ArrayDataset, class_incremental, load_dataset
from edgecl.data.core50 import core50_decode_size, core50_scenario
from edgecl.data.registry import DatasetEntry, build_scenario, dataset_entry, register_dataset
from edgecl.data.transforms import RandomResizedCropFlip
from edgecl.errors import ConfigError, WeightsError

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture
def own_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(backbones, "BACKBONES", dict(backbones.BACKBONES))
    monkeypatch.setattr(datasets, "DATASETS", dict(datasets.DATASETS))


@dataclass
class Data:
    """A ``data`` section for a data set the config's schema does not know."""

    dataset: str
    root: str | None = None
    path: str | None = None
    download: bool = False
    n_tasks: int = 2
    class_order: str | list[int] = "fixed"
    train_per_class: int | None = None
    test_per_class: int | None = None
    core50_scenario: str = "nicv2_391"
    core50_run: int = 0
    core50_test_stride: int = 1
    core50_max_batches: int | None = None


def same_scenario(a, b) -> None:
    assert a.name == b.name and a.num_classes == b.num_classes
    assert np.array_equal(a.class_order, b.class_order)
    for split in ("train", "test"):
        assert np.array_equal(getattr(a, split).images, getattr(b, split).images)
        assert np.array_equal(getattr(a, split).labels, getattr(b, split).labels)
    assert len(a.tasks) == len(b.tasks)
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        assert np.array_equal(ta.classes, tb.classes)
        assert np.array_equal(ta.train_indices, tb.train_indices)
        assert np.array_equal(ta.test_indices, tb.test_indices)


# ---- look-ups ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_backbone_entry_resolves(name: str) -> None:
    entry = backbone_entry(name)
    assert entry.name == name and callable(entry.builder)
    assert len(entry.mean) == len(entry.std) == 3 and min(entry.std) > 0
    assert default_img_size(name, None) == entry.img_size
    assert default_img_size(name, 48) == 48
    assert entry.interpolation in ("bilinear", "bicubic")


def test_backbone_facts() -> None:
    tiny = backbone_entry("vit_tiny_patch16_224")
    assert (tiny.img_size, tiny.mean, tiny.std, tiny.interpolation) == (
        224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert tiny.weights[0].folder == "vit_tiny_patch16_224_tinyimagenet_ft"
    resnet = backbone_entry("resnet18_cifar")
    assert (resnet.img_size, resnet.mean, resnet.std, resnet.pretrained) == (
        32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False)
    lite0 = backbone_entry("efficientnet_lite0")
    assert lite0.img_size == 224 and lite0.mean == pytest.approx((127 / 255,) * 3)


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_every_dataset_entry_resolves(name: str) -> None:
    entry = dataset_entry(name)
    assert entry.name == name and callable(entry.loader) and callable(entry.scenario)
    assert {"num_classes", "image_size", "channels", "mean", "std"} <= set(entry.info)
    train, evaluation = entry.transforms(16, (0.5,) * 3, (0.5,) * 3)
    assert type(train) is RandomResizedCropFlip and train.size == 16
    assert type(evaluation).__name__ == "BatchTransform" and evaluation.size == 16
    plain, _ = entry.transforms(16, (0.5,) * 3, (0.5,) * 3, augment=False)
    assert type(plain).__name__ == "BatchTransform"


@pytest.mark.parametrize(
    ("call", "known"),
    [
        (lambda: backbone_entry("resnet50"), ("vit_tiny_patch16_224", "resnet18_cifar")),
        (lambda: default_img_size("resnet50", None), ("efficientnet_lite0",)),
        (lambda: create_backbone("resnet50"), ("vit_base_patch16_224",)),
        (lambda: dataset_entry("imagenet"), ("cifar100", "image_folder", "core50")),
        (lambda: build_scenario(Data("imagenet"), seed=0, img_size=32), ("fashion_mnist",)),
    ],
)
def test_unknown_names_are_config_errors_naming_the_known_ones(call, known) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    for name in known:
        assert name in str(err.value)


# ---- backbones and their weights ---------------------------------------------------------
def test_create_vit_tiny_from_the_shared_weights(vit_tiny_path: Path, monkeypatch) -> None:
    hashed: list[Path] = []
    real_hash = pretrained.sha256sum

    def recording_hash(path):
        hashed.append(Path(path))
        return real_hash(path)

    monkeypatch.setattr(pretrained, "sha256sum", recording_hash)
    monkeypatch.setattr(pretrained, "download_file", None)  # must not be needed
    bundle = create_backbone("vit_tiny_patch16_224", data_root=vit_tiny_path.parents[1])
    assert hashed == [vit_tiny_path]
    assert (bundle.img_size, bundle.mean, bundle.std) == (224, (0.5,) * 3, (0.5,) * 3)
    assert bundle.interpolation == "bicubic" and bundle.entry.name == "vit_tiny_patch16_224"
    expected = np.load(vit_tiny_path)["blocks.11.mlp.fc2.bias"]
    assert np.array_equal(bundle.module.blocks[11].mlp.fc2.bias.detach().numpy(), expected)


def test_a_corrupted_local_copy_is_refused(tmp_path: Path, vit_tiny_path: Path) -> None:
    local = backbone_entry("vit_tiny_patch16_224").weights[0]
    corrupt = tmp_path / local.folder / local.filename
    corrupt.parent.mkdir()
    data = bytearray(vit_tiny_path.read_bytes())
    data[1000] ^= 0x01
    corrupt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        create_backbone("vit_tiny_patch16_224", data_root=tmp_path)


def test_random_and_explicit_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    random_vit = create_backbone("vit_tiny_patch16_224", weights="random", img_size=32)
    assert random_vit.img_size == 32 and random_vit.module.cfg.embed_dim == 192
    path = tmp_path / "tiny.pth"
    torch.save(VisionTransformer(TINY_VIT).state_dict(), path)
    # An explicit checkpoint keeps its own resolution unless img_size asks for another.
    assert create_backbone("vit_tiny_patch16_224", weights=str(path)).img_size == 32
    assert create_backbone("vit_tiny_patch16_224", weights=str(path), img_size=64).img_size == 64
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("vit_tiny_patch16_224", weights=str(tmp_path / "missing.npz"))


def test_backbones_without_known_weights(tmp_path: Path) -> None:
    assert resolve_weights(backbone_entry("resnet18_cifar"), None, tmp_path) is None
    with pytest.raises(WeightsError, match="no pretrained weights found"):
        resolve_weights(backbone_entry("vit_large_patch16_224"), None, tmp_path)


def test_a_download_is_checksummed_from_its_first_use(tmp_path: Path, monkeypatch) -> None:
    def fake_download(url, dest, sha256=None):
        assert url.startswith("https://huggingface.co/timm/vit_small_patch16_224.")
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(b"weights")

    monkeypatch.setattr(pretrained, "download_file", fake_download)
    entry = backbone_entry("vit_small_patch16_224")
    path = resolve_weights(entry, None, tmp_path, cache=tmp_path / "cache")
    assert path == tmp_path / "cache" / "weights" / "vit_small_patch16_224.safetensors"
    monkeypatch.setattr(pretrained, "download_file", None)  # the second use reads the cache
    assert resolve_weights(entry, None, tmp_path, cache=tmp_path / "cache") == path
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        resolve_weights(entry, None, tmp_path, cache=tmp_path / "cache")


# ---- scenarios ---------------------------------------------------------------------------
def test_build_scenario_is_class_incremental(cifar100_root: Path) -> None:
    data = DataConfig(dataset="cifar100", root=str(cifar100_root), download=False, n_tasks=2,
                      class_order=[3, 1, 4, 5], train_per_class=4, test_per_class=2)
    built = build_scenario(data, seed=7, img_size=224)
    train = load_dataset("cifar100", "train", root=cifar100_root, download=False)
    test = load_dataset("cifar100", "test", root=cifar100_root, download=False)
    by_hand = class_incremental(train, test, 2, class_order=[3, 1, 4, 5], seed=7,
                                train_per_class=4, test_per_class=2)
    same_scenario(built, by_hand)
    with pytest.raises(ConfigError, match="data.path"):
        build_scenario(DataConfig(dataset="cifar100", path="somewhere"), seed=0, img_size=32)


def test_build_scenario_for_core50_decodes_at_the_backbone_size(core50_module_root) -> None:
    data = DataConfig(dataset="core50", root=str(core50_module_root), core50_max_batches=7)
    same_scenario(build_scenario(data, seed=3, img_size=6),
                  core50_scenario(core50_module_root, image_size=6, max_batches=7))
    assert (core50_decode_size(6), core50_decode_size(224)) == (6, 128)


def test_build_scenario_for_an_image_folder(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    monkeypatch.setenv("EDGECL_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for label, cls in enumerate(("a", "b")):
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (10, 12), (40 * label, 0, 0)).save(folder / "x.png")
    data = DataConfig(dataset="image_folder", path=str(tmp_path / "tree"), n_tasks=2)
    scenario = build_scenario(data, seed=0, img_size=6)
    assert scenario.train.images.shape == (2, 6, 6, 3)
    assert [t.classes.tolist() for t in scenario.tasks] == [[0], [1]]


# ---- registration ------------------------------------------------------------------------
def toy_loader(split: str, root=None, download: bool = True) -> ArrayDataset:
    n = 8 if split == "train" else 4
    images = np.full((n, 4, 4, 3), 7, dtype=np.uint8)
    return ArrayDataset(images, np.arange(n, dtype=np.int64) % 4, tuple("abcd"), f"toy-{split}")


def test_a_toy_dataset_in_one_call(own_registries) -> None:
    info = {"num_classes": 4, "image_size": 4, "channels": 3, "mean": (0.5,) * 3,
            "std": (0.5,) * 3}
    register_dataset(DatasetEntry("toy", toy_loader, info))
    assert len(load_dataset("toy", "test")) == 4
    assert datasets.DATASET_INFO["toy"]["num_classes"] == 4
    scenario = build_scenario(Data("toy", n_tasks=2), seed=0, img_size=4)
    assert [t.classes.tolist() for t in scenario.tasks] == [[0, 1], [2, 3]]
    assert [len(t.train_indices) for t in scenario.tasks] == [4, 4]


def test_a_toy_backbone_in_one_call(own_registries, tmp_path: Path) -> None:
    def builder(weights: Path | None, img_size: int | None) -> nn.Module:
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
        if weights is not None:
            net.load_state_dict(torch.load(weights, weights_only=True))
        return net

    register_backbone(BackboneEntry("toy_mlp", builder, img_size=8, mean=(0.5,) * 3,
                                    std=(0.25,) * 3, pretrained=False))
    bundle = create_backbone("toy_mlp")
    assert (bundle.img_size, bundle.std) == (8, (0.25,) * 3)
    assert bundle.module(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    path = tmp_path / "toy.pth"
    torch.save(bundle.module.state_dict(), path)
    again = create_backbone("toy_mlp", weights=str(path)).module
    assert torch.equal(again[1].weight, bundle.module[1].weight)


# ---- layering ----------------------------------------------------------------------------
def test_the_data_layer_imports_nothing_above_it() -> None:
    code = (
        "import sys, edgecl.data, edgecl.data.registry\n"
        "above = ('edgecl.backbones', 'edgecl.methods', 'edgecl.config', 'edgecl.runner')\n"
        "print([m for m in sys.modules if m.startswith(above)])\n"
        "import edgecl.backbones.registry\n"
        "print([m for m in sys.modules if m.startswith(above[1:])])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout
    assert out.split("\n")[:2] == ["[]", "[]"]
