"""CORe50 loader and NICv2-391 scenario on a tiny synthetic tree with the real layout
(``make_core50_tree`` and the ``core50_root`` fixture: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecl.data.base import DataError
from edgecl.data.core50 import (
    batch_filelists,
    core50_scenario,
    first_appearance_order,
    load_core50,
)


def test_load_core50_splits(core50_root: Path) -> None:
    train = load_core50("train", core50_root, image_size=8)
    test = load_core50("test", core50_root, image_size=8)
    assert len(train) == 3 + 390 and len(test) == 20
    assert train.images.shape[1:] == (8, 8, 3) and train.num_classes == 50
    assert train.labels[:3].tolist() == [1, 0, 1]  # batch order, labels = object ids
    assert int(train.images[0, 0, 0, 0]) == 15  # the PNG's value (label 1 → 15)
    again = load_core50("train", core50_root, image_size=8)  # from the decoded cache
    assert np.array_equal(again.images, train.images)


def test_nicv2_391_scenario(core50_root: Path) -> None:
    sc = core50_scenario(core50_root, image_size=8)
    assert sc.n_tasks == 391 and sc.num_classes == 5
    assert sc.class_order.tolist() == [1, 0, 2, 3, 4]  # first appearance: o2, o1, o3, ...
    assert sc.tasks[0].classes.tolist() == [0, 1] and sc.tasks[0].train_indices.tolist() == [0,
                                                                                            1, 2]
    assert sc.train.labels[:3].tolist() == [0, 1, 0]  # o2 → 0, o1 → 1
    assert sc.tasks[1].classes.tolist() == [2] and sc.tasks[1].train_indices.tolist() == [3]
    # test images go to the batch that introduces their class (4 per object)
    sizes = [len(t.test_indices) for t in sc.tasks]
    assert sizes[0] == 8 and sizes[1] == 4 and sizes[5] == 4 and sizes[6] == 4
    assert sum(sizes) == 20 and sizes[2] == 0
    assert set(sc.test.labels[sc.tasks[5].test_indices].tolist()) == {3}
    strided = core50_scenario(core50_root, image_size=8, test_stride=2)
    assert len(strided.test) == 10 and "every2" in strided.name
    first = core50_scenario(core50_root, image_size=8, max_batches=2)
    assert first.n_tasks == 2 and len(first.train) == 4 and first.num_classes == 3
    assert len(first.test) == 12  # only the test images of the 3 classes seen


def test_three_digit_batch_names_are_read_in_numeric_order(tmp_path: Path) -> None:
    for i in (0, 1, 2, 10, 100):
        (tmp_path / f"train_batch_{i:03d}_filelist.txt").write_text("")
    with pytest.raises(DataError, match="without gaps"):
        batch_filelists(tmp_path, None)
    for i in range(3, 101):
        (tmp_path / f"train_batch_{i:03d}_filelist.txt").write_text("")
    files = batch_filelists(tmp_path, 101)
    assert [f.name for f in files[:2]] == ["train_batch_000_filelist.txt",
                                           "train_batch_001_filelist.txt"]
    with pytest.raises(DataError, match="expected 391"):
        batch_filelists(tmp_path, 391)


def test_missing_data_explains_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="core50_128x128"):
        load_core50("train", tmp_path)
    (tmp_path / "core50_128x128").mkdir()
    with pytest.raises(DataError, match="filelists for nicv2_391 run 0"):
        load_core50("train", tmp_path)


def test_first_appearance_order() -> None:
    order = first_appearance_order([np.array([4, 2, 4]), np.array([2, 7]), np.array([0])])
    assert order.tolist() == [4, 2, 7, 0]
