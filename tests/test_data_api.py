from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecl.data import (
    DATASET_INFO,
    ArrayDataset,
    DataError,
    cache_dir,
    load_dataset,
    resolve_data_root,
)
from edgecl.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def small_dataset(n: int = 6) -> ArrayDataset:
    images = np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3)
    return ArrayDataset(images, np.arange(n, dtype=np.int64) % 3, ("a", "b", "c"), "small")


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet", "train")
    for name in ("cifar100", "cifar10", "fashion_mnist", "image_folder", "core50"):
        assert name in str(info.value)


def test_unknown_split_lists_valid_splits() -> None:
    with pytest.raises(DataError, match="train, test"):
        load_dataset("cifar100", "val")


def test_extra_options_only_where_the_loader_takes_them() -> None:
    with pytest.raises(DataError, match="no extra options"):
        load_dataset("cifar10", "train", image_size=32)
    with pytest.raises(DataError, match="takes the options path, image_size"):
        load_dataset("image_folder", "train", size=32)


def test_dataset_info_has_the_documented_fields() -> None:
    assert set(DATASET_INFO) == {"cifar100", "cifar10", "fashion_mnist", "image_folder", "core50"}
    for info in DATASET_INFO.values():
        assert {"num_classes", "image_size", "channels", "mean", "std"} <= set(info)
        assert len(info["mean"]) == len(info["std"]) == info["channels"]
    assert DATASET_INFO["cifar100"]["num_classes"] == 100
    assert DATASET_INFO["fashion_mnist"]["image_size"] == 28


def test_data_root_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGECL_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("EDGECL_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "edgecl" / "data"


def test_cache_dir_from_env_is_created_on_demand(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGECL_CACHE", str(tmp_path / "c" / "d"))
    assert not (tmp_path / "c").exists()
    assert cache_dir() == tmp_path / "c" / "d"
    assert (tmp_path / "c" / "d").is_dir()
    monkeypatch.delenv("EDGECL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "edgecl"


def test_import_touches_neither_disk_nor_network(tmp_path: Path) -> None:
    env = {**os.environ, "EDGECL_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home")}
    code = "import urllib.request as u; u.urlopen = None; import edgecl.data"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)
    assert list(tmp_path.iterdir()) == []


def test_array_dataset_subset_and_len() -> None:
    dataset = small_dataset()
    part = dataset.subset(np.array([4, 1]))
    assert len(part) == 2 and len(dataset) == 6
    assert np.array_equal(part.images, dataset.images[[4, 1]])
    assert part.labels.tolist() == [1, 1]
    assert part.class_names == dataset.class_names and part.name == dataset.name
    with pytest.raises(DataError, match="indices must lie"):
        dataset.subset(np.array([6]))
    with pytest.raises(DataError, match="integer indices"):
        dataset.subset(np.array([True, False]))


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), "uint8"),
        (np.zeros((2, 4, 4, 2), np.uint8), np.zeros(2, np.int64), "C in"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32), "int64"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 5]), r"\[0, 3\)"),
    ],
)
def test_array_dataset_validates_its_arrays(images, labels, message) -> None:
    with pytest.raises(DataError, match=message):
        ArrayDataset(images, labels, ("a", "b", "c"), "bad")
