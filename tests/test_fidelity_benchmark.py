"""The side-by-side fidelity benchmark's arithmetic (benchmarks/fidelity.py), on hand-made pairs:
its goal is judged on the mean gap over seeds, with a t interval from their spread."""

from __future__ import annotations

import pytest

from benchmarks.fidelity import markdown, method_row, over_seeds


def side(final: float) -> dict:
    return {"final_average": final, "final_average_ci95": 3.0, "forgetting": 4.0,
            "forgetting_with_final": 4.5, "matrix": [[final]], "wall_seconds": 1.0,
            "load_average_before": [0, 0, 0], "load_average_after": [0, 0, 0], "log": "x"}


def test_the_gap_is_the_mean_over_seeds_with_a_t_interval() -> None:
    rows = {s: method_row({"official": side(o), "edgecl": side(e)})
            for s, (o, e) in {42: (13.0, 15.4), 43: (14.0, 13.6), 44: (12.0, 12.8)}.items()}
    res = over_seeds(rows, "p")
    assert res["accuracy_gap_per_seed"] == pytest.approx([2.4, -0.4, 0.8])
    assert res["accuracy_gap"] == pytest.approx(0.9333333)
    # stdev of (2.4, -0.4, 0.8) is 1.40475; t(2 dof) = 4.303; / sqrt(3)
    assert res["accuracy_gap_ci95"] == pytest.approx(4.303 * 1.404754 / 3 ** 0.5, rel=1e-4)
    assert res["official_mean"] == pytest.approx(13.0) and res["edgecl_mean"] == pytest.approx(
        13.9333333)
    one = over_seeds({42: rows[42]}, "p")
    assert one["accuracy_gap"] == pytest.approx(2.4) and "accuracy_gap_ci95" not in one
    text = markdown({"command": "c", "methods": {"dualprompt": res}, "targets": [],
                     "notes": []})
    assert "| dualprompt | 3 | 13.0 | 13.9 | n/a | +2.4, -0.4, +0.8 | 0.9 ± 3.5 | +0.9 |" in text


def test_the_goal_is_judged_on_the_reference_behaviour_run_where_there_is_one() -> None:
    from benchmarks.fidelity import MATCHED

    rows = {s: method_row({"official": side(o), "edgecl": side(e), MATCHED: side(m)})
            for s, (o, e, m) in {42: (13.0, 15.0, 13.5), 43: (14.0, 17.0, 13.0)}.items()}
    res = over_seeds(rows, "p")
    assert res["accuracy_gap_per_seed"] == pytest.approx([0.5, -1.0])
    assert res["accuracy_gap"] == pytest.approx(-0.25)
    assert res["edgecl_gap_mean"] == pytest.approx(2.5)
    assert res[f"{MATCHED}_mean"] == pytest.approx(13.25)


def test_the_benchmarks_shared_split_and_class_il_summary() -> None:
    from results_factory import make_results

    from benchmarks.common import class_il_summary, split_cifar100
    from edgecl.metrics.intervals import mean_interval95

    data = split_cifar100(2, 8, 4, classes_per_task=5)
    assert data["class_order"] == list(range(10)) and data["per_class_subset"] == "first"
    res = make_results("x", [[60.0], [40.0, 80.0]], train_flops=10_000)
    summary = class_il_summary(res)
    assert summary["class_il_final"] == pytest.approx(60.0)
    assert summary["forgetting"] == pytest.approx(20.0)  # task 0: 60 -> 40
    assert summary["class_il_final_ci95"] == pytest.approx(mean_interval95([40.0, 80.0],
                                                                           [200, 200]))
