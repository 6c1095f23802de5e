"""REP's adaptive layer dropping: θ_{t,l}, the spatial factor α(l), seeding and prefix layers."""

from __future__ import annotations

import math

import pytest

from edgecl.efficiency.layer_drop import (
    ALDConfig,
    LayerDropper,
    keep_probability,
    scheduled_keep_probabilities,
    spatial_alpha,
)
from edgecl.efficiency.token_merging import atom_schedule

L2P = ALDConfig(theta_bar=0.5, gamma=0.001, alpha=0.9, tau=16)
HALF = ALDConfig(theta_bar=0.5, gamma=math.log(2), alpha=0.9, tau=16)  # exp(-γ·1) = 1/2
MERGES = atom_schedule(12, 8)  # removed before block l: 0 0 0 1 3 5 8 12 17 22 28 35


def test_keep_probability_hand_computed():
    assert keep_probability(0, 0, L2P) == 1.0
    assert keep_probability(0, 17, L2P) == pytest.approx(0.95)
    e = math.exp(-1.0)
    assert keep_probability(1000, 0, L2P) == pytest.approx(0.5 + 0.5 * e)
    assert keep_probability(1000, 20, L2P) == pytest.approx(0.5 + 0.45 * e)
    assert keep_probability(10**7, 0, L2P) == pytest.approx(0.5)


def test_alpha_switches_once_more_than_tau_tokens_are_gone():
    assert spatial_alpha(16, L2P) == 1.0
    assert spatial_alpha(17, L2P) == 0.9
    assert spatial_alpha(12, ALDConfig(tau=12)) == 1.0
    assert spatial_alpha(13, ALDConfig(tau=12)) == 0.9


def test_scheduled_thetas_for_vit_12_layers():
    assert scheduled_keep_probabilities(0, MERGES, L2P) == pytest.approx([1.0] * 8 + [0.95] * 4)
    assert scheduled_keep_probabilities(1, MERGES, HALF) == pytest.approx(
        [0.75] * 8 + [0.725] * 4
    )
    # no token merging: α(l) = 1 everywhere
    assert scheduled_keep_probabilities(1, [0] * 12, HALF) == pytest.approx([0.75] * 12)


def test_a_skipped_block_merges_nothing_so_alpha_follows_the_blocks_that_ran():
    dropper = LayerDropper(12, MERGES, HALF, seed=0)
    u = [0.0] * 12
    u[3] = 0.8  # θ = 0.75: block 3 (2 merges) is skipped → 15 removed before block 8
    u[8] = 0.74  # α = 1 → θ = 0.75 → runs (with all blocks running it would be 0.725)
    u[9] = 0.73  # 15 + 5 = 20 removed → θ = 0.725 → skipped
    skip, thetas = dropper.decide(1, u)
    assert skip == [3, 9]
    assert thetas == pytest.approx([0.75] * 9 + [0.725] * 3)


def test_prefix_layers_always_run():
    dropper = LayerDropper(12, MERGES, HALF, seed=0)
    skip, _ = dropper.decide(1, [0.99] * 12, always_run={0, 1, 2, 3, 4})
    assert skip == list(range(5, 12))
    for t in range(50):
        assert not {0, 1, 2, 3, 4} & set(dropper.sample(t + 10_000, always_run=range(5)))


def test_nothing_is_skipped_at_step_zero_without_merging():
    dropper = LayerDropper(12, None, L2P, seed=3)
    assert all(dropper.sample(0) == [] for _ in range(20))


def test_draws_are_deterministic_under_a_seed_and_resume_exactly():
    a, b = LayerDropper(12, MERGES, L2P, 7), LayerDropper(12, MERGES, L2P, 7)
    seq_a = [a.sample(t) for t in range(3000, 3040)]
    assert seq_a == [b.sample(t) for t in range(3000, 3040)]
    assert any(seq_a)  # θ ≈ 0.52: plenty of skipping
    state = a.state_dict()
    after = [a.sample(t) for t in range(5)]
    c = LayerDropper(12, MERGES, L2P, 123)
    c.load_state_dict(state)
    assert [c.sample(t) for t in range(5)] == after
    d = LayerDropper(12, MERGES, L2P, 8)
    assert [d.sample(t) for t in range(3000, 3040)] != seq_a


def test_every_step_draws_depth_uniforms_whatever_is_skipped():
    a, b = LayerDropper(12, MERGES, L2P, 5), LayerDropper(12, MERGES, L2P, 5)
    a.sample(0, always_run=range(12))
    b.sample(10**6)
    assert a.sample(5000) == b.sample(5000)


def test_time_scale_stretches_the_decay():
    fast = LayerDropper(12, None, L2P, 0, time_scale=100.0)
    _, thetas = fast.decide(10, [0.0] * 12)
    assert thetas == pytest.approx([0.5 + 0.5 * math.exp(-1.0)] * 12)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="theta_bar"):
        ALDConfig(theta_bar=1.5)
    with pytest.raises(ValueError, match="merge counts"):
        LayerDropper(12, [0] * 11, L2P, 0)
