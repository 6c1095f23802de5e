"""Linear CKA, the freeze-point rule and a real 2-task layer analysis (+ the CLI)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from edgecl.analysis import (
    LayerAnalysis,
    center_gram,
    gram_linear,
    linear_cka,
    propose_freeze_point,
    write_analysis,
)
from edgecl.config import RunConfig


def test_linear_cka_hand_computed() -> None:
    # 1-D features: CKA = squared Pearson correlation. x_c = [-1, 0, 1], y_c = [-1, 1, 0]
    # → (x_c·y_c)² / (|x_c|² |y_c|²) = 1 / 4
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, -2.0 * x + 5.0) == pytest.approx(1.0)  # scale and shift


def test_linear_cka_invariances_and_centring() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    k = center_gram(gram_linear(x))
    assert k.sum(dim=0).abs().max() < 1e-9
    z = torch.randn(20, 6, generator=g, dtype=torch.float64)
    assert 0.0 <= linear_cka(x, z) < 0.9
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:5])


def test_propose_freeze_point() -> None:
    ms = [0.99, 0.95, 0.92, 0.80, 0.95]
    lp = [0.98, 0.93, 0.85, 0.90, 0.99]
    assert propose_freeze_point(ms, lp, 0.9) == 2  # layer 2 fails on plasticity
    assert propose_freeze_point(ms, lp, 0.9, contiguous=False) == 5  # deepest passing: 4
    assert propose_freeze_point(ms, lp, 0.995) == 0
    assert propose_freeze_point(ms, lp, 0.5) == 5


def test_table_and_files(tmp_path) -> None:
    res = LayerAnalysis(["block0", "block1"], [0.97, 0.5], [0.95, 0.4], 0.9, 1)
    table = res.table()
    assert "| block0 | 0.9700 | 0.9500 | yes |" in table and "freeze_until=1" in table
    json_path, png_path = write_analysis(res, tmp_path)
    assert json.loads(json_path.read_text())["proposed_freeze_until"] == 1
    assert png_path.stat().st_size > 1000


def tiny_config(root) -> RunConfig:
    return RunConfig(
        seed=3,
        data={"dataset": "cifar100", "root": str(root), "n_tasks": 2,
              "class_order": [0, 1, 2, 3], "train_per_class": 8, "test_per_class": 6},
        backbone={"name": "vit_tiny_patch16_224", "weights": "random", "img_size": 32},
        train={"batch_size": 8, "augment": False},
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
    )


def test_analysis_on_a_real_two_task_stream_via_cli(cifar100_root, tmp_path) -> None:
    from edgecl.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(tiny_config(cifar100_root).model_dump(mode="json")))
    result = CliRunner().invoke(app, [
        "analyze-layers", "-c", str(cfg), "--out", str(tmp_path / "out"), "--steps", "2",
        "--samples", "12", "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    assert "memory stability" in result.output and "Proposed freeze point" in result.output
    data = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert data["layers"] == [f"block{i}" for i in range(12)]
    assert data["details"]["steps"] == [2, 2] and data["details"]["held_out_samples"] == [12, 12]
    ms, lp = data["memory_stability"], data["learning_plasticity"]
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in ms + lp)
    assert data["threshold"] == 0.5
    assert data["proposed_freeze_until"] == propose_freeze_point(ms, lp, 0.5)
    assert (tmp_path / "out" / "analysis.png").is_file()
