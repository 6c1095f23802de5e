from __future__ import annotations

import numpy as np
import pytest

from edgecl.data import ArrayDataset, DataError, class_incremental, load_dataset


def labelled_dataset(per_class: int, n_classes: int = 6, name: str = "toy-train") -> ArrayDataset:
    labels = np.tile(np.arange(n_classes, dtype=np.int64), per_class)
    # Each image stores its own index so that selections can be traced back.
    images = np.zeros((len(labels), 2, 2, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    images[:, 0, 1, 0] = np.arange(len(labels)) // 256
    return ArrayDataset(images, labels, tuple(f"class{i}" for i in range(n_classes)), name)


def original_index(dataset: ArrayDataset) -> np.ndarray:
    low, high = dataset.images[:, 0, 0, 0], dataset.images[:, 0, 1, 0]
    return low.astype(np.int64) + 256 * high.astype(np.int64)


@pytest.fixture
def toy() -> tuple[ArrayDataset, ArrayDataset]:
    return labelled_dataset(10), labelled_dataset(4, name="toy-test")


def test_fixed_order_splits_classes_in_numeric_order(toy) -> None:
    scenario = class_incremental(*toy, n_tasks=3)
    assert scenario.num_classes == 6
    assert scenario.class_order.tolist() == [0, 1, 2, 3, 4, 5]
    assert [t.classes.tolist() for t in scenario.tasks] == [[0, 1], [2, 3], [4, 5]]
    assert [t.index for t in scenario.tasks] == [0, 1, 2]
    assert len(scenario.train) == 60 and len(scenario.test) == 24
    # Nothing was dropped or reordered: the image array is shared, not copied.
    assert scenario.train.images is toy[0].images


def test_labels_are_remapped_to_stream_order(toy) -> None:
    train, test = toy
    scenario = class_incremental(train, test, n_tasks=2, class_order=[4, 1, 5, 0, 2, 3])
    order = scenario.class_order
    for new, original in ((scenario.train, train), (scenario.test, test)):
        source = original_index(new)
        assert np.array_equal(order[new.labels], original.labels[source])
    assert scenario.train.class_names == tuple(f"class{c}" for c in order)


def test_tasks_partition_the_samples(toy) -> None:
    scenario = class_incremental(*toy, n_tasks=3, class_order="seeded", seed=4)
    for split, attr in ((scenario.train, "train_indices"), (scenario.test, "test_indices")):
        all_indices = np.concatenate([getattr(t, attr) for t in scenario.tasks])
        assert sorted(all_indices.tolist()) == list(range(len(split)))
        for task in scenario.tasks:
            assert set(split.labels[getattr(task, attr)].tolist()) == set(task.classes.tolist())


def test_seeded_order_is_the_documented_permutation(toy) -> None:
    scenario = class_incremental(*toy, n_tasks=2, class_order="seeded", seed=9)
    expected = np.random.default_rng(9).permutation(6)
    assert scenario.class_order.tolist() == expected.tolist()
    again = class_incremental(*toy, n_tasks=2, class_order="seeded", seed=9)
    assert np.array_equal(again.train.labels, scenario.train.labels)


def test_classes_seen_and_task_of_class(toy) -> None:
    scenario = class_incremental(*toy, n_tasks=3, classes_per_task=[1, 2, 3])
    assert scenario.classes_seen(0).tolist() == [0]
    assert scenario.classes_seen(1).tolist() == [0, 1, 2]
    assert scenario.classes_seen(2).tolist() == list(range(6))
    assert scenario.task_of_class().tolist() == [0, 1, 1, 2, 2, 2]
    assert scenario.task_of_class().dtype == np.int64
    with pytest.raises(DataError, match="out of range"):
        scenario.classes_seen(3)


def test_subset_class_order_keeps_only_those_classes(toy) -> None:
    scenario = class_incremental(*toy, n_tasks=2, class_order=[5, 3])
    assert scenario.num_classes == 2
    assert len(scenario.train) == 20 and len(scenario.test) == 8
    assert scenario.task_of_class().tolist() == [0, 1]


def test_subsampling_is_seeded_and_independent_of_class_order(toy) -> None:
    kwargs = {"train_per_class": 3, "test_per_class": 2, "seed": 1}
    fixed = class_incremental(*toy, n_tasks=3, **kwargs)
    seeded = class_incremental(*toy, n_tasks=3, class_order="seeded", **kwargs)
    assert len(fixed.train) == 18 and len(fixed.test) == 12
    for split in ("train", "test"):
        a, b = getattr(fixed, split), getattr(seeded, split)
        assert sorted(original_index(a).tolist()) == sorted(original_index(b).tolist())
        assert np.bincount(a.labels).tolist() == [3 if split == "train" else 2] * 6
    other_seed = class_incremental(*toy, n_tasks=3, train_per_class=3, seed=2)
    assert not np.array_equal(original_index(other_seed.train), original_index(fixed.train))
    repeat = class_incremental(*toy, n_tasks=3, **kwargs)
    assert np.array_equal(original_index(repeat.train), original_index(fixed.train))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_tasks": 4}, "cannot be split evenly"),
        ({"n_tasks": 0}, "at least 1"),
        ({"n_tasks": 2, "class_order": [0, 1, 9]}, r"unknown class ids \[9\]"),
        ({"n_tasks": 2, "class_order": [0, 1, 1, 2]}, r"repeats class ids \[1\]"),
        ({"n_tasks": 2, "class_order": "random"}, "Unknown class_order"),
        ({"n_tasks": 2, "class_order": []}, "non-empty"),
        ({"n_tasks": 2, "train_per_class": 11}, "only 10 samples of class 0"),
        ({"n_tasks": 2, "test_per_class": 5}, "only 4 samples"),
        ({"n_tasks": 2, "train_per_class": 0}, "at least 1"),
        ({"n_tasks": 2, "classes_per_task": [2, 2]}, "summing to"),
        ({"n_tasks": 2, "classes_per_task": [7, -1]}, "positive"),
        ({"n_tasks": 2, "seed": -1}, "non-negative"),
    ],
)
def test_bad_arguments_raise_data_error(toy, kwargs, message) -> None:
    with pytest.raises(DataError, match=message):
        class_incremental(*toy, **kwargs)


def test_mismatched_splits_are_rejected(toy) -> None:
    other = labelled_dataset(2, n_classes=5)
    with pytest.raises(DataError, match="different class names"):
        class_incremental(toy[0], other, n_tasks=1)


@pytest.mark.slow
def test_cifar100_ten_task_scenario(cifar100_root) -> None:
    train = load_dataset("cifar100", "train", root=cifar100_root, download=False)
    test = load_dataset("cifar100", "test", root=cifar100_root, download=False)
    scenario = class_incremental(train, test, 10, class_order="seeded", seed=1993)
    assert len(scenario.tasks) == 10
    for task in scenario.tasks:
        assert len(task.classes) == 10
        assert len(task.train_indices) == 5000 and len(task.test_indices) == 1000
    reduced = class_incremental(train, test, 10, train_per_class=50, test_per_class=20)
    assert len(reduced.train) == 5000 and len(reduced.test) == 2000
    assert np.bincount(reduced.train.labels).tolist() == [50] * 100
