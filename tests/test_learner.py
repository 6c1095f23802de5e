"""The in-process learner: durable ingestion, background training, snapshots, restarts."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_vit

from edgecl.errors import ConfigError, InputError, NonFiniteLossError
from edgecl.learner import Learner
from edgecl.learner.config import LearnerConfig
from edgecl.learner.images import encode_png
from edgecl.learner.memory import RamTier, Sample
from edgecl.learner.worker import Trainer


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("vit") / "tiny.pth")


def config(weights: Path, **over) -> dict:
    cfg = {
        "backbone": {"name": "vit_tiny_patch16_224", "weights": str(weights), "img_size": 32},
        "method": {"name": "latent_replay", "split_layer": 2, "rm_sz": 40, "lr_init": 0.05,
                   "lr_inc": 0.01},
        "max_classes": 6, "batch_size": 4,
        "boundary": {"policy": "every_n", "every_n": 8, "max_wait_s": 0.2},
        "checkpoint_every_s": 3600,
    }
    return {**cfg, **over}


def images(n: int, seed: int, size: int = 32) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def settle(learner: Learner, timeout: float = 60.0) -> dict:
    """Wait until every stored sample has been trained on."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = learner.status()
        if status["queue"] == 0 and not status["training"] and status["samples_stored"]:
            return status
        time.sleep(0.05)
    raise AssertionError(f"learner did not settle: {learner.status()}")


def test_samples_are_stored_trained_on_and_predicted(one_thread, tiny_weights, tmp_path):
    with Learner(tmp_path, config(tiny_weights)) as learner:
        ids = learner.add(images(8, 0), ["cat"] * 4 + ["dog"] * 4)
        assert ids == list(range(1, 9))
        # a retried request with the same keys stores nothing twice
        keyed = learner.add(images(2, 1), ["cat", "dog"], keys=["a", "b"])
        assert learner.add(images(2, 1), ["cat", "dog"], keys=["a", "b"]) == keyed
        status = settle(learner)
        assert status["samples_stored"] == 10 and status["classes"] == ["cat", "dog"]
        assert status["samples_trained"] == 10 and status["train_steps"] >= 3
        out = learner.predict(images(3, 2))
        assert out["model_version"] == status["model_version"] > 0
        for p in out["predictions"]:
            assert p["label"] in {"cat", "dog"} and 0 <= p["score"] <= 1
            assert [name for name, _ in p["top"]] and abs(sum(s for _, s in p["top"]) - 1) < 1e-5


@pytest.mark.parametrize(("images_", "labels", "match"), [
    ([], [], "no image"),
    ([b"not an image"], ["cat"], "image 0: not a readable PNG or JPEG"),
    ([b""], ["cat"], "image 0: is empty"),
    (None, ["cat", "dog"], "1 images but 2 labels"),
    (None, [""], "label 0: is empty"),
    (None, ["x" * 257], "at most 256"),
    (None, [7], "label 0: must be text"),
    (None, ["a\nb"], "control characters"),
])
def test_bad_input_is_refused_and_stores_nothing(one_thread, tiny_weights, tmp_path, images_,
                                                 labels, match):
    with Learner(tmp_path, config(tiny_weights), start=False) as learner:
        with pytest.raises(InputError, match=match):
            learner.add(images(1, 0) if images_ is None else images_, labels)
        assert learner.store.count() == 0


def test_unsupported_format_and_class_capacity(one_thread, tiny_weights, tmp_path):
    from PIL import Image

    gif = tmp_path / "x.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with Learner(tmp_path / "s", config(tiny_weights, max_classes=2), start=False) as learner:
        with pytest.raises(InputError, match="format GIF is not supported"):
            learner.add([gif.read_bytes()], ["cat"])
        learner.add(images(2, 0), ["a", "b"])
        with pytest.raises(InputError, match="class capacity reached"):
            learner.add(images(1, 0), ["c"])
        assert learner.store.count() == 2


