from __future__ import annotations

import dataclasses
import hashlib
import lzma
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import edgecl.data.cifar as cifar
from edgecl.data import DATASET_INFO, DataError, load_dataset
from edgecl.data.cifar import CIFAR10, CIFAR100, CifarVariant, load_cifar

N_CLASSES = 5
SIZES = {"train": 20, "test": 10}


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGECL_CACHE", str(cache))
    return cache


def expected_images(split: str) -> np.ndarray:
    n = SIZES[split]
    i, y, x, c = np.ogrid[:n, :32, :32, :3]
    offset = 0 if split == "train" else 100
    return ((i * 7 + y * 3 + x + c * 50 + offset) % 256).astype(np.uint8)


def expected_labels(split: str) -> np.ndarray:
    return (np.arange(SIZES[split]) * 3 % N_CLASSES).astype(np.int64)


def split_pickle(split: str) -> bytes:
    # Official rows are channel-major: all red values, then green, then blue.
    rows = expected_images(split).transpose(0, 3, 1, 2).reshape(SIZES[split], -1)
    batch = {
        b"batch_label": split.encode(),
        b"fine_labels": expected_labels(split).tolist(),
        b"coarse_labels": [0] * SIZES[split],
        b"data": rows,
        b"filenames": [f"{k}.png".encode() for k in range(SIZES[split])],
    }
    return pickle.dumps(batch, protocol=2)


def meta_pickle() -> bytes:
    names = [f"thing{k}".encode() for k in range(N_CLASSES)]
    return pickle.dumps({b"fine_label_names": names, b"coarse_label_names": [b"x"]}, protocol=2)


def fake_release() -> tuple[dict[str, bytes], CifarVariant]:
    """A CIFAR-100-format release of 20+10 images and the variant describing it."""
    files = {"train": split_pickle("train"), "test": split_pickle("test"), "meta": meta_pickle()}
    variant = dataclasses.replace(
        CIFAR100,
        name="fakecifar",
        folder="fake-cifar-python",
        file_md5={name: hashlib.md5(data).hexdigest() for name, data in files.items()},
        split_sizes=dict(SIZES),
        num_classes=N_CLASSES,
    )
    return files, variant


