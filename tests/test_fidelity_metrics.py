"""Metric conventions as options (issue 14), each on a hand-computed case: the class-IL argmax
over seen classes or every logit, both forgetting definitions, 95 % intervals from the number
of test images, and the real per-step memory peak beside the accounting figure."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn

from edgecl.metrics.accuracy import AccuracyMatrix, class_il_predictions
from edgecl.metrics.cost import CostMeter
from edgecl.metrics.intervals import (
    interval95,
    matrix_intervals95,
    mean_interval95,
    worst_case_interval95,
)
from edgecl.metrics.step_peak import AllocatorPeak, peak_of_events
from edgecl.schema import AccuracyResults, MemoryResults


# ---- class-IL argmax --------------------------------------------------------------------------
def test_class_il_argmax_over_seen_classes_or_every_logit() -> None:
    # 2 classes seen; the unseen class 3 has the largest logit for the first sample
    logits = torch.tensor([[1.0, 2.0, 0.0, 5.0], [3.0, 1.0, 4.0, 0.0]])
    assert class_il_predictions(logits, 2).tolist() == [1, 0]
    assert class_il_predictions(logits, 2, "seen").tolist() == [1, 0]
    assert class_il_predictions(logits, 2, "all").tolist() == [3, 2]
    with pytest.raises(ValueError, match="'seen' or 'all'"):
        class_il_predictions(logits, 2, "task")  # type: ignore[arg-type]


# ---- forgetting -------------------------------------------------------------------------------
def test_both_forgetting_definitions() -> None:
    matrix = AccuracyMatrix()
    for row in ([50.0], [40.0, 60.0], [70.0, 55.0, 80.0]):
        matrix.add_row(row)
    # Chaudhry: task 0 max(50, 40) - 70 = -20; task 1: 60 - 55 = 5 -> -7.5
    assert matrix.forgetting() == pytest.approx(-7.5)
    # incl. the last row: task 0 max(50, 40, 70) - 70 = 0; task 1 max(60, 55) - 55 = 5 -> 2.5
    assert matrix.forgetting_with_final() == pytest.approx(2.5)
    summary = matrix.summary()
    assert summary["forgetting_with_final"] == pytest.approx(2.5)
    single = AccuracyMatrix()
    single.add_row([90.0])
    assert single.forgetting() == single.forgetting_with_final() == 0.0


def test_results_written_before_the_new_fields_still_read() -> None:
    old = {"class_il": {"matrix": [[50.0]], "final_average": 50.0, "average_incremental": 50.0,
                        "forgetting": 0.0, "bwt": 0.0}, "task_il": None}
    parsed = AccuracyResults.model_validate(old)
    assert parsed.class_il.forgetting_with_final is None and parsed.class_il_logits == "seen"
    assert "step_peak_bytes" in MemoryResults.model_fields
    assert MemoryResults.model_fields["step_peak_bytes"].default is None


# ---- 95 % intervals ---------------------------------------------------------------------------
def test_interval_from_the_number_of_test_images() -> None:
    # p = 0.5 on 100 images: 1.96 * sqrt(0.25 / 100) = 9.80 points
    assert interval95(50.0, 100) == pytest.approx(9.7998, abs=1e-3)
    assert worst_case_interval95(100) == pytest.approx(9.7998, abs=1e-3)
    assert interval95(100.0, 100) == 0.0
    assert interval95(None, 100) is None and interval95(50.0, 0) is None
    assert interval95(math.nan, 10) is None
    # two tasks of 100 images at 50 % and 90 %: 1.96 * sqrt(0.0025 + 0.0009) / 2
    assert mean_interval95([50.0, 90.0], [100, 100]) == pytest.approx(
        100 * 1.959964 * math.sqrt(0.0025 + 0.0009) / 2, rel=1e-5)
    final, incremental = matrix_intervals95([[50.0], [50.0, 90.0]], [100, 100])
    assert final == pytest.approx(mean_interval95([50.0, 90.0], [100, 100]))
    assert incremental == pytest.approx((interval95(50.0, 100) + final) / 2)
    assert matrix_intervals95([], []) == (None, None)


def test_interval_of_a_mean_from_the_spread_of_repeated_runs() -> None:
    from edgecl.metrics.intervals import spread_interval95

    # (1, 2, 3): sd 1, t(2 dof) = 4.303, / sqrt(3)
    assert spread_interval95([1.0, 2.0, 3.0]) == pytest.approx(4.303 / math.sqrt(3))
    assert spread_interval95([5.0]) is None and spread_interval95([]) is None
    # 12 runs of 0/1 alternating: sd sqrt(12 / 44), the 9-dof quantile 2.262 (never narrower)
    assert spread_interval95([0.0, 1.0] * 6) == pytest.approx(
        2.262 * math.sqrt(3 / 11) / math.sqrt(12))


# ---- the real step peak -----------------------------------------------------------------------
def test_peak_of_events_is_the_largest_running_sum() -> None:
    events = [(3, -100), (1, 400), (2, 200), (4, -500), (5, 50)]  # out of time order
    assert peak_of_events(events) == 600  # 400 + 200 before the frees
    assert peak_of_events([(1, -10)]) == 0


def test_allocator_peak_sees_a_transient_buffer_and_adds_the_resident_bytes() -> None:
    with AllocatorPeak(torch.device("cpu"), resident_bytes=1000) as reading:
        big = torch.empty(1_000_000)  # 4,000,000 bytes, freed before the next allocation
        del big
        small = torch.empty(250_000)  # 1,000,000 bytes
    assert reading.source == "cpu_profiler"
    assert reading.peak_bytes == 1000 + 4_000_000
    del small


def test_allocator_peak_frees_its_profile_on_exit() -> None:
    """The profile is self-referencing: without the probe's own collection its event buffers
    stay until Python's next full collection, and every probe grew the process's RSS."""
    probe = AllocatorPeak(torch.device("cpu"))
    gc.disable()  # only the probe's collection may free it
    try:
        with probe:
            profile_ref = weakref.ref(probe._profile)
            torch.empty(1000)
        assert probe._profile is None and profile_ref() is None
    finally:
        gc.enable()


def test_real_peak_includes_the_no_grad_pass_the_accounting_misses(one_thread) -> None:
    """A step with a no-grad "query" pass over a wide layer (its 64 x 4096 float output,
    1 MiB, lives only during the pass) and a small trained layer: the bytes saved for backward
    are only the small layer's input, the allocator peak holds the transient output too."""
    torch.manual_seed(0)
    query, head = nn.Linear(256, 4096), nn.Linear(256, 4)
    x = torch.randn(64, 256)
    meter = CostMeter()
    meter.watch_parameters([query, head])
    with AllocatorPeak(torch.device("cpu")) as reading, meter.training_step():
        with torch.no_grad():
            feature = query(x).amax(dim=1, keepdim=True)  # 64 x 4096 transient
        loss = head(x * feature).sum()
        loss.backward()
    saved = meter.saved_bytes_per_step[-1]
    assert saved == 64 * 256 * 4  # head's input, saved for its weight gradient
    assert reading.peak_bytes >= 64 * 4096 * 4 > saved