def test_restart_resumes_and_trains_what_came_after_the_checkpoint(one_thread, tiny_weights,
                                                                   tmp_path, caplog):
    first = Learner(tmp_path, config(tiny_weights))
    first.add(images(8, 0), ["cat"] * 4 + ["dog"] * 4)
    settle(first)
    saved = first.checkpoint()
    before = first.predict(images(2, 5))
    first.add(images(8, 1), ["cow"] * 8)
    settle(first)
    first.close(checkpoint=False)  # as if killed: the cow task is not in the checkpoint
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"torn")  # an interrupted write

    caplog.set_level(logging.INFO, logger="edgecl.learner")
    again = Learner(tmp_path, None, start=False)
    assert "discarding torn write .checkpoint.pt.abc.tmp" in caplog.text
    assert not (tmp_path / ".checkpoint.pt.abc.tmp").exists()
    assert again.trainer.progress.model_version == saved["version"]
    assert again.predict(images(2, 5)) == before  # the checkpointed model, exactly
    assert again.status()["queue"] == 8  # the samples after the checkpoint, once each
    again.start()
    status = settle(again)
    assert status["samples_stored"] == 16 and status["samples_trained"] == 16
    assert status["classes"] == ["cat", "dog", "cow"]
    again.close()


def test_unreadable_checkpoint_falls_back_to_the_previous(one_thread, tiny_weights, tmp_path,
                                                          caplog):
    with Learner(tmp_path, config(tiny_weights)) as learner:
        learner.add(images(8, 0), ["cat"] * 8)
        settle(learner)
        older = learner.checkpoint()
        learner.add(images(8, 1), ["dog"] * 8)
        settle(learner)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    caplog.set_level(logging.WARNING, logger="edgecl.learner")
    with Learner(tmp_path, None, start=False) as again:
        assert "discarding unreadable checkpoint checkpoint.pt" in caplog.text
        assert again.trainer.progress.model_version == older["version"]


def test_a_changed_method_is_refused_on_restart(one_thread, tiny_weights, tmp_path):
    Learner(tmp_path, config(tiny_weights), start=False).close()
    other = config(tiny_weights, method={"name": "latent_replay", "split_layer": 1})
    with pytest.raises(ConfigError, match="trained with other method"):
        Learner(tmp_path, other, start=False)


