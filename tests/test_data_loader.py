from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from edgecl.data import (
    ArrayDataset,
    BatchTransform,
    DataError,
    eval_transform,
    iterate_batches,
    num_batches,
    train_transform,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_dataset(n: int = 50, size: int = 8) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = (np.arange(n) % 5).astype(np.int64)
    return ArrayDataset(images, labels, tuple(f"c{i}" for i in range(5)), "tiny")


def collect(**kwargs) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    dataset = kwargs.pop("dataset", None) or tiny_dataset()
    indices = kwargs.pop("indices", np.arange(len(dataset)))
    options = {"transform": train_transform(8, MEAN, STD), "shuffle": True, "seed": 3}
    options.update(kwargs)
    return list(iterate_batches(dataset, indices, 16, **options))


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        for x, y in zip(left, right, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "expected"),
    [(50, 16, False, 4), (50, 16, True, 3), (48, 16, True, 3), (0, 4, False, 0), (3, 4, True, 0)],
)
def test_num_batches(n: int, batch_size: int, drop_last: bool, expected: int) -> None:
    assert num_batches(n, batch_size, drop_last) == expected


def test_batches_have_expected_types_and_cover_indices_once() -> None:
    dataset = tiny_dataset()
    batches = collect(dataset=dataset)
    assert [len(y) for _, y, _ in batches] == [16, 16, 16, 2]
    for x, y, idx in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)
        assert y.dtype == torch.int64 and idx.dtype == torch.int64
        assert torch.equal(y, torch.from_numpy(dataset.labels[idx.numpy()]))
    seen = torch.cat([idx for _, _, idx in batches]).numpy()
    assert sorted(seen.tolist()) == list(range(50))


def test_images_match_the_indexed_samples() -> None:
    dataset = tiny_dataset()
    transform = eval_transform(8, MEAN, STD)
    for x, _, idx in collect(dataset=dataset, transform=transform):
        assert torch.equal(x, transform(torch.from_numpy(dataset.images[idx.numpy()])))


def test_order_and_augmentation_are_a_function_of_the_seed() -> None:
    assert_same_batches(collect(seed=11), collect(seed=11))
    other = collect(seed=12)
    assert not torch.equal(collect(seed=11)[0][2], other[0][2])


def test_no_shuffle_keeps_the_given_order() -> None:
    indices = np.array([7, 3, 9, 1, 0, 2])
    batches = collect(indices=indices, shuffle=False)
    assert torch.cat([idx for _, _, idx in batches]).tolist() == indices.tolist()


@pytest.mark.parametrize("start", [0, 1, 3, 4])
def test_resume_yields_the_remaining_batches_exactly(start: int) -> None:
    full = collect(seed=5)
    assert_same_batches(collect(seed=5, start_batch=start), full[start:])


def test_prefetch_does_not_change_results() -> None:
    assert_same_batches(collect(prefetch=0), collect(prefetch=3))


def test_drop_last_drops_the_partial_batch() -> None:
    assert [len(y) for _, y, _ in collect(drop_last=True)] == [16, 16, 16]


class ExplodingTransform(BatchTransform):
    def __init__(self, fail_at_call: int) -> None:
        super().__init__(8, MEAN, STD)
        self.calls = 0
        self.fail_at_call = fail_at_call

    def __call__(self, images, generator=None):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise ValueError("boom in the prefetch thread")
        return super().__call__(images, generator)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_transform_errors_reach_the_consumer(prefetch: int) -> None:
    batches = iterate_batches(
        tiny_dataset(),
        np.arange(50),
        16,
        transform=ExplodingTransform(fail_at_call=2),
        shuffle=False,
        seed=0,
        prefetch=prefetch,
    )
    first = next(batches)
    assert first[0].shape[0] == 16
    with pytest.raises(ValueError, match="boom"):
        next(batches)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "edgecl-prefetch"]


def test_thread_stops_when_the_consumer_stops_early() -> None:
    before = len(prefetch_threads())
    batches = iterate_batches(
        tiny_dataset(400),
        np.arange(400),
        4,
        transform=eval_transform(8, MEAN, STD),
        shuffle=True,
        seed=0,
        prefetch=2,
    )
    next(batches)
    assert len(prefetch_threads()) == before + 1
    batches.close()
    deadline = time.monotonic() + 5
    while len(prefetch_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(prefetch_threads()) == before


def test_unstarted_iterator_starts_no_thread() -> None:
    before = len(prefetch_threads())
    iterate_batches(
        tiny_dataset(),
        np.arange(50),
        8,
        transform=eval_transform(8, MEAN, STD),
        shuffle=False,
        seed=0,
    )
    assert len(prefetch_threads()) == before


def test_bad_arguments_raise_data_error() -> None:
    dataset = tiny_dataset()
    transform = eval_transform(8, MEAN, STD)
    with pytest.raises(DataError, match="indices must lie"):
        iterate_batches(dataset, np.array([0, 50]), 4, transform=transform, shuffle=False, seed=0)
    with pytest.raises(DataError, match="batch_size"):
        iterate_batches(dataset, np.arange(5), 0, transform=transform, shuffle=False, seed=0)
    with pytest.raises(DataError, match="start_batch"):
        iterate_batches(
            dataset, np.arange(5), 2, transform=transform, shuffle=False, seed=0, start_batch=-1
        )
