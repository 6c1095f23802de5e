"""``data.dataset: core50`` end to end: config validation, the seen-classes protocol, class-IL
masking over every seen class, resume, and compare/report on the synthetic CORe50 tree
(``make_core50_tree`` in conftest.py) with a random-weight ViT-Ti at 16 px."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgecl.cli import app
from edgecl.config import ConfigError, Core50Scenario, RunConfig, load_config
from edgecl.data.base import ArrayDataset
from edgecl.data.core50 import SCENARIO_DIRS, incremental_scenario
from edgecl.data.transforms import eval_transform
from edgecl.metrics.cost import CostMeter
from edgecl.runner import evaluate, evaluate_seen_classes, run, seen_class_count

REPO = Path(__file__).resolve().parents[1]

# 6 batches of the synthetic stream: 0 brings o2, o1 (3 images); 1 brings o3; 2-4 hold only
# o1/o2 (no new class: no test images of their own); 5 brings o4. 4 test images per object.
TINY: dict[str, Any] = {
    "name": "core50_tiny",
    "seed": 3,
    "data": {"dataset": "core50", "core50_max_batches": 6},
    "backbone": {"name": "vit_tiny_patch16_224", "weights": "random", "img_size": 16},
    "train": {"epochs": 1, "batch_size": 2, "eval_batch_size": 8, "augment": False},
    "optim": {"name": "sgd", "lr": 0.01},
    "eval": {"protocol": "seen_classes", "every_n_tasks": 4},
    "methods": [{"name": "latent_replay", "rm_sz": 4, "mb_size": 4}, {"name": "finetune"}],
}


def tiny_config(root: Path, **changes: Any) -> RunConfig:
    tree = json.loads(json.dumps(TINY))
    tree["data"]["root"] = str(root)
    for key, value in changes.items():
        tree[key] = value
    return RunConfig(**tree)


def no_nan(obj: Any) -> None:
    json.dumps(obj, allow_nan=False)  # raises on NaN/inf anywhere


# ---- config ---------------------------------------------------------------------------------
def test_scenario_names_match_the_loader() -> None:
    assert set(typing.get_args(Core50Scenario)) == set(SCENARIO_DIRS)


def test_core50_fields_need_the_core50_dataset() -> None:
    with pytest.raises(ConfigError, match=r"data\.core50_run is not used with data\.dataset "
                                          r"cifar100"):
        load_config(overrides=["data.core50_run=1"])
    with pytest.raises(ConfigError, match="data.core50_test_stride"):
        load_config(overrides=["data.core50_test_stride=20"])


def test_class_incremental_fields_are_rejected_with_core50() -> None:
    base = ["data={dataset: core50}"]
    for field, value in (("n_tasks", 5), ("class_order", "seeded"), ("train_per_class", 4),
                         ("test_per_class", 2)):
        with pytest.raises(ConfigError, match=rf"data\.{field} is not used with data\.dataset "
                                              "core50"):
            load_config(overrides=[*base, f"data.{field}={value}"])
    # the default config's per-class counts: both named at once
    with pytest.raises(ConfigError, match="data.train_per_class, data.test_per_class are not"):
        load_config(overrides=["data.dataset=core50"])
    with pytest.raises(ConfigError, match="data.core50_scenario"):
        load_config(overrides=[*base, "data.core50_scenario=nicv3"])
    with pytest.raises(ConfigError, match="data.core50_max_batches"):
        load_config(overrides=[*base, "data.core50_max_batches=0"])
    cfg = load_config(overrides=[*base, "data.core50_max_batches=10", "data.core50_run=2"])
    assert (cfg.data.core50_scenario, cfg.data.core50_run, cfg.data.core50_test_stride,
            cfg.data.core50_max_batches) == ("nicv2_391", 2, 1, 10)


def test_eval_options() -> None:
    assert load_config().eval.protocol == "per_task"
    with pytest.raises(ConfigError, match="eval.every_n_tasks applies to protocol seen_classes"):
        load_config(overrides=["eval.every_n_tasks=10"])
    with pytest.raises(ConfigError, match="eval.protocol"):
        load_config(overrides=["eval.protocol=matrix"])
    ev = load_config(overrides=["eval={protocol: seen_classes, every_n_tasks: 10}"]).eval
    assert [t for t in range(25) if ev.due(t, 25)] == [9, 19, 24]


def test_vit_lr_config_is_runnable_as_written_and_reduced() -> None:
    cfg = load_config(REPO / "configs" / "core50_vit_lr.yaml")
    assert cfg.data.dataset == "core50" and cfg.data.core50_test_stride == 20
    assert cfg.eval.protocol == "seen_classes" and cfg.eval.every_n_tasks == 10
    reduced = load_config(REPO / "configs" / "core50_vit_lr.yaml", [
        "data.core50_max_batches=10", "backbone.name=vit_tiny_patch16_224"])
    assert reduced.data.core50_max_batches == 10


def test_saved_config_round_trips(tmp_path: Path) -> None:
    """config.yaml (every field, defaults included) must load again: resume reads it."""
    cfg = tiny_config(tmp_path)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(saved) == cfg
    default = load_config()
    saved.write_text(yaml.safe_dump(default.model_dump(mode="json")))
    assert load_config(saved) == default


# ---- evaluation on a hand-built stream ----------------------------------------------------------
class ValueClassifier:
    """Logits from the image value (10·c + 5 for class c): class c scores 1, except that class 1
    images score class 2 higher (2) and every image scores the unseen class 3 highest (5)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        c = ((x.mean(dim=(1, 2, 3)) * 255 - 5) / 10).round().long()
        logits = torch.zeros(len(x), 4)
        logits[torch.arange(len(x)), c] = 1.0
        logits[c == 1, 2] = 2.0
        logits[:, 3] = 5.0
        return logits