def test_a_non_finite_loss_rolls_back_the_update(one_thread, tiny_weights, tmp_path, caplog):
    with Learner(tmp_path, config(tiny_weights), start=False) as learner:
        method = learner.trainer_engine.method
        original, calls = method.observe, {"n": 0}

        def poisoned(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise NonFiniteLossError("latent_replay: loss became nan in task 1")
            return original(batch)

        method.observe = poisoned
        caplog.set_level(logging.WARNING, logger="edgecl.learner")
        learner.start()
        learner.add(images(16, 0), ["cat"] * 8 + ["dog"] * 8)
        status = settle(learner)
        assert status["rolled_back_updates"] == 1 and "rolled back" in caplog.text
        assert status["train_steps"] == 3  # 4 steps, one rolled back; training went on
        assert all(torch.isfinite(p).all() for p in method.modules.parameters())


def test_predictions_do_not_wait_for_training(one_thread, tiny_weights, tmp_path):
    with Learner(tmp_path, config(tiny_weights), start=False) as learner:
        method = learner.trainer_engine.method
        original, started = method.observe, threading.Event()

        def slow(batch):
            started.set()
            time.sleep(1.5)
            return original(batch)

        method.observe = slow
        learner.start()
        learner.add(images(4, 0), ["cat"] * 4)
        assert started.wait(30)
        t0 = time.perf_counter()
        learner.predict(images(1, 3))
        assert time.perf_counter() - t0 < 0.5  # while a training step is in progress


def test_ram_tier_keeps_classes_balanced() -> None:
    ram = RamTier(4, "class_balanced", seed=0)
    for i in range(6):  # six samples of class 0, then two of class 1
        ram.put(Sample(i, 0, np.zeros((2, 2, 3), np.uint8)))
    ram.put(Sample(10, 1, np.zeros((2, 2, 3), np.uint8)))
    ram.put(Sample(11, 1, np.zeros((2, 2, 3), np.uint8)))
    assert ram.class_counts() == {0: 2, 1: 2} and len(ram) == 4
    assert ram.nbytes() == 4 * 12 and len(ram.draw(10)) == 4
    reservoir = RamTier(3, "reservoir", seed=0)
    for i in range(50):
        reservoir.put(Sample(i, i % 2, np.zeros((1, 1, 3), np.uint8)))
    assert len(reservoir) == 3 and reservoir.seen == 50


class FakeMigrator:
    def __init__(self, classes: list[int]) -> None:
        self.incoming: queue.Queue = queue.Queue()
        for i, c in enumerate(classes):
            self.incoming.put(Sample(i + 1, c, np.zeros((1, 1, 3), np.uint8)))


@pytest.mark.parametrize(("policy", "expected"), [
    ("every_n", [[0, 0, 0, 1, 1, 1], [1, 2, 2]]),
    ("new_classes", [[0, 0, 0], [1, 1, 1, 1], [2, 2]]),
])
def test_task_boundaries_follow_the_policy(policy, expected) -> None:
    cfg = LearnerConfig(boundary={"policy": policy, "every_n": 6, "min_samples": 2,
                                  "max_wait_s": 0.1})
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.pending, trainer.stop_event = cfg, None, threading.Event()
    trainer.migrator = FakeMigrator([0, 0, 0, 1, 1, 1, 1, 2, 2])
    tasks = [[s.class_id for s in trainer.next_task_samples()] for _ in expected]
    assert tasks == expected


def test_the_budget_sizes_the_ram_tier_and_refuses_what_cannot_fit(one_thread, tiny_weights,
                                                                   tmp_path):
    from edgecl.errors import BudgetError
    from edgecl.learner.learner import STEP_RESERVE_MIB, rss_mib

    no_plan = {"memory_mib": 64, "plan": False}
    with pytest.raises(BudgetError, match="below what the loaded learner needs"):
        Learner(tmp_path / "a", config(tiny_weights, budget=no_plan), start=False)
    # what a loaded learner holds, measured with a learner loaded (loading allocates, and
    # the allocator keeps most of it for the next one); then room for a few thousand decoded
    # 32 px samples (3 KiB each) above it: the RSS noise of a few MiB stays inside the room
    with Learner(tmp_path / "warm", config(tiny_weights, budget={}), start=False):
        loaded = rss_mib()
    budget = int(loaded + STEP_RESERVE_MIB + 16)
    cfg = config(tiny_weights, budget={"memory_mib": budget, "plan": False},
                 memory={"ram_samples": 100_000})
    with Learner(tmp_path / "b", cfg, start=False) as learner:
        assert 0 < learner.ram.capacity < 100_000
    ram = RamTier(4, "class_balanced", seed=0)
    for i in range(4):
        ram.put(Sample(i, i % 2, np.zeros((1, 1, 3), np.uint8)))
    ram.shrink(2)
    assert ram.capacity == 2 and ram.class_counts() == {0: 1, 1: 1}


@pytest.mark.slow
def test_the_planner_checks_the_config_against_the_budget_once(one_thread, tiny_weights,
                                                               tmp_path, caplog, cifar100_root):
    """The planner calibrates the learner's method (in a fresh process, on CIFAR-100) and
    predicts this process's peak: a budget under it is refused with what the smallest
    setting needs; one over it is accepted, and a restart reuses the cached choice."""
    import json

    from edgecl.errors import BudgetError
    from edgecl.learner.budget import PLAN_FILE
    from edgecl.learner.learner import rss_mib

    base = int(rss_mib())
    with pytest.raises(BudgetError, match=r"cannot hold this learner: .*the smallest \(batch 1"):
        Learner(tmp_path / "a", config(tiny_weights, budget={"memory_mib": base + 65},
                                       data_root=str(cifar100_root)), start=False)
    cfg = config(tiny_weights, budget={"memory_mib": base + 400}, data_root=str(cifar100_root))
    with Learner(tmp_path / "b", cfg, start=False) as learner:
        assert learner.cfg.batch_size == 4
    chosen = json.loads((tmp_path / "b" / PLAN_FILE).read_text())
    assert chosen["batch_size"] == 4 and chosen["params"] == {}
    assert base < chosen["predicted_peak_mib"] < base + 400 - 64
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edgecl.learner"), \
            Learner(tmp_path / "b", cfg, start=False):
        pass
    assert not [r for r in caplog.records if "planning" in r.getMessage()]


def test_a_planned_choice_rebuilds_the_method_with_its_knobs(tiny_weights):
    from edgecl.learner.budget import Choice
    from edgecl.learner.config import load_learner_config

    cfg = load_learner_config(config(tiny_weights))
    chosen = Choice(2, {"rm_sz": 10, "storage": "fp16"}, 300.0, "").apply(cfg)
    assert chosen.batch_size == 2 and chosen.method.params.rm_sz == 10
    assert chosen.method.params.storage == "fp16" and chosen.method.params.split_layer == 2
    assert cfg.method.params.rm_sz == 40  # the configured one is left alone
    assert Choice(4, {}, 300.0, "").apply(cfg) is cfg


def test_background_threads_run_at_a_lower_priority_than_the_caller():
    import os

    from edgecl.learner.priority import lower_priority

    seen: dict[str, int] = {}

    def background() -> None:
        lower_priority(5)
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, 0)
    worker = threading.Thread(target=background)
    worker.start()
    worker.join()
    assert seen["thread"] == min(19, before + 5)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the process and caller keep theirs


