from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from results_factory import make_results, seen_classes_accuracy

from edgecl import report
from edgecl.errors import MissingResultsError, ResultsError
from edgecl.schema import RunResults, save_results


@pytest.fixture
def baseline() -> RunResults:
    return make_results(
        "er",
        [[90.0], [60.0, 80.0], [40.0, 50.0, 70.0]],
        task_il=[[95.0], [90.0, 92.0], [85.0, 88.0, 91.0]],
        train_flops=2 * 10**12,
        footprint_mib=100.0,
        train_s=50.0,
        host_j=500.0,
    )


@pytest.fixture
def efficient() -> RunResults:
    return make_results(
        "sparse-er",
        [[88.0], [62.0, 78.0], [45.0, 52.0, 68.0]],
        train_flops=6 * 10**11,
        selection_flops=10**11,
        prefix_flops=5 * 10**10,
        footprint_mib=25.0,
        train_s=20.0,
        host_j=125.0,
        extra={"rep": {"query_cache_hits": 42}},
    )


@pytest.fixture
def seen() -> RunResults:
    curve = [(3, 8, 61.0), (5, 10, 52.5)]
    run = make_results("finetune", [[0.0]] * 6, train_flops=10**12,
                       accuracy=seen_classes_accuracy(curve))
    run.config["eval"] = {"every_n_tasks": 4}
    return run


def _write(run_dir: Path, result: RunResults) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_results(run_dir, result)
    return run_dir


def _write_dict(run_dir: Path, data: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(data))
    return run_dir


def _version_1(result: RunResults) -> dict:
    """What the runner wrote before schema 2: selection FLOPs beside the train total."""
    data = result.model_dump(mode="json")
    flops = data["cost"]["flops"]
    data["schema_version"] = 1
    flops["selection"] = flops["train"].pop("selection")
    flops["train_samples"] = flops.pop("per_sample")["samples"]
    return data


# ------------------------------------------------------------------------------- loading


def test_load_results_from_dir_or_file(tmp_path: Path, baseline) -> None:
    run_dir = _write(tmp_path / "er", baseline)
    assert report.load_results(run_dir) == baseline
    assert report.load_results(run_dir / "results.json") == baseline


