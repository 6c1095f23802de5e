from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgecl import report

MIB = 1024**2


def _summary(matrix: list[list[float]]) -> dict[str, Any]:
    rows = [sum(r) / len(r) for r in matrix]
    last = len(matrix) - 1
    drops = [max(matrix[t][i] for t in range(i, last)) - matrix[last][i] for i in range(last)]
    return {
        "matrix": matrix,
        "final_average": rows[-1],
        "average_incremental": sum(rows) / len(rows),
        "forgetting": sum(drops) / len(drops),
        "bwt": sum(matrix[last][i] - matrix[i][i] for i in range(last)) / last,
    }


def _estimate(train_j: float, total_j: float, name: str) -> dict[str, Any]:
    return {"train_joules": train_j, "total_joules": total_j, "profile": {"name": name}}


def _result(
    name: str,
    class_il: list[list[float]],
    *,
    train_flops: int,
    selection_flops: int,
    footprint_mib: float,
    train_s: float,
    host_j: float,
    task_il: list[list[float]] | None = None,
) -> dict[str, Any]:
    n_tasks = len(class_il)
    return {
        "schema_version": 1,
        "edgecl_version": "0.1.0",
        "run_name": name,
        "method": name.split("-")[0],
        "status": "completed",
        "config": {"method": {"name": name}, "seed": 0, "data": {"url": "https://example.org/x"}},
        "environment": {
            "python": "3.11.7",
            "torch": "2.13.0+cpu",
            "platform": "Linux-x86_64",
            "processor": "x86_64",
            "threads": 2,
            "device": "cpu",
            "gpu": None,
        },
        "scenario": {
            "dataset": "cifar100",
            "n_tasks": n_tasks,
            "class_order": list(range(2 * n_tasks)),
            "classes_per_task": [[2 * t, 2 * t + 1] for t in range(n_tasks)],
            "train_samples_per_task": [1000] * n_tasks,
            "test_samples_per_task": [200] * n_tasks,
        },
        "accuracy": {
            "class_il": _summary(class_il),
            "task_il": _summary(task_il) if task_il else None,
        },
        "cost": {
            "flops": {
                "train": {
                    "forward": train_flops // 3,
                    "backward": train_flops - train_flops // 3 - 1000,
                    "optimizer": 1000,
                    "total": train_flops,
                },
                "selection": selection_flops,
                "eval": 10**9,
                "train_samples": 1000 * n_tasks,
                "train_per_sample": train_flops / (1000 * n_tasks),
            },
            "memory": {
                "peak_saved_for_backward_bytes": int(footprint_mib * MIB * 0.6),
                "mean_saved_for_backward_bytes": int(footprint_mib * MIB * 0.5),
                "parameter_bytes": int(footprint_mib * MIB * 0.1),
                "trainable_parameter_bytes": int(footprint_mib * MIB * 0.1),
                "gradient_bytes": int(footprint_mib * MIB * 0.1),
                "optimizer_state_bytes": int(footprint_mib * MIB * 0.1),
                "buffer_bytes": int(footprint_mib * MIB * 0.1),
                "training_footprint_bytes": int(footprint_mib * MIB),
                "training_footprint_mean_bytes": int(footprint_mib * MIB * 0.9),
                "peak_rss_bytes": 900 * MIB,
                "cuda_max_allocated_bytes": None,
            },
            "time_s": {
                "data": 1.0,
                "selection": 0.5,
                "forward": train_s / 3,
                "backward": train_s / 2,
                "step": 0.5,
                "eval": 3.0,
                "train_total": train_s,
                "wall_total": train_s + 5.0,
            },
            "energy": {
                "unit": "J",
                "estimates": {
                    "host": _estimate(host_j * 0.8, host_j, "this host (2 threads)"),
                    "jetson_nano": _estimate(host_j * 2, host_j * 2.5, "Jetson Nano"),
                },
                "measured": None,
                "note": "estimates from FLOPs and bytes with device profiles, not measurements",
            },
        },
        "per_task": [
            {
                "task": t,
                "train_steps": 10,
                "train_samples": 1000,
                "train_time_s": train_s / n_tasks,
                "train_flops": train_flops // n_tasks,
                "eval_time_s": 1.0,
            }
            for t in range(n_tasks)
        ],
    }


