"""The integration and extrapolation helpers of benchmarks/rep_paper_scale.py, by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks.rep_paper_scale import (
    ald_fraction_run,
    at_batch,
    atom_token_blocks,
    peak_explanation,
    trapezoid_mean,
)
from edgecl.efficiency.layer_drop import ALDConfig


def test_trapezoid_mean_over_uneven_points():
    # 0..2: 4 -> 2 (area 6), 2..6: 2 -> 2 (area 8); mean 14 / 6
    assert trapezoid_mean([0, 2, 6], [4.0, 2.0, 2.0]) == pytest.approx(14 / 6)
    assert trapezoid_mean([0], [3.0]) == 3.0


def test_memory_scales_only_its_per_sample_part():
    # 100 fixed + 4 x 10 per sample measured at batch 4 -> 100 + 16 x 10 at batch 16
    assert at_batch(140.0, 100.0, 4, 16) == 260.0


def test_atom_token_blocks_by_hand():
    # 4 blocks, r_max 2: merges [0, 0, 1, 2]; tokens entering 10, 10, 10, 9 of 4 x 10
    out = atom_token_blocks(4, 2, 10)
    assert out["merged"] == 3 and out["token_blocks_kept"] == pytest.approx(39 / 40)


def test_ald_fraction_without_decay_or_with_always_run_blocks():
    never = ALDConfig(theta_bar=1.0)  # keep probability 1 everywhere
    assert ald_fraction_run(4, [0] * 4, never, set(), steps=100, draws=50)["mean"] == 1.0
    half = ALDConfig(theta_bar=0.5, gamma=1e9)  # θ = 0.5 from t > 0; block 0 always runs
    out = ald_fraction_run(4, [0] * 4, half, {0}, steps=100, draws=2000)
    assert out["t0"] == 1.0 and out["last"] == pytest.approx(0.25 + 0.75 * 0.5, abs=0.03)
    assert math.isfinite(out["mean"])


def _pair(model: str, peak: float, mean: float) -> dict:
    return {"model": model, "summary": {
        "ald": {"t0": 1.0}, "atom": {"token_blocks_kept": 0.9},
        "memory_peak": {"ratio": {"peak_b16": peak, "mean_b16": mean}}}}


def test_peak_explanation_names_the_mean_step_ratio_closest_to_the_paper():
    payload = {"paper_goals": {"memory": 0.59}, "pairs": [
        _pair("vit_small_patch16_224", 0.96, 0.78), _pair("vit_large_patch16_224", 0.89, 0.61)]}
    text = " ".join(peak_explanation(payload))
    assert "ViT-S/16: blocks run at t = 0 1.00, token-blocks kept by AToM 0.90, peak 0.96" in text
    assert "closest to the mean-step ratio at ViT-L/16 (0.61)" in text
    assert peak_explanation({"pairs": []}) == []
