"""Checkpoints hold what training changed, load without unpickling, and name their weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_vit
from torch import nn

from edgecl.config import load_config
from edgecl.errors import CheckpointError
from edgecl.runner import checkpoint, run


def test_only_what_training_changed_is_kept() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net[:2].requires_grad_(False)
    pristine = checkpoint.module_digests(net)
    assert set(checkpoint.changed_state(net, pristine)) == {"2.weight", "2.bias"}  # trainable
    with torch.no_grad():
        net[0].bias[1] += 1.0  # a frozen tensor rewritten (as a merge at task end would)
    net.train()
    net(torch.randn(5, 3))  # BatchNorm's running statistics move
    changed = checkpoint.changed_state(net, pristine)
    assert set(changed) == {"0.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked", "2.weight", "2.bias"}
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    fresh.load_state_dict(net.state_dict())
    merged = checkpoint.with_unchanged(fresh, changed)
    assert all(torch.equal(merged[k], v) for k, v in net.state_dict().items())


def test_weights_digest_names_the_weights() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    assert checkpoint.weights_sha256(a) != checkpoint.weights_sha256(b)
    b.load_state_dict(a.state_dict())
    assert checkpoint.weights_sha256(a) == checkpoint.weights_sha256(b)


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_pickled_object_is_refused_not_run(tmp_path: Path, capsys) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.FORMAT, "frozen_sha256": "x", "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(path, "x", torch.device("cpu"))
    assert "this ran" not in capsys.readouterr().out
    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path / "torn.pt", "x", torch.device("cpu"))
    checkpoint.save(path, {"loop": {"position": {"task": 1}}}, "abc")
    assert checkpoint.load(path, "abc", torch.device("cpu"))["loop"]["position"] == {"task": 1}
    with pytest.raises(CheckpointError, match="other frozen weights"):
        checkpoint.load(path, "def", torch.device("cpu"))


def tiny_data(cifar100_root: Path) -> dict:
    return {"dataset": "cifar100", "root": str(cifar100_root), "n_tasks": 2,
            "class_order": [3, 1, 4, 5], "train_per_class": 2, "test_per_class": 1}


def test_l2p_checkpoint_of_the_default_run_holds_its_trainable_state(
        one_thread, cifar100_root, vit_tiny_path, tmp_path) -> None:
    """The default run's L2P entry, on a tiny stream of the real ViT-Ti: the checkpoint is at
    most 2x the trainable state plus optimizer state (the backbone stays out of it)."""
    default = load_config()
    (l2p,) = [m for m in default.methods if m.name == "l2p"]
    cfg = default.model_copy(update={"methods": [l2p], "data": default.data.model_copy(
        update=tiny_data(cifar100_root))})
    (res,) = run(cfg, tmp_path)
    mem = res.cost.memory
    size = (tmp_path / "l2p" / "checkpoint.pt").stat().st_size
    trainable = mem.trainable_parameter_bytes + mem.optimizer_state_bytes
    assert 0 < trainable < mem.parameter_bytes / 50  # prompts, keys and head only
    assert size <= 2 * trainable, (size, trainable)


def write_weights(path: Path, seed: int) -> Path:
    return save_tiny_vit(path, seed)


def test_resuming_against_other_frozen_weights_is_refused(
        one_thread, cifar100_root, tmp_path) -> None:
    tree = {
        "name": "frozen", "data": tiny_data(cifar100_root),
        "backbone": {"name": "vit_tiny_patch16_224", "img_size": 32,
                     "weights": str(write_weights(tmp_path / "a.pth", 0))},
        "train": {"batch_size": 4, "eval_batch_size": 8},
        "optim": {"name": "adam", "lr": 0.01},
        "cost": {"device_profiles": []},
        "methods": [{"name": "l2p", "pool_size": 4, "top_k": 2, "prompt_length": 2}],
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tree))
    out = tmp_path / "run"
    run(load_config(tmp_path / "cfg.yaml"), out)
    (out / "l2p" / "results.json").unlink()  # the run is unfinished again, its checkpoint kept

    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["backbone"]["weights"] = str(write_weights(tmp_path / "b.pth", 1))
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(CheckpointError, match="other frozen weights"):
        run(load_config(out / "config.yaml"), out, resume=True)
    cli = subprocess.run([sys.executable, "-m", "edgecl.cli", "run", "-q", "--resume", str(out)],
                         capture_output=True, text=True)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert cli.stderr.strip().count("\n") == 0 and "other frozen weights" in cli.stderr

    saved["backbone"]["weights"] = str(tmp_path / "a.pth")
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    (res,) = run(load_config(out / "config.yaml"), out, resume=True)  # its own weights: fine
    assert res.per_task[-1].task == 1
