from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import edgecl.data.image_folder as image_folder
from edgecl.data import DataError, load_dataset

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGECL_CACHE", str(cache))
    return cache


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.fromarray(array)
    image = image.convert(mode) if mode else image
    image.save(path)
    return path


def solid(value: tuple[int, int, int], height: int = 12, width: int = 12) -> np.ndarray:
    return np.broadcast_to(np.array(value, dtype=np.uint8), (height, width, 3)).copy()


@pytest.fixture
def generic_tree(tmp_path: Path) -> Path:
    """ImageNet-R-like pre-split tree: 2 classes, PNG and JPEG, odd sizes, grey and RGBA."""
    root = tmp_path / "tree"
    save(root / "train" / "cat" / "a.png", solid((200, 10, 10)))
    save(root / "train" / "cat" / "b.PNG", solid((190, 20, 20), 20, 10))
    save(root / "train" / "dog" / "c.png", solid((10, 200, 10), 9, 30))
    save(root / "train" / "dog" / "sub" / "d.jpg", solid((10, 10, 200), 16, 16))
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    save(root / "test" / "cat" / "e.png", solid((100, 100, 100)), mode="L")
    save(root / "test" / "dog" / "f.png", solid((50, 60, 70)), mode="RGBA")
    return root


def test_generic_layout_decodes_labels_and_sizes(generic_tree: Path) -> None:
    train = load_dataset("image_folder", "train", path=generic_tree, image_size=8)
    assert train.class_names == ("cat", "dog")
    assert train.images.shape == (4, 8, 8, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert np.all(train.images[0] == (200, 10, 10))
    assert np.abs(train.images[3].astype(int) - (10, 10, 200)).max() <= 3  # JPEG rounding
    test = load_dataset("image_folder", "test", path=generic_tree, image_size=8)
    assert test.labels.tolist() == [0, 1]
    assert np.all(test.images[0] == 100) and np.all(test.images[1] == (50, 60, 70))


def test_shorter_side_resize_then_center_crop(tmp_path: Path) -> None:
    # 8 rows x 48 columns: red 8 | green 32 | blue 8. Resizing the shorter side to 4 gives 4x24,
    # and the centered 4x4 crop comes from the middle of the green band (beyond filter reach).
    bands = [solid((255, 0, 0), 8, 8), solid((0, 255, 0), 8, 32), solid((0, 0, 255), 8, 8)]
    stripes = np.concatenate(bands, axis=1)
    path = save(tmp_path / "stripes.png", stripes)
    square = image_folder.load_square_image(path, 4)
    assert square.shape == (4, 4, 3)
    assert np.all(square == (0, 255, 0))


def test_second_load_uses_the_cache_and_changes_invalidate_it(
    generic_tree: Path, monkeypatch
) -> None:
    first = load_dataset("image_folder", "train", path=generic_tree, image_size=8)
    decoded = []
    original = image_folder.load_square_image
    monkeypatch.setattr(
        image_folder, "load_square_image", lambda p, s: decoded.append(p) or original(p, s)
    )
    again = load_dataset("image_folder", "train", path=generic_tree, image_size=8)
    assert decoded == [] and np.array_equal(again.images, first.images)
    assert isinstance(again.images, np.memmap)
    save(generic_tree / "train" / "cat" / "a.png", solid((0, 0, 0)))
    os.utime(generic_tree / "train" / "cat" / "a.png", ns=(1, 1))
    changed = load_dataset("image_folder", "train", path=generic_tree, image_size=8)
    assert len(decoded) == 4 and np.all(changed.images[0] == 0)


def test_relative_path_is_resolved_under_the_data_root(generic_tree: Path) -> None:
    dataset = load_dataset(
        "image_folder", "test", root=generic_tree.parent, path=generic_tree.name, image_size=4
    )
    assert len(dataset) == 2 and dataset.images.shape[1:] == (4, 4, 3)


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {"n01": (255, 0, 0), "n02": (0, 0, 255)}
    for wnid, colour in colours.items():
        for k in range(2):
            save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", solid(colour, 16, 16))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    lines = []
    for k, wnid in enumerate(["n02", "n01", "n02"]):
        save(root / "val" / "images" / f"val_{k}.JPEG", solid(colours[wnid], 16, 16))
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t15\t15")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    save(root / "test" / "images" / "test_0.JPEG", solid((0, 0, 0), 16, 16))  # unlabelled
    return root


def test_tiny_imagenet_layout(tiny_imagenet: Path) -> None:
    train = load_dataset("image_folder", "train", path=tiny_imagenet, image_size=16)
    assert train.class_names == ("n01", "n02")
    assert train.labels.tolist() == [0, 0, 1, 1]
    test = load_dataset("image_folder", "test", path=tiny_imagenet, image_size=16)
    assert test.labels.tolist() == [1, 0, 1]  # from val/, not the unlabelled test/
    reds = test.images[test.labels == 0].reshape(-1, 3).mean(axis=0)
    assert reds[0] > 200 and reds[2] < 50


def test_missing_or_empty_folders_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="path="):
        load_dataset("image_folder", "train")
    with pytest.raises(DataError, match="not found"):
        load_dataset("image_folder", "train", path=tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="No images"):
        load_dataset("image_folder", "train", path=tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("image_folder", "test", path=tmp_path / "empty")


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "tree" / "train" / "cls" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("image_folder", "train", path=tmp_path / "tree", image_size=4)
