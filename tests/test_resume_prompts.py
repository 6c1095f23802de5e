"""Exact resume of the prompt methods (L2P, DualPrompt, CODA-Prompt) through the runner.

A tiny random-weight ViT (32 px, 4x4 patches of 8 px, 5 blocks) on 3 real CIFAR-100 tasks of
2 classes, 4 steps per task, a checkpoint after every step. The same config runs once without
interruption and once interrupted twice (mid-task 0, and at the first step of task 2, i.e.
resumed from the task-end checkpoint of task 1) and resumed with ``run(..., resume=True)``;
both must end with bit-identical accuracy matrices, FLOPs and final method state (prompts,
keys, head, optimizer, lr schedule, generator). Re-evaluating a task-end checkpoint must
reproduce the accuracies recorded for that task.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import edgecl.runner.checkpoint as checkpoints
from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.config import load_config
from edgecl.runner import TrainingLoop, build_backbone, build_scenario, evaluate, run, setup_method
from edgecl.schema import load_results

TINY_VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=5, num_heads=1)
STEPS_PER_TASK = 4  # 2 classes x 4 images, batch 4, 2 epochs
METHODS = {
    # batch-wise prompt vote at test time too (the paper-protocol setting): eval batches of 4
    # and 2 images, so a re-evaluation must see the very same batches
    "l2p": {"pool_size": 4, "top_k": 2, "prompt_length": 2, "batchwise_eval": True},
    # prompt_layers [2, 3, 4] and g_layers [0, 1] (the defaults) fit the 5 blocks
    "dualprompt": {"pool_size": 3},
    # the protocol's per-step cosine schedule
    "coda_prompt": {"pool_size": 6, "prompt_length": 4,
                    "optim": {"name": "adam", "lr": 0.01, "lr_schedule": "cosine"}},
}


class Interrupted(Exception):
    pass


def stopping_at(step: int | None):
    """A progress factory that raises once the run has completed global step ``step``.

    The runner reports a step's progress before it writes that step's checkpoint, so the
    resumed run starts from the checkpoint of step ``step - 1`` and redoes step ``step``.
    """

    def factory(run_name: str, total: int):
        done = {"n": 0}

        def progress(desc: str, advance: int) -> None:
            done["n"] += advance  # the first call reports the steps already done
            if done["n"] == step:
                raise Interrupted(step)

        return progress

    return factory


def assert_same(a, b, where: str) -> None:
    """Bit-equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def tiny_vit_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "tiny_vit.pth"
    torch.save(VisionTransformer(TINY_VIT).state_dict(), path)
    return path


