"""REP over the prompt methods: selector, query cache, AToM/ALD in training only, resume."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import yaml

from edgecl.backbones.vit import VisionTransformer, ViTConfig, interpolate_pos_embed
from edgecl.data.transforms import eval_transform, train_transform
from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.metrics.cost import CostMeter

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
TASKS = [torch.tensor([0, 1]), torch.tensor([2, 3])]
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# Small selector (16 px = 2x2 patches); big ALD time scale so θ ≈ θ̄ from the first steps.
FAST = {"selector": {"resolution": 16}, "ald_reference_steps": 10**6}
HOST = {
    "l2p": {"pool_size": 4, "top_k": 2, "prompt_length": 2},
    "dualprompt": {"prompt_layers": [1], "g_layers": [0], "pool_size": 2},
    "coda_prompt": {"pool_size": 4, "prompt_layers": [1]},
}


def make_method(name: str, seed: int = 0, **params):
    torch.manual_seed(0)
    vit = VisionTransformer(TINY_VIT)
    cls = method_class(name)
    method = cls(cls.Params(**params), OptimConfig(name="adam", lr=0.05, grad_clip=1.0))
    info = BenchmarkInfo(
        num_classes=4, n_tasks=2, task_classes=TASKS,
        train_transform=train_transform(32, *MEAN_STD), device=torch.device("cpu"),
        meter=CostMeter(), seed=seed, steps_per_task=[3, 3], input_size=32,
    )
    method.setup(vit, info)
    return method


def task(t: int) -> TaskInfo:
    return TaskInfo(t, TASKS[t], 8, 3)


def batch(t: int, step: int) -> Batch:
    """Batches of 4 out of the task's 8 images; step 2 revisits step 0's images."""
    g = torch.Generator().manual_seed(100 * t + step % 2)
    raw = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=g)
    x = eval_transform(32, *MEAN_STD)(raw) + 0.1 * torch.randn(4, 3, 32, 32, generator=g)
    y = TASKS[t][torch.tensor([0, 1, 0, 1])]
    index = torch.arange(4) + 4 * (step % 2) + 8 * t
    return Batch(x, y, raw, index, t, epoch=step // 2)


def train(method, steps: int = 3, tasks: int = 2, record=None):
    with method.meter.active():
        for t in range(tasks):
            method.begin_task(task(t))
            for step in range(steps):
                stats = method.observe(batch(t, step))
                if record is not None:
                    record.append(stats.extra)
            method.end_task(task(t))


# ---- the selection model ----------------------------------------------------------------------
def test_shared_selector_is_the_update_model_at_a_lower_resolution():
    method = make_method("l2p_rep", **HOST["l2p"], **FAST)
    selector = method.query_model.vit
    assert selector.cfg.img_size == 16 and selector.depth == 4
    assert selector.blocks[0] is method.vit.blocks[0]
    assert selector.patch_embed is method.vit.patch_embed
    assert selector.pos_embed.shape == (1, 5, 32) and not selector.pos_embed.requires_grad
    # the same as a ViT built at 16 px from the update model's weights
    reference = VisionTransformer(replace(TINY_VIT, img_size=16))
    sd = copy.deepcopy(method.vit.state_dict())
    sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], 2)
    reference.load_state_dict(sd)
    x = torch.randn(3, 3, 32, 32)
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(method.query(x), reference(small), atol=1e-6)
    assert method.pool.keys.shape == (4, 32)
    # one extra tensor only: the interpolated position embedding
    host = make_method("l2p", **HOST["l2p"])
    extra = method.memory_breakdown()["parameter_bytes"] - host.memory_breakdown()[
        "parameter_bytes"]
    assert extra == 5 * 32 * 4


def test_truncated_selector_runs_the_first_blocks_only():
    method = make_method("l2p_rep", **HOST["l2p"], selector={"resolution": 32, "depth": 2})
    vit = method.vit
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.embed(x)
        for block in vit.blocks[:2]:
            tokens, _ = block(tokens)
        expected = vit.norm(tokens)[:, 0]
    assert torch.allclose(method.query(x), expected, atol=1e-6)


def test_selector_from_a_separate_checkpoint(tmp_path):
    torch.manual_seed(5)
    other = VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                        num_heads=2))
    path = tmp_path / "selector.pth"
    torch.save(other.state_dict(), path)
    method = make_method("coda_prompt_rep", **HOST["coda_prompt"],
                         selector={"resolution": 16, "weights": str(path)})
    assert method.query_model.feature_dim == 16
    method.begin_task(task(0))
    assert method.components.keys[0].shape[-1] == 16  # keys live in the selector's space
    method.observe(batch(0, 0))
    assert method.predict(torch.randn(2, 3, 32, 32)).shape == (2, 4)


# ---- the query cache --------------------------------------------------------------------------
def test_query_cache_hit_returns_identical_queries_and_skips_the_selection_flops():
    method = make_method("l2p_rep", **HOST["l2p"], **FAST, atom=False, ald=False)
    meter = method.meter
    method.begin_task(task(0))
    with meter.active():
        method.observe(batch(0, 0))
        first = meter.flops["selection"]
        cached = method.query_cache.get(batch(0, 0).index).clone()
        method.observe(batch(0, 1))
        assert meter.flops["selection"] == 2 * first > 0
        hit = method.training_query(batch(0, 2))  # epoch 2: the images of step 0 again
        assert torch.equal(hit, cached)
        method.observe(batch(0, 2))
        assert meter.flops["selection"] == 2 * first  # no selection pass at all
    assert (method.query_cache.hits, method.query_cache.misses) == (8, 8)
    # the cached query is the test-time query of the un-augmented image
    test_x = eval_transform(32, *MEAN_STD)(batch(0, 0).raw)
    assert torch.allclose(cached, method.query(test_x), atol=1e-6)
    assert method.buffer_bytes() == 8 * 32 * 4 + 16 * 8
    method.begin_task(task(1))
    assert len(method.query_cache) == 0  # a task's samples never return


def test_without_the_cache_the_selector_sees_the_augmented_batch():
    method = make_method("l2p_rep", **HOST["l2p"], **FAST, cache_queries=False)
    method.begin_task(task(0))
    with method.meter.active():
        for step in range(3):
            method.observe(batch(0, step))
    assert len(method.query_cache) == 0 and method.buffer_bytes() == 0
    assert method.meter.flops["selection"] > 0


# ---- AToM and ALD in training only ------------------------------------------------------------
def hooks_seen(method):
    seen = []
    forward = method.vit.forward_features

    def spy(x, hooks=None):
        seen.append(hooks)
        return forward(x, hooks)

    method.vit.forward_features = spy
    return seen


def test_training_merges_and_drops_but_evaluation_runs_everything():
    method = make_method("l2p_rep", **HOST["l2p"], **FAST, r_max=2)
    seen = hooks_seen(method)
    record: list[dict] = []
    train(method, record=record)
    assert method.merger.merges == [0, 0, 1, 2]
    assert all(h.merge is method.merger for h in seen)
    assert any(len(h.skip) for h in seen) and all(r["layers_run"] <= 4 for r in record)
    seen.clear()
    logits = method.predict(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 4)
    assert len(seen) == 1 and seen[0].merge is None and not seen[0].skip


def test_prefix_layers_always_run():
    for host in ("dualprompt", "coda_prompt"):
        method = make_method(f"{host}_rep", **HOST[host], **FAST)
        seen = hooks_seen(method)
        train(method)
        prefix_layers = set(seen[0].prefix)
        assert prefix_layers == ({0, 1} if host == "dualprompt" else {1})
        assert all(not prefix_layers & set(h.skip) for h in seen)
        assert any(h.skip for h in seen)


def test_flags_off_is_exactly_the_host_method():
    off = {"swift_selection": False, "cache_queries": False, "atom": False, "ald": False}
    for host, params in HOST.items():
        rep, plain = make_method(f"{host}_rep", **params, **off), make_method(host, **params)
        train(rep)
        train(plain)
        for (k, a), b in zip(rep.modules.state_dict().items(),
                             plain.modules.state_dict().values(), strict=True):
            assert torch.equal(a, b), (host, k)
        assert dict(rep.meter.flops) == dict(plain.meter.flops)


def test_merging_and_dropping_show_as_fewer_executed_flops_and_saved_bytes():
    host = make_method("l2p", **HOST["l2p"])
    rep = make_method("l2p_rep", **HOST["l2p"], **FAST, r_max=2)
    saved = {}
    for name, method in (("host", host), ("rep", rep)):
        with method.meter.active():
            method.begin_task(task(0))
            for step in range(6):
                with method.meter.training_step():
                    method.observe(batch(0, step))
        saved[name] = sum(method.meter.saved_bytes_per_step)
    assert rep.meter.flops["forward"] < 0.8 * host.meter.flops["forward"]
    assert rep.meter.flops["backward"] < 0.8 * host.meter.flops["backward"]
    assert rep.meter.flops["selection"] < 0.5 * host.meter.flops["selection"]
    assert saved["rep"] < 0.8 * saved["host"]


@pytest.mark.parametrize("clock", ["run", "task"])
def test_ald_clock_counts_steps_of_the_run_or_of_the_task(clock):
    method = make_method("l2p_rep", **HOST["l2p"], **FAST, ald_clock=clock)
    steps: list[int] = []
    sample = method.dropper.sample
    method.dropper.sample = lambda t, always_run=(): steps.append(t) or sample(t, always_run)
    train(method)
    assert steps == ([0, 1, 2, 3, 4, 5] if clock == "run" else [0, 1, 2, 0, 1, 2])
    assert method.dropper.time_scale == 10**6 / 6  # 6 planned steps stand for 10^6


def test_ald_draws_are_seeded():
    def skips(seed):
        method = make_method("l2p_rep", seed=seed, **HOST["l2p"], **FAST)
        seen = hooks_seen(method)
        train(method)
        return [list(h.skip) for h in seen]

    assert skips(1) == skips(1)
    assert skips(1) != skips(2)


@pytest.mark.parametrize("host", sorted(HOST))
def test_resume_mid_task_and_at_a_task_boundary_is_exact(host):
    name, params = f"{host}_rep", {**HOST[host], **FAST}

    def run(stop: tuple[int, int] | None):
        method = make_method(name, **params)
        for t in range(2):
            method.begin_task(task(t))
            for step in range(3):
                method.observe(batch(t, step))
                if (t, step) == stop:
                    return method
        return method

    full = run(None)
    for stop in [(0, 0), (0, 2), (1, 1)]:
        state = copy.deepcopy(run(stop).state_dict())
        resumed = make_method(name, **params)
        resumed.begin_task(task(stop[0]))
        resumed.load_state_dict(state)
        for t in range(stop[0], 2):
            if t > stop[0]:
                resumed.begin_task(task(t))
            for step in range(stop[1] + 1 if t == stop[0] else 0, 3):
                resumed.observe(batch(t, step))
        assert resumed.rep_step == full.rep_step == 6
        for (k, a), b in zip(full.modules.state_dict().items(),
                             resumed.modules.state_dict().values(), strict=True):
            assert torch.equal(a, b), (stop, k)


# ---- configs and a real-data run --------------------------------------------------------------
@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda"])
def test_rep_configs_load(name):
    from edgecl.config import load_config

    for suffix in ("", "_reduced"):
        cfg = load_config(f"configs/cifar100_{name}_rep{suffix}.yaml")
        names = [m.name for m in cfg.methods]
        assert len(names) == 2 and names[1] == f"{names[0]}_rep"


def test_real_run_with_rep(cifar100_root, vit_tiny_path, tmp_path):
    from edgecl.config import load_config
    from edgecl.runner import run

    tree = {
        "name": "rep-smoke", "seed": 3,
        "data": {"dataset": "cifar100", "root": str(cifar100_root), "n_tasks": 2,
                 "class_order": [3, 1, 4, 5], "train_per_class": 2, "test_per_class": 1},
        "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 8},
        "optim": {"name": "adam", "lr": 0.001875, "grad_clip": 1.0},
        "methods": [{"name": "l2p_rep", "ald_reference_steps": 18750}],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    (res,) = run(load_config(path), tmp_path / "run")
    flops = res.cost.flops.train
    assert flops.selection > 0 and flops.forward > 0
    assert res.cost.memory.buffer_bytes == 4 * 192 * 4 + 16 * 4
    assert [len(r) for r in res.accuracy.class_il.matrix] == [1, 2]