def hand_stream() -> Any:
    def dataset(labels: list[int]) -> ArrayDataset:
        images = np.stack([np.full((4, 4, 3), 10 * c + 5, np.uint8) for c in labels])
        return ArrayDataset(images, np.asarray(labels), ("a", "b", "c", "d"), "hand")

    # batches: {0, 1} | {2} | {0, 1} (old classes only) | {3}; 2 test images per class
    train = dataset([0, 1, 2, 1, 0, 3])
    test = dataset([0, 0, 1, 1, 2, 2, 3, 3])
    return incremental_scenario(train, test, [2, 1, 2, 1], "hand")


def test_class_il_masks_over_all_seen_classes_not_the_last_tasks() -> None:
    sc = hand_stream()
    assert [len(t.test_indices) for t in sc.tasks] == [4, 2, 0, 2]
    # task 2 holds only classes 0, 1: still 3 classes seen (the old max(task 2) + 1 gave 2)
    assert [seen_class_count(sc, t) for t in range(4)] == [2, 3, 3, 4]
    args = (eval_transform(4, (0, 0, 0), (1, 1, 1)), 3, CostMeter(torch.device("cpu"),
                                                                   count_flops=False),
            torch.device("cpu"))
    method = ValueClassifier()
    # after task 0 (classes 0, 1): class-1 images cannot go to class 2 yet: all right
    assert evaluate(method, sc, 0, *args) == ([100.0], [100.0])
    # after task 1: class 2 is seen, class-1 images go to it (class-IL 50 on task 0); class 3
    # (scored highest) is masked out; task-IL masks to each task's classes
    assert evaluate(method, sc, 1, *args) == ([50.0, 100.0], [100.0, 100.0])
    # after task 2 (old classes only, no test images of its own): a null entry, not NaN
    assert evaluate(method, sc, 2, *args) == ([50.0, 100.0, None], [100.0, 100.0, None])
    # seen classes 0..2, all 6 of their test images: classes 0 and 2 right, class 1 wrong
    n_seen, n_test, acc = evaluate_seen_classes(method, sc, 2, *args)
    assert (n_seen, n_test) == (3, 6) and acc == pytest.approx(100 * 4 / 6)
    # after task 3 class 3 is seen and wins everywhere: only its own 2 images are right
    assert evaluate_seen_classes(method, sc, 3, *args) == (4, 8, 25.0)


# ---- full runs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seen_run(core50_module_root: Path, tmp_path_factory: pytest.TempPathFactory,
             one_thread) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("core50-run")
    return [r.model_dump(mode="json") for r in run(tiny_config(core50_module_root), out)], out