def write_plain(root: Path, files: dict[str, bytes], folder: str) -> Path:
    directory = root / folder
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def write_xz(root: Path, files: dict[str, bytes], folder: str, sums: bool = True) -> Path:
    directory = root / folder
    directory.mkdir(parents=True)
    (directory / "meta").write_bytes(files["meta"])
    lines = []
    for name in ("train", "test"):
        packed = lzma.compress(files[name])
        (directory / f"{name}.xz").write_bytes(packed)
        lines.append(f"{hashlib.sha256(packed).hexdigest()}  {name}.xz")
    if sums:
        (directory / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return directory


def assert_matches_release(variant: CifarVariant, root: Path) -> None:
    for split in ("train", "test"):
        dataset = load_cifar(variant, split, root, download=False)
        assert np.array_equal(dataset.images, expected_images(split))
        assert np.array_equal(dataset.labels, expected_labels(split))
        assert dataset.class_names == tuple(f"thing{k}" for k in range(N_CLASSES))
        assert dataset.name == f"fakecifar-{split}"


def test_plain_layout_loads_in_nhwc(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    write_plain(tmp_path / "data", files, variant.folder)
    assert_matches_release(variant, tmp_path / "data")


def test_xz_layout_is_decompressed_once_then_read_from_npy(
    tmp_path: Path, private_cache: Path, monkeypatch
) -> None:
    files, variant = fake_release()
    write_xz(tmp_path / "data", files, variant.folder)
    assert_matches_release(variant, tmp_path / "data")
    cached = private_cache / variant.folder
    assert (cached / "train").read_bytes() == files["train"]
    assert (cached / "train_images.npy").is_file() and (cached / "train_arrays.json").is_file()

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached load must not decompress or decode")

    monkeypatch.setattr(cifar, "decode_split", forbidden)
    monkeypatch.setattr(cifar, "_decompress_xz", forbidden)
    assert_matches_release(variant, tmp_path / "data")


def test_changed_source_invalidates_the_array_cache(
    tmp_path: Path, private_cache: Path, monkeypatch
) -> None:
    files, variant = fake_release()
    directory = write_xz(tmp_path / "data", files, variant.folder)
    assert_matches_release(variant, tmp_path / "data")
    decoded = []
    original = cifar.decode_split
    monkeypatch.setattr(cifar, "decode_split", lambda *a: decoded.append(a[-1]) or original(*a))
    stat = (directory / "test.xz").stat()
    os.utime(directory / "test.xz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert_matches_release(variant, tmp_path / "data")
    assert decoded == ["test"]


def test_damaged_cache_copy_is_rebuilt_from_the_source(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    write_xz(tmp_path / "data", files, variant.folder)
    assert_matches_release(variant, tmp_path / "data")
    cached = private_cache / variant.folder
    (cached / "train").write_bytes(b"damaged")
    (cached / "train_images.npy").write_bytes(b"damaged")
    assert_matches_release(variant, tmp_path / "data")
    assert (cached / "train").read_bytes() == files["train"]


def test_xz_not_matching_sha256sums_is_rejected(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    directory = write_xz(tmp_path / "data", files, variant.folder)
    packed = directory / "test.xz"
    packed.write_bytes(lzma.compress(b"something else"))
    with pytest.raises(DataError) as info:
        load_cifar(variant, "test", tmp_path / "data", download=False)
    message = str(info.value)
    assert str(packed) in message and "sha256" in message
    assert hashlib.sha256(packed.read_bytes()).hexdigest() in message


def test_xz_with_wrong_content_fails_the_md5_check(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    directory = write_xz(tmp_path / "data", files, variant.folder, sums=False)
    (directory / "test.xz").write_bytes(lzma.compress(b"something else"))
    with pytest.raises(DataError) as info:
        load_cifar(variant, "test", tmp_path / "data", download=False)
    message = str(info.value)
    assert variant.file_md5["test"] in message
    assert hashlib.md5(b"something else").hexdigest() in message
    assert not (private_cache / variant.folder / "test").exists()


def test_truncated_xz_is_a_clear_error(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    directory = write_xz(tmp_path / "data", files, variant.folder, sums=False)
    packed = directory / "test.xz"
    packed.write_bytes(packed.read_bytes()[:-40])
    with pytest.raises(DataError, match="damaged or truncated"):
        load_cifar(variant, "test", tmp_path / "data", download=False)


def make_archive(tmp_path: Path, files: dict[str, bytes], folder: str) -> Path:
    staging = write_plain(tmp_path / "staging", files, folder)
    archive = tmp_path / "server" / "fake-cifar-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=folder)
    return archive


def test_download_extracts_into_the_data_root(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    archive = make_archive(tmp_path, files, variant.folder)
    variant = dataclasses.replace(
        variant, url=archive.as_uri(), archive_md5=hashlib.md5(archive.read_bytes()).hexdigest()
    )
    root = tmp_path / "data"
    dataset = load_cifar(variant, "train", root, download=True)
    assert np.array_equal(dataset.labels, expected_labels("train"))
    assert sorted(p.name for p in root.iterdir()) == [variant.folder]  # archive removed
    assert (root / variant.folder / "meta").read_bytes() == files["meta"]


def test_download_goes_to_the_cache_when_root_is_read_only(
    tmp_path: Path, private_cache: Path, monkeypatch
) -> None:
    files, variant = fake_release()
    archive = make_archive(tmp_path, files, variant.folder)
    variant = dataclasses.replace(
        variant, url=archive.as_uri(), archive_md5=hashlib.md5(archive.read_bytes()).hexdigest()
    )
    monkeypatch.setattr(cifar, "is_writable_dir", lambda path: False)
    load_cifar(variant, "test", tmp_path / "readonly", download=True)
    assert (private_cache / variant.folder / "test").read_bytes() == files["test"]
    # The next load finds the data in the cache without downloading.
    assert_matches_release(variant, tmp_path / "readonly")


def test_downloaded_archive_with_wrong_md5_is_rejected(tmp_path: Path, private_cache: Path) -> None:
    files, variant = fake_release()
    archive = make_archive(tmp_path, files, variant.folder)
    variant = dataclasses.replace(variant, url=archive.as_uri(), archive_md5="0" * 32)
    with pytest.raises(DataError, match="Checksum mismatch"):
        load_cifar(variant, "train", tmp_path / "data", download=True)
    assert not (tmp_path / "data" / variant.folder).exists()


@pytest.mark.parametrize("variant", [CIFAR100, CIFAR10], ids=["cifar100", "cifar10"])
def test_missing_data_names_paths_and_fix(tmp_path: Path, private_cache: Path, variant) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_dataset(variant.name, "train", root=root, download=False)
    message = str(info.value)
    for expected in (
        str(root / variant.folder),
        str(private_cache / variant.folder),
        variant.url,
        "--data-root",
        "EDGECL_DATA",
        "tar -xz",
    ):
        assert expected in message


def test_offline_download_names_url_paths_and_fix(
    tmp_path: Path, private_cache: Path, monkeypatch
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", "test", root=root, download=True)
    message = str(info.value)
    for expected in (CIFAR100.url, str(root / "cifar-100-python"), "EDGECL_DATA", "unreachable"):
        assert expected in message


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(DataError, match="train"):
        cifar.load_cifar100("validation")


# --- real CIFAR-100 (skipped when /work/shared/data or $EDGECL_DATA lacks it) ---------------


@pytest.mark.slow
def test_real_cifar100_has_the_official_shapes(cifar100_root: Path) -> None:
    train = load_dataset("cifar100", "train", root=cifar100_root, download=False)
    test = load_dataset("cifar100", "test", root=cifar100_root, download=False)
    for dataset, n, per_class in ((train, 50_000, 500), (test, 10_000, 100)):
        assert dataset.images.shape == (n, 32, 32, 3) and dataset.images.dtype == np.uint8
        assert dataset.labels.shape == (n,) and dataset.labels.dtype == np.int64
        assert np.bincount(dataset.labels).tolist() == [per_class] * 100
        assert len(dataset.class_names) == 100
    assert train.class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert train.class_names[-1] == "worm"
    info = DATASET_INFO["cifar100"]
    mean = train.images[:5000].reshape(-1, 3).mean(axis=0) / 255
    assert np.allclose(mean, info["mean"], atol=0.02)


def test_real_corrupted_plain_copy_fails_the_md5_check(
    cifar100_root: Path, tmp_path: Path, private_cache: Path
) -> None:
    copy = tmp_path / "data" / "cifar-100-python"
    copy.mkdir(parents=True)
    shutil.copy(cifar100_root / "cifar-100-python" / "meta", copy / "meta")
    for name in ("train", "test"):
        (copy / name).write_bytes(b"not the official file")
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", "test", root=tmp_path / "data", download=False)
    message = str(info.value)
    assert str(copy / "test") in message
    assert CIFAR100.file_md5["test"] in message
    assert hashlib.md5(b"not the official file").hexdigest() in message
    assert "Delete" in message


def test_real_corrupted_xz_copy_fails_the_sha256_check(
    cifar100_root: Path, tmp_path: Path, private_cache: Path
) -> None:
    source = cifar100_root / "cifar-100-python"
    if not (source / "test.xz").is_file() or not (source / "SHA256SUMS").is_file():
        pytest.skip("the shared CIFAR-100 copy is not stored as .xz with SHA256SUMS")
    copy = tmp_path / "data" / "cifar-100-python"
    copy.mkdir(parents=True)
    for name in ("meta", "SHA256SUMS", "test.xz"):
        shutil.copy(source / name, copy / name)
    (copy / "train").write_bytes(b"unused")
    data = bytearray((copy / "test.xz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "test.xz").write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", "test", root=tmp_path / "data", download=False)
    message = str(info.value)
    assert str(copy / "test.xz") in message and "sha256" in message
    assert "8d89d02441ee55a536daaa6ff7c6a98ff3079fb780b3b6080d5233cb052c140f" in message