def test_missing_results_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MissingResultsError, match="no results.json") as info:
        report.load_results(tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_results_give_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"schema_version": 2, "accuracy": ')
    with pytest.raises(ResultsError, match="not readable JSON"):
        report.load_results(tmp_path)


def test_version_1_results_are_refused(tmp_path: Path, baseline) -> None:
    run_dir = _write_dict(tmp_path / "old", _version_1(baseline))
    with pytest.raises(ResultsError, match=r"schema_version 1 is not 2; rerun it"):
        report.load_results(run_dir)
    with pytest.raises(ResultsError, match="schema_version 1"):
        report.write_report(run_dir)
    with pytest.raises(ResultsError, match="schema_version 1"):
        report.write_compare([_write(tmp_path / "new", baseline), run_dir], tmp_path / "cmp")
    assert [p.name for p in run_dir.iterdir()] == ["results.json"]
    assert not (tmp_path / "cmp").exists()


def test_malformed_results_name_the_field(tmp_path: Path, baseline) -> None:
    data = baseline.model_dump(mode="json")
    data["cost"]["flops"]["train"]["total"] += 1
    with pytest.raises(ResultsError, match=r"cost\.flops\.train.*not the sum of its parts"):
        report.load_results(_write_dict(tmp_path, data))


def test_write_report_on_missing_run_fails_without_writing(tmp_path: Path) -> None:
    with pytest.raises(MissingResultsError):
        report.write_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_compare_needs_a_run() -> None:
    with pytest.raises(ResultsError, match="at least one run"):
        report.write_compare([], "unused")


def test_import_leaves_torch_and_the_runner_alone() -> None:
    heavy = "('torch', 'matplotlib', 'edgecl.runner')"
    code = f"import sys, edgecl.report; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    assert second["train_gflops"] == pytest.approx(600.0)  # selection and prefix included
    assert second["selection_gflops"] == pytest.approx(100.0)
    assert second["prefix_gflops"] == pytest.approx(50.0)
    assert second["train_mflops_per_sample"] == pytest.approx(6 * 10**11 / 3000 / 1e6)
    assert second["train_footprint_mib"] == pytest.approx(25.0)
    assert second["energy_host_j"] == pytest.approx(125.0)

    for key in ("flops_ratio", "memory_ratio", "time_ratio", "energy_ratio"):
        assert first[key] == pytest.approx(1.0)
    assert first["acc_delta"] == pytest.approx(0.0)
    assert second["flops_ratio"] == pytest.approx(0.3)  # 600 GFLOPs against 2000
    assert second["memory_ratio"] == pytest.approx(0.25)
    assert second["time_ratio"] == pytest.approx(0.4)
    assert second["energy_ratio"] == pytest.approx(0.25)
    assert second["acc_delta"] == pytest.approx(55.0 - 160 / 3)


def test_compare_table_handles_missing_values(baseline, efficient) -> None:
    baseline.cost.energy.estimates = {}
    baseline.cost.time_s.train_total = math.nan
    _, second = report.compare_table([baseline, efficient])
    assert second["energy_ratio"] is None and second["time_ratio"] is None
    assert second["energy_host_j"] == pytest.approx(125.0)
    assert report.compare_table([]) == []


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def test_compare_markdown_formats_one_row_per_run(baseline, efficient) -> None:
    markdown = report.compare_markdown([baseline, efficient])
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 4 and re.fullmatch(r"\|(---\|){18}", table_lines[1])
    header, first, second = (_cells(table_lines[i]) for i in (0, 2, 3))
    assert len(header) == len(first) == len(second) == 18
    cells = dict(zip(header, second, strict=True))
    assert cells["Run"] == "sparse-er"
    assert cells["Class-IL final acc (%)"].startswith("55.00 ± ")  # 95 % half-width
    assert cells["Train GFLOPs"] == "600"
    assert cells["Selection GFLOPs"] == "100"
    assert cells["Prefix GFLOPs"] == "50.0"
    assert cells["Training footprint (MiB, largest step)"] == "25.0"
    assert cells["FLOPs ×"] == "0.30×"
    assert cells["Memory ×"] == "0.25×"
    assert cells["Task-IL final acc (%)"] == "—"
    assert cells["Class-IL acc Δ (pts)"] == "+1.67"
    assert dict(zip(header, first, strict=True))["Train GFLOPs"] == "2,000"
    assert "relative to the first run (er)" in markdown
    assert "selection (query passes) + frozen prefix + other" in markdown
    assert "not measurements" in markdown


def test_compare_shows_na_for_metrics_the_protocol_does_not_define(baseline, seen) -> None:
    markdown = report.compare_markdown([baseline, seen])
    row = next(line for line in markdown.splitlines() if line.startswith("| finetune"))
    cells = _cells(row)
    assert cells[4] == cells[5] == "n/a" and cells[6] == "—"  # both forgettings; task-IL
    assert not re.search(r"\bnan\b", row, re.IGNORECASE)


# ------------------------------------------------------------------------------- per-run


def test_run_markdown_has_matrices_and_cost_breakdown(baseline) -> None:
    markdown = report.run_markdown(baseline)
    for heading in ("## Summary", "## Accuracy", "## Cost", "## Scenario", "## Configuration"):
        assert heading in markdown
    assert "**Class-IL accuracy matrix**" in markdown and "**Task-IL accuracy matrix**" in markdown
    assert "| 2 | 40.00 | 50.00 | 70.00 | 53.33 |" in markdown
    assert "| 0 | 90.00 |  |  | 90.00 |" in markdown
    assert "| Train total | 2,000 | 100.0% |" in markdown
    assert "| Optimizer state | 10.0 |" in markdown
    assert "| Training footprint (largest step) | 100 |" in markdown
    assert "| Training total | 50.0 | 90.9% |" in markdown
    assert "| Frozen prefix | 0.25 | 0.5% |" in markdown
    assert "Energy estimates (not measurements)" in markdown
    assert "jetson_nano: Jetson Nano" in markdown
    assert "Measured energy: none" in markdown
    assert "| 1 | 2 | 1,000 | 200 |" in markdown  # scenario: task, classes, train, test
    assert "## Method-specific results" not in markdown


def test_run_markdown_shows_the_training_flops_parts_and_per_sample_basis(efficient) -> None:
    markdown = report.run_markdown(efficient)
    assert "| Train: selection (query passes) | 100 |" in markdown
    assert "| Train: frozen prefix | 50.0 |" in markdown
    assert "| Train total | 600 |" in markdown
    assert "| Train per stream sample (MFLOPs) | 200 |" in markdown  # 600 GFLOPs / 3000
    assert "| Stream samples (each counted once) | 3,000 |" in markdown
    assert "| Samples processed (incl. replayed) | 9,000 |" in markdown
    assert "the 3,000 training images of the stream, each counted once" in markdown
    assert "| of which frozen prefix | 50.0 |" in markdown
    assert "Task-IL accuracy was not recorded" in markdown
    assert "## Method-specific results" in markdown and '"query_cache_hits": 42' in markdown


def test_run_markdown_under_the_seen_classes_protocol(seen) -> None:
    markdown = report.run_markdown(seen)
    assert "Class-IL accuracy on all seen classes" in markdown
    assert "| Class-IL forgetting / BWT (pts) | n/a |" in markdown
    assert "after every 4 tasks and after the last (2 points)" in markdown
    assert "| 5 | 10 | 40 | 52.50 |" in markdown


def test_nan_figures_show_as_missing(baseline) -> None:
    baseline.cost.memory.mean_saved_for_backward_bytes = math.nan
    markdown = report.run_markdown(baseline)
    assert "| Activations saved for backward (mean) | — |" in markdown
    assert not re.search(r"\bnan\b", markdown, re.IGNORECASE)


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


def test_run_html_is_self_contained_with_plots(baseline, seen) -> None:
    page = report.run_html(baseline)
    images = _assert_self_contained(page)
    assert len(images) == 3  # class-IL heatmap, task-IL heatmap, average-accuracy curves
    assert "Energy estimates (not measurements)" in page
    assert "https://example.org/x" in page  # config text is shown, never linked
    assert len(_assert_self_contained(report.run_html(seen))) == 1  # the seen-classes curve


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
