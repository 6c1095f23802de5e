"""benchmarks/prompt_efficiency.py's derived notes and targets (hand-made rows)."""

from __future__ import annotations

from benchmarks.prompt_efficiency import (
    combination_targets,
    ratios,
    recompute_note,
    seed_deltas,
    seed_lines,
)


def row(acc: float, seconds: float, peak: int) -> dict:
    return {"class_il_final": acc, "train_seconds": seconds, "train_flops": 1,
            "step_peak_bytes": peak, "accounting_peak_bytes": peak, "energy_joules": 1.0}


ROWS = {"coda_prompt": row(31.0, 100.0, 400), "coda_prompt_recompute": row(31.0, 110.0, 200),
        "cps_prompt_rep": row(30.5, 40.0, 100)}


def test_recompute_note_compares_the_host_with_itself_and_the_combination_with_it():
    (note,) = recompute_note(ROWS)
    assert "step peak 0.50x, training time 1.10x, class-IL +0.0 pts" in note
    assert "the combination against that run: step peak 0.50x, training time 0.36x" in note
    assert recompute_note({"coda_prompt": ROWS["coda_prompt"]}) == []


def test_combination_targets_use_the_step_peak_and_the_accuracy_delta():
    targets = combination_targets(ROWS, ratios(ROWS, "coda_prompt"))
    assert [(t["measured"], t["met"]) for t in targets] == [(0.25, True), (0.4, True),
                                                            (-0.5, True)]


def test_the_accuracy_target_is_the_mean_of_the_paired_seed_deltas():
    seeds = seed_deltas("cps_prompt_rep", {
        42: {"coda_prompt": 31.0, "cps_prompt_rep": 30.5},
        43: {"coda_prompt": 30.0, "cps_prompt_rep": 28.0},
        44: {"coda_prompt": 32.0, "cps_prompt_rep": 31.0}})
    assert seeds["deltas"] == [-0.5, -2.0, -1.0]
    assert seeds["mean_delta"] == -3.5 / 3
    # squared deviations from -7/6 sum to 7/6, so sd = sqrt(7/12); t(2 dof) = 4.303
    assert abs(seeds["mean_delta_ci95"] - 4.303 * (7 / 12) ** 0.5 / 3 ** 0.5) < 1e-3
    accuracy = combination_targets(ROWS, ratios(ROWS, "coda_prompt"), seeds)[2]
    assert accuracy["name"].endswith("mean over 3 seeds")
    assert (accuracy["measured"], accuracy["met"]) == (-3.5 / 3, False)
    assert seed_lines(seeds)[-1] == "| mean |  |  | -1.2 ± 1.9 |"


def test_the_seed_table_names_the_methods_each_later_seed_reran():
    seeds = seed_deltas("cps_prompt_rep", {
        42: {"coda_prompt": 31.0, "cps_prompt_rep": 30.5},
        43: {"coda_prompt": 30.0, "cps_prompt_rep": 28.0}})
    assert seed_lines(seeds)[1].endswith("the others rerun only coda_prompt, cps_prompt_rep):")