def test_the_training_thread_waits_before_each_layer_while_a_prediction_runs():
    from torch import nn

    from edgecl.learner.yielding import PredictionGate, yield_to_predictions

    gate = PredictionGate(max_wait_s=5.0)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    handles = yield_to_predictions(model, gate)
    assert len(handles) == 6  # forward and backward hooks of the leaves, not the container
    model(torch.zeros(1, 2))  # no prediction in flight: no wait
    assert gate.waits == 0
    finished = threading.Event()
    with gate.predicting():
        worker = threading.Thread(target=lambda: (model(torch.zeros(1, 2)), finished.set()))
        worker.start()
        time.sleep(0.3)
        assert not finished.is_set() and gate.waits == 1  # held before its first layer
    worker.join(timeout=5)
    assert finished.is_set()
    for h in handles:
        h.remove()


def test_the_training_thread_waits_before_each_layers_backward_while_a_prediction_runs():
    from torch import nn

    from edgecl.learner.yielding import PredictionGate, yield_to_predictions

    gate = PredictionGate(max_wait_s=5.0)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    yield_to_predictions(model, gate)
    loss = model(torch.ones(1, 2)).sum()  # forward before the prediction: no wait
    finished = threading.Event()
    with gate.predicting():
        worker = threading.Thread(target=lambda: (loss.backward(), finished.set()))
        worker.start()
        time.sleep(0.3)
        assert not finished.is_set() and gate.waits == 1  # held before the last layer's backward
        assert model[2].weight.grad is None
    worker.join(timeout=5)
    assert finished.is_set() and gate.waits == 1
    assert model[0].weight.grad is not None


def test_a_recomputing_training_copy_trains_and_predicts(one_thread, tiny_weights, tmp_path):
    with Learner(tmp_path, config(tiny_weights, recompute="all")) as learner:
        blocks = learner.trainer_engine.backbone.blocks
        assert {b.recompute for b in blocks} == {"all"}
        learner.add(images(8, 0), ["cat"] * 4 + ["dog"] * 4)
        status = settle(learner)
        assert status["samples_trained"] == 8 and status["train_steps"] >= 2
        assert len(learner.predict(images(2, 2))["predictions"]) == 2
