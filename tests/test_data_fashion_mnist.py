from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import edgecl.data.fashion_mnist as fmnist
from edgecl.data import DATASET_INFO, DataError, load_dataset
from edgecl.io import md5sum

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Gzip header timestamps of the published files (train-* and t10k-* were written 21 s apart).
PUBLISHED_MTIME = {"train": 1504176606, "t10k": 1504176627}


@pytest.fixture
def debian_dir() -> Path:
    if not all((DEBIAN_DIR / f"{name}.gz").is_file() for name in fmnist.GZ_MD5):
        pytest.skip(
            f"Fashion-MNIST not installed in {DEBIAN_DIR} (apt install dataset-fashion-mnist)"
        )
    return DEBIAN_DIR


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGECL_CACHE", str(cache))
    return cache


@pytest.fixture
def no_system_copy(monkeypatch) -> None:
    monkeypatch.setattr(fmnist, "SYSTEM_DIRS", ())


def published_bytes(debian_dir: Path, name: str) -> bytes:
    """The published .gz file, rebuilt from Debian's copy by restoring its original gzip header.

    Debian's package dropped the stored file name and reset the timestamp; the deflate stream,
    CRC and length (everything after the 10-byte header) are untouched.
    """
    body = (debian_dir / f"{name}.gz").read_bytes()[10:]
    mtime = PUBLISHED_MTIME[name.split("-")[0]]
    header = b"\x1f\x8b\x08\x08" + mtime.to_bytes(4, "little") + b"\x00\x03"
    return header + name.encode() + b"\x00" + body


def test_debian_files_are_the_published_data_with_rewritten_gzip_headers(debian_dir) -> None:
    for name, published_md5 in fmnist.GZ_MD5.items():
        assert hashlib.md5(published_bytes(debian_dir, name)).hexdigest() == published_md5
        fmnist.verify_idx_file(debian_dir / f"{name}.gz", name)  # accepted via content md5


@pytest.mark.slow
def test_real_fashion_mnist_from_the_debian_package(debian_dir, tmp_path: Path) -> None:
    root = tmp_path / "no-data-here"
    train = load_dataset("fashion_mnist", "train", root=root, download=False)
    test = load_dataset("fashion_mnist", "test", root=root, download=False)
    for dataset, n in ((train, 60_000), (test, 10_000)):
        assert dataset.images.shape == (n, 28, 28, 1) and dataset.images.dtype == np.uint8
        assert dataset.labels.dtype == np.int64
        assert np.bincount(dataset.labels).tolist() == [n // 10] * 10
        assert dataset.class_names[0] == "T-shirt/top" and len(dataset.class_names) == 10
    assert abs(train.images.mean() / 255 - DATASET_INFO["fashion_mnist"]["mean"][0]) < 1e-3
    again = load_dataset("fashion_mnist", "test", root=root, download=False)
    assert np.array_equal(again.images, test.images)


def test_data_root_copy_takes_precedence(debian_dir, tmp_path: Path, private_cache) -> None:
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in fmnist.SPLIT_FILES["test"]:
        (folder / name).write_bytes(gzip.decompress((debian_dir / f"{name}.gz").read_bytes()))
    found = fmnist.find_split_files("test", tmp_path / "data")
    assert found == [folder / name for name in fmnist.SPLIT_FILES["test"]]
    dataset = load_dataset("fashion_mnist", "test", root=tmp_path / "data", download=False)
    assert len(dataset) == 10_000


def test_corrupted_copy_fails_the_checksum(tmp_path: Path, private_cache, no_system_copy) -> None:
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    bogus = gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 12)
    for name in fmnist.SPLIT_FILES["test"]:
        (folder / f"{name}.gz").write_bytes(bogus)
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", "test", root=tmp_path / "data", download=False)
    message = str(info.value)
    images = folder / "t10k-images-idx3-ubyte.gz"
    assert str(images) in message
    assert fmnist.RAW_MD5["t10k-images-idx3-ubyte"] in message
    assert hashlib.md5(gzip.decompress(bogus)).hexdigest() in message
    assert fmnist.BASE_URL in message


def test_missing_data_names_paths_and_fix(tmp_path: Path, private_cache, no_system_copy) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", "train", root=root, download=False)
    message = str(info.value)
    for expected in (
        str(root / "fashion-mnist"),
        str(private_cache / "fashion-mnist"),
        "dataset-fashion-mnist",
        f"{fmnist.BASE_URL}train-images-idx3-ubyte.gz",
        "EDGECL_DATA",
        "--data-root",
    ):
        assert expected in message


def test_offline_download_is_a_clear_error(
    tmp_path: Path, private_cache, no_system_copy, monkeypatch
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", "test", root=tmp_path / "data", download=True)
    assert "download failed" in str(info.value) and fmnist.BASE_URL in str(info.value)


def test_download_through_a_fake_opener(
    debian_dir, tmp_path: Path, private_cache, no_system_copy, monkeypatch
) -> None:
    requested = []

    def serve(url: str, timeout: float):
        name = url.removeprefix(fmnist.BASE_URL).removesuffix(".gz")
        requested.append(name)
        return io.BytesIO(published_bytes(debian_dir, name))

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    root = tmp_path / "data"
    dataset = load_dataset("fashion_mnist", "test", root=root, download=True)
    assert requested == list(fmnist.SPLIT_FILES["test"])
    assert len(dataset) == 10_000
    for name in requested:
        assert md5sum(root / "fashion-mnist" / f"{name}.gz") == fmnist.GZ_MD5[name]
