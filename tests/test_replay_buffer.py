"""Reservoir buffer: fill, replacement rule, retrieval and bytes."""

from __future__ import annotations

import torch

from edgecl.efficiency.replay_buffer import ReservoirBuffer


def test_fills_in_order_then_reservoir_replaces():
    buf = ReservoirBuffer(4, torch.Generator().manual_seed(0))
    imgs = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 2, 2, 3).clone()
    buf.add(imgs, torch.tensor([0, 1, 2]))
    assert len(buf) == 3 and buf.labels[:3].tolist() == [0, 1, 2]
    assert buf.images[2].unique().item() == 2


def test_reservoir_slot_rule_matches_hand_draws():
    g = torch.Generator().manual_seed(3)
    buf = ReservoirBuffer(2, g)
    buf.seen = 5  # examples 5, 6, 7 arrive
    expected_draws = (torch.rand(3, generator=torch.Generator().manual_seed(3),
                                 dtype=torch.float64) * torch.tensor([6, 7, 8])).long()
    slots = buf.reservoir_slots(3)
    want = [int(d) if d < 2 else -1 for d in expected_draws]
    assert slots.tolist() == want


def test_reservoir_keeps_a_uniform_sample():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(100)
    for _ in range(300):
        buf = ReservoirBuffer(10, g)
        for start in range(0, 100, 20):
            buf.add(torch.zeros(20, 1, 1, 1, dtype=torch.uint8), torch.arange(start, start + 20))
        counts[buf.labels] += 1
    # every example kept with probability 10/100: 30 expected in 300 trials
    assert counts.min() > 10 and counts.max() < 55
    assert abs(counts.mean().item() - 30.0) < 1e-6


def test_last_writer_wins_on_slot_collisions():
    buf = ReservoirBuffer(1, torch.Generator().manual_seed(0))
    buf.add(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), torch.tensor([7]))
    buf.reservoir_slots = lambda n: torch.zeros(n, dtype=torch.long)  # all draw slot 0
    buf.add(torch.zeros(3, 1, 1, 1, dtype=torch.uint8), torch.tensor([1, 2, 3]))
    assert buf.labels.tolist() == [3]


def test_sample_is_distinct_and_bytes_counted():
    buf = ReservoirBuffer(8, torch.Generator().manual_seed(0))
    buf.add(torch.zeros(8, 32, 32, 3, dtype=torch.uint8), torch.arange(8),
            logits=torch.zeros(8, 10))
    idx = buf.sample(5)
    assert len(idx.unique()) == 5
    assert buf.nbytes() == 8 * 32 * 32 * 3 + 8 * 8 + 8 * 8 + 8 * 10 * 4


def test_state_round_trip_is_exact():
    buf = ReservoirBuffer(4, torch.Generator().manual_seed(0))
    buf.add(torch.randint(0, 255, (6, 2, 2, 3), dtype=torch.uint8), torch.arange(6))
    state = buf.state_dict()
    other = ReservoirBuffer(4, torch.Generator().manual_seed(99))
    other.load_state_dict(state)
    assert other.sample(3).tolist() == buf.sample(3).tolist()