@pytest.fixture(scope="module", params=sorted(METHODS))
def runs(request, one_thread, cifar100_root, tiny_vit_weights, tmp_path_factory):
    """The uninterrupted and the interrupted-and-resumed run of one method."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    tree = {
        "name": "resume-prompts",
        "seed": 11,
        "data": {"dataset": "cifar100", "root": str(cifar100_root), "n_tasks": 3,
                 "class_order": [3, 1, 4, 5, 9, 2], "train_per_class": 4,
                 "test_per_class": 3},
        "backbone": {"name": "vit_tiny_patch16_224", "weights": str(tiny_vit_weights),
                     "img_size": 32},
        "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 4,
                  "checkpoint_every_steps": 1},
        "optim": {"name": "adam", "lr": 0.01, "grad_clip": 1.0},
        "cost": {"device_profiles": ["jetson_nano"]},
        "methods": [{"name": name, **METHODS[name]}],
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(tree))
    cfg = load_config(tmp / "cfg.yaml")
    reference_dir, resumed_dir = tmp / "reference" / name, tmp / "interrupted" / name

    # the uninterrupted run, keeping a copy of every task-end checkpoint on the way
    task_ends: dict[int, Path] = {}
    save = checkpoints.save

    def keep_task_ends(path: Path, state: dict, frozen_sha256: str) -> int:
        size = save(path, state, frozen_sha256)
        pos = state["loop"]["position"]
        if pos["step"] == 0 and path.parent == reference_dir:
            task_ends[pos["task"]] = tmp / f"task_end{pos['task']}.pt"
            shutil.copyfile(path, task_ends[pos["task"]])
        return size

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoints, "save", keep_task_ends)
        (reference,) = run(cfg, tmp / "reference")
    assert sorted(task_ends) == [1, 2, 3]

    # interrupted at step 3 of task 0 (resumes from its step 2) and at the first step of
    # task 2 (resumes from the task-end checkpoint of task 1), then run to the end
    for stop in (3, 2 * STEPS_PER_TASK + 1):
        with pytest.raises(Interrupted):
            run(cfg, tmp / "interrupted", resume=True, progress_factory=stopping_at(stop))
        pos = checkpoint(resumed_dir / "checkpoint.pt")["loop"]["position"]
        assert pos["task"] * STEPS_PER_TASK + pos["step"] == stop - 1
        assert not (resumed_dir / "results.json").exists()
    (resumed,) = run(cfg, tmp / "interrupted", resume=True)
    return SimpleNamespace(
        name=name, cfg=cfg, reference=reference, resumed=resumed, task_ends=task_ends,
        reference_dir=reference_dir, resumed_dir=resumed_dir, tmp=tmp,
    )


def test_resumed_run_ends_bit_identical(runs):
    ref, res = runs.reference, runs.resumed
    assert res.accuracy == ref.accuracy  # matrices and summaries, class-IL and task-IL
    assert res.cost.flops == ref.cost.flops
    assert ref.cost.flops.train.selection > 0 and ref.cost.flops.eval > 0
    assert res.cost.memory.model_copy(update={"peak_rss_bytes": 0}) == (
        ref.cost.memory.model_copy(update={"peak_rss_bytes": 0}))
    assert [t.train_steps for t in res.per_task] == [STEPS_PER_TASK] * 3
    assert [t.train_steps for t in ref.per_task] == [STEPS_PER_TASK] * 3
    # the final state: prompts/components, keys, head, optimizer, scheduler, generator, RNG
    full = checkpoint(runs.reference_dir / "checkpoint.pt")
    again = checkpoint(runs.resumed_dir / "checkpoint.pt")
    end = {"task": 3, "epoch": 0, "batch": 0, "step": 0}
    assert again["loop"]["position"] == full["loop"]["position"] == end
    assert_same(again["method"], full["method"], "method")
    assert torch.equal(again["torch_rng"], full["torch_rng"])
    if runs.name == "coda_prompt":  # the cosine schedule went on after the mid-task resume
        assert full["method"]["scheduler"]["last_epoch"] == STEPS_PER_TASK


def test_task_end_checkpoint_reevaluates_to_the_recorded_accuracy(runs):
    """Restore a task-end checkpoint in a fresh loop and evaluate: what results.json says."""
    recorded = load_results(runs.reference_dir).accuracy
    scenario, bundle = build_scenario(runs.cfg), build_backbone(runs.cfg)
    for t, path in sorted(runs.task_ends.items()):
        fresh = runs.tmp / f"reeval{t}"
        fresh.mkdir()
        shutil.copyfile(path, fresh / "checkpoint.pt")
        setup = setup_method(
            runs.cfg, runs.cfg.methods[0], scenario, bundle, torch.device("cpu"))
        loop = TrainingLoop(setup, fresh / "checkpoint.pt")
        loop.restore()
        assert loop.position == {"task": t, "epoch": 0, "batch": 0, "step": 0}
        cil, til = evaluate(
            setup.method, scenario, t - 1, setup.eval_tf, setup.train_cfg.eval_batch_size,
            setup.meter, torch.device("cpu"),
        )
        assert til == recorded.task_il.matrix[t - 1], (t, til)
        assert cil == recorded.class_il.matrix[t - 1], (t, cil)


def test_per_task_counters_cover_the_whole_resumed_task(runs):
    def counters(res):
        return [(t.train_steps, t.train_samples, t.train_flops) for t in res.per_task]

    assert counters(runs.resumed) == counters(runs.reference)