def test_seen_classes_results(seen_run) -> None:
    results, out = seen_run
    assert [r["run_name"] for r in results] == ["latent_replay", "finetune"]
    for res in results:
        assert json.loads((out / res["run_name"] / "results.json").read_text()) == res
        no_nan(res)
        assert res["scenario"]["dataset"] == "core50" and res["scenario"]["n_tasks"] == 6
        assert res["scenario"]["classes_per_task"] == [2, 1, 1, 1, 1, 1]
        assert res["scenario"]["test_samples_per_task"] == [8, 4, 0, 0, 0, 4]
        assert {k: res["config"]["eval"][k] for k in ("protocol", "every_n_tasks")} == {
            "protocol": "seen_classes", "every_n_tasks": 4}
        acc = res["accuracy"]
        assert acc["protocol"] == "seen_classes" and acc["task_il"] is None
        curve = acc["seen_classes_curve"]
        # after every 4th task (task 3) and after the last (task 5)
        assert [(p["task"], p["seen_classes"], p["test_samples"]) for p in curve] == [
            (3, 3, 12), (5, 4, 16)]
        assert all(0.0 <= p["class_il"] <= 100.0 for p in curve)
        cil = acc["class_il"]
        assert cil["matrix"] is None and cil["forgetting"] is None and cil["bwt"] is None
        assert cil["final_average"] == curve[-1]["class_il"]
        assert cil["average_incremental"] == pytest.approx(
            (curve[0]["class_il"] + curve[1]["class_il"]) / 2)
        evaluated = [t["task"] for t in res["per_task"] if t["eval_time_s"] is not None]
        assert evaluated == [3, 5] and len(res["per_task"]) == 6
        assert res["per_task"][5]["class_il_seen_classes"] == curve[-1]["class_il"]
        assert res["cost"]["flops"]["eval"] > 0


def test_per_task_protocol_on_core50_has_null_for_batches_without_test_images(
    core50_module_root: Path, tmp_path: Path, one_thread
) -> None:
    cfg = tiny_config(core50_module_root, eval={"protocol": "per_task"},
                      methods=[{"name": "finetune"}])
    res = run(cfg, tmp_path / "out")[0].model_dump(mode="json")
    no_nan(res)
    assert res["accuracy"]["protocol"] == "per_task"
    assert res["accuracy"]["seen_classes_curve"] is None
    for kind in ("class_il", "task_il"):
        acc = res["accuracy"][kind]
        matrix = acc["matrix"]
        assert [len(r) for r in matrix] == [1, 2, 3, 4, 5, 6]
        assert all(row[i] is None for row in matrix for i in (2, 3, 4) if i < len(row))
        assert all(0.0 <= a <= 100.0 for row in matrix for a in row if a is not None)
        last = [a for a in matrix[-1] if a is not None]
        assert acc["final_average"] == pytest.approx(sum(last) / 3)
        # forgetting over the tested tasks 0 and 1 only
        drops = [max(matrix[t][i] for t in range(i, 5)) - matrix[5][i] for i in (0, 1)]
        assert acc["forgetting"] == pytest.approx(sum(drops) / 2)
    assert [t["task"] for t in res["per_task"] if t["eval_time_s"] is not None] == list(range(6))


def test_seen_classes_run_resumes_to_identical_metrics(
    core50_module_root: Path, seen_run, tmp_path: Path, one_thread
) -> None:
    reference = {r["run_name"]: r for r in seen_run[0]}["latent_replay"]
    tree_methods = [TINY["methods"][0]]
    cfg = tiny_config(core50_module_root, methods=tree_methods,
                      train={**TINY["train"], "checkpoint_every_steps": 1})

    class Killed(Exception):
        pass

    def killing_factory(name: str, total: int):
        steps = {"n": 0}

        def progress(desc: str, advance: int) -> None:
            steps["n"] += advance
            if steps["n"] >= 6:  # inside task 4, after the curve point of task 3
                raise Killed

        return progress

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run(cfg, out, progress_factory=killing_factory)
    state = torch.load(out / "latent_replay" / "checkpoint.pt", weights_only=True)["loop"]
    assert state["position"]["task"] == 4 and len(state["seen_classes_curve"]) == 1
    resumed = run(cfg, out, resume=True)[0].model_dump(mode="json")
    assert resumed["accuracy"] == reference["accuracy"]
    assert resumed["cost"]["flops"]["train"] == reference["cost"]["flops"]["train"]


def test_compare_and_report_show_na_for_undefined_metrics(seen_run, tmp_path: Path) -> None:
    _, out = seen_run
    cli = CliRunner()
    res = cli.invoke(app, ["compare", str(out / "latent_replay"), str(out / "finetune"),
                           "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.stdout.splitlines() if line.startswith("| latent_replay"))
    assert "n/a" in row and "nan" not in row.lower()
    assert (tmp_path / "compare.html").read_text().count("data:image/png;base64,") >= 1
    res = cli.invoke(app, ["report", str(out / "finetune")])
    assert res.exit_code == 0, res.output
    markdown = (out / "finetune" / "report.md").read_text()
    assert "Class-IL accuracy on all seen classes" in markdown
    assert "| Class-IL forgetting / BWT (pts) | n/a |" in markdown
    assert "after every 4 tasks and after the last (2 points)" in markdown
    assert "| 5 | 4 | 16 |" in markdown
    assert "data:image/png;base64," in (out / "finetune" / "report.html").read_text()