@pytest.fixture
def baseline() -> dict[str, Any]:
    return _result(
        "er",
        [[90.0], [60.0, 80.0], [40.0, 50.0, 70.0]],
        task_il=[[95.0], [90.0, 92.0], [85.0, 88.0, 91.0]],
        train_flops=2 * 10**12,
        selection_flops=0,
        footprint_mib=100.0,
        train_s=50.0,
        host_j=500.0,
    )


@pytest.fixture
def efficient() -> dict[str, Any]:
    return _result(
        "sparse-er",
        [[88.0], [62.0, 78.0], [45.0, 52.0, 68.0]],
        train_flops=5 * 10**11,
        selection_flops=10**11,
        footprint_mib=25.0,
        train_s=20.0,
        host_j=125.0,
    )


def _write(run_dir: Path, result: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(result))
    return run_dir


# ------------------------------------------------------------------------------- loading


def test_load_results_from_dir_or_file(tmp_path: Path, baseline) -> None:
    run_dir = _write(tmp_path / "er", baseline)
    assert report.load_results(run_dir) == baseline
    assert report.load_results(run_dir / "results.json") == baseline


def test_missing_results_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(report.MissingResultsError, match="no results file") as info:
        report.load_results(tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_results_give_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"schema_version": 1, "accuracy": ')
    with pytest.raises(report.ResultsError, match="not valid JSON"):
        report.load_results(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(schema_version=2), "schema_version is 2"),
        (lambda r: r.pop("cost"), "missing top-level keys"),
        (lambda r: r["accuracy"]["class_il"].update(matrix=[[1.0, 2.0]]), "lower-triangular"),
    ],
)
def test_wrong_schema_is_rejected(tmp_path: Path, baseline, mutate, message: str) -> None:
    mutate(baseline)
    _write(tmp_path, baseline)
    with pytest.raises(report.ResultsError, match=message):
        report.load_results(tmp_path)


def test_write_report_on_missing_run_fails_without_writing(tmp_path: Path) -> None:
    with pytest.raises(report.MissingResultsError):
        report.write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- comparison


def test_compare_table_values_and_ratios(baseline, efficient) -> None:
    first, second = report.compare_table([baseline, efficient])

    assert first["name"] == "er" and second["method"] == "sparse"
    assert first["class_il_final"] == pytest.approx(160 / 3)
    assert first["class_il_avg_incremental"] == pytest.approx((90 + 70 + 160 / 3) / 3)
    assert first["class_il_forgetting"] == pytest.approx(((90 - 40) + (80 - 50)) / 2)
    assert first["task_il_final"] == pytest.approx(88.0)
    assert second["task_il_final"] is None
    assert first["train_gflops"] == pytest.approx(2000.0)
    assert second["selection_gflops"] == pytest.approx(100.0)
    assert second["train_footprint_mib"] == pytest.approx(25.0)
    assert second["energy_host_j"] == pytest.approx(125.0)

    for key in ("flops_ratio", "memory_ratio", "time_ratio", "energy_ratio"):
        assert first[key] == pytest.approx(1.0)
    assert first["acc_delta"] == pytest.approx(0.0)
    # (500 + 100) GFLOPs train + selection against 2000 + 0.
    assert second["flops_ratio"] == pytest.approx(0.3)
    assert second["memory_ratio"] == pytest.approx(0.25)
    assert second["time_ratio"] == pytest.approx(0.4)
    assert second["energy_ratio"] == pytest.approx(0.25)
    assert second["acc_delta"] == pytest.approx(55.0 - 160 / 3)


