"""Latent replay's first batch as the reference trains it (issue 14, item 8): padded to a
multiple of ``mb_size`` and trained in minibatches of ``mb_size`` (ar1-pytorch ``pad_data``)."""

from __future__ import annotations

import copy

import torch
from test_latent_replay import build, make_batch, task_info

from edgecl.methods.latent_replay import FirstBatchGroups


def _groups(mb: int, n: int, sizes: list[int], epochs: int = 1) -> list[list[int]]:
    groups = FirstBatchGroups(mb, n)
    out, start = [], 0
    for epoch in range(epochs):
        start = 0
        for size in sizes:
            ids = torch.arange(start, start + size)
            start += size
            out += [g[1].tolist() for g in groups.add(ids.float().view(-1, 1), ids, epoch)]
    return out


def test_groups_of_mb_size_with_the_last_padded_by_the_epochs_first_samples() -> None:
    # 10 samples in runner batches of 3, 3, 3, 1; mb_size 4: ceil(10 / 4) = 3 updates, the
    # third holds samples 8, 9 and the epoch's first two, 0 and 1 (pad_data's data[:n_to_add])
    assert _groups(4, 10, [3, 3, 3, 1]) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    # a multiple of mb_size needs no padding; every epoch starts afresh
    assert _groups(4, 8, [3, 3, 2], epochs=2) == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2
    # fewer samples than mb_size: one group, padded with as many as there are
    assert _groups(8, 3, [3]) == [[0, 1, 2, 0, 1, 2]]


def test_groups_resume_from_their_state() -> None:
    groups = FirstBatchGroups(4, 10)
    ids = torch.arange(3)
    groups.add(ids.float().view(-1, 1), ids, 0)
    again = FirstBatchGroups(4, 10)
    again.load_state_dict(copy.deepcopy(groups.state_dict()), torch.device("cpu"))
    more = torch.arange(3, 6)
    assert [g[1].tolist() for g in again.add(more.float().view(-1, 1), more, 0)] == [[0, 1, 2, 3]]


def test_reference_first_batch_updates_once_per_mb_size_samples() -> None:
    """Task 0 of 32 images in runner batches of 16, mb_size 48: the runner mode updates on
    each batch; the reference mode waits, then runs one update on 32 + 16 padded latents."""
    runner, reference = build(), build({"first_batch": "reference"})
    stats = {}
    for name, method in (("runner", runner), ("reference", reference)):
        method.begin_task(task_info(0))
        before = method.head.weight.detach().clone()
        first = method.observe(make_batch(method.info, 0, 0))
        unchanged = torch.equal(before, method.head.weight)
        second = method.observe(make_batch(method.info, 0, 1))
        method.end_task(task_info(0))
        stats[name] = (first.n_samples, unchanged, second.n_samples)
    assert stats["runner"] == (16, False, 16)
    assert stats["reference"] == (0, True, 48)
    # later batches are unaffected: the mixing rule's minibatches of new samples + latents
    reference.begin_task(task_info(1))
    assert reference.observe(make_batch(reference.info, 1, 0)).n_samples > 16