def test_compare_table_handles_nulls(baseline, efficient) -> None:
    baseline["cost"]["energy"]["estimates"] = None
    baseline["cost"]["memory"]["training_footprint_bytes"] = None
    _, second = report.compare_table([baseline, efficient])
    assert second["energy_ratio"] is None and second["memory_ratio"] is None
    assert second["energy_host_j"] == pytest.approx(125.0)
    assert report.compare_table([]) == []


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def test_compare_markdown_formats_one_row_per_run(baseline, efficient) -> None:
    markdown = report.compare_markdown([baseline, efficient])
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 4 and re.fullmatch(r"\|(---\|){16}", table_lines[1])
    header, first, second = (_cells(table_lines[i]) for i in (0, 2, 3))
    assert len(header) == len(first) == len(second) == 16
    cells = dict(zip(header, second, strict=True))
    assert cells["Run"] == "sparse-er"
    assert cells["Class-IL final acc (%)"] == "55.00"
    assert cells["Train GFLOPs"] == "500"
    assert cells["Selection GFLOPs"] == "100"
    assert cells["Training footprint (MiB, peak)"] == "25.0"
    assert cells["FLOPs ×"] == "0.30×"
    assert cells["Memory ×"] == "0.25×"
    assert cells["Task-IL final acc (%)"] == "—"
    assert cells["Class-IL acc Δ (pts)"] == "+1.67"
    assert dict(zip(header, first, strict=True))["Train GFLOPs"] == "2,000"
    assert "relative to the first run (er)" in markdown
    assert "not measurements" in markdown


# ------------------------------------------------------------------------------- per-run


def test_run_markdown_has_matrices_and_cost_breakdown(baseline) -> None:
    markdown = report.run_markdown(baseline)
    for heading in ("## Summary", "## Accuracy", "## Cost", "## Configuration"):
        assert heading in markdown
    assert "**Class-IL accuracy matrix**" in markdown and "**Task-IL accuracy matrix**" in markdown
    assert "| 2 | 40.00 | 50.00 | 70.00 | 53.33 |" in markdown
    assert "| 0 | 90.00 |  |  | 90.00 |" in markdown
    assert "| Train total | 2,000 |" in markdown
    assert "| Optimizer state | 10.0 |" in markdown
    assert "| Training total | 50.0 | 90.9% |" in markdown
    assert "Energy estimates (not measurements)" in markdown
    assert "jetson_nano: Jetson Nano" in markdown
    assert "Measured energy: none" in markdown


def test_run_markdown_tolerates_missing_task_il_and_failed_status(efficient) -> None:
    efficient["status"] = "failed"
    efficient["per_task"] = []
    markdown = report.run_markdown(efficient)
    assert "Task-IL accuracy was not recorded" in markdown
    assert "Warning: run status is 'failed'" in markdown


# ------------------------------------------------------------------------------- HTML


def _assert_self_contained(page: str) -> list[bytes]:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert images
    decoded = [base64.b64decode(image) for image in images]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in decoded)
    return decoded


def test_run_html_is_self_contained_with_plots(baseline) -> None:
    page = report.run_html(baseline)
    images = _assert_self_contained(page)
    assert len(images) == 3  # class-IL heatmap, task-IL heatmap, average-accuracy curves
    assert "Energy estimates (not measurements)" in page
    assert "https://example.org/x" in page  # config text is shown, never linked


def test_compare_html_is_self_contained_with_cost_plots(baseline, efficient) -> None:
    page = report.compare_html([baseline, efficient])
    images = _assert_self_contained(page)
    assert len(images) == 3  # curves, accuracy vs FLOPs, accuracy vs memory
    assert "Accuracy vs compute" in page and "Accuracy vs memory" in page


# ------------------------------------------------------------------------------- writing


def test_write_report_and_compare(tmp_path: Path, baseline, efficient) -> None:
    run_a = _write(tmp_path / "runs" / "er", baseline)
    run_b = _write(tmp_path / "runs" / "sparse", efficient)

    md_path, html_path = report.write_report(run_a)
    assert (md_path, html_path) == (run_a / "report.md", run_a / "report.html")
    assert md_path.read_text().startswith("# edgecl run report: er")
    assert sorted(p.name for p in run_a.iterdir()) == ["report.html", "report.md", "results.json"]

    out = tmp_path / "comparison" / "nested"
    md_path, html_path = report.write_compare([run_a, run_b], out)
    assert md_path == out / "compare.md" and html_path.is_file()
    assert "sparse-er" in md_path.read_text()
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.md"]
