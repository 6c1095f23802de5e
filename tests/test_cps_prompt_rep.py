"""CPS-Prompt + REP: one selector pass for query and significance, the significance map's
resize, ALD/AToM on the sparse forward only, the query+significance cache, flags off, resume."""

from __future__ import annotations

import io

import pytest
import torch

from edgecl.backbones.vit import VisionTransformer, ViTConfig, ViTHooks
from edgecl.data.transforms import eval_transform, train_transform
from edgecl.efficiency.patch_sampling import resize_significance
from edgecl.errors import ConfigError
from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.methods.rep import resize_input
from edgecl.metrics.cost import CostMeter

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)  # 4x4 patches
TASKS = [torch.tensor([0, 1]), torch.tensor([2, 3])]
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# a 16-px selector (2x2 patches); steps 0-1 of each task's 4 train prompts, 2-3 the head
BASE = {"pool_size": 4, "prompt_layers": [0], "selector": {"resolution": 16},
        "phase_split": "steps", "phase_ratio": 0.5}
OFF = {"swift_selection": False, "cache_queries": False, "atom": False, "ald": False}


def make(name: str = "cps_prompt_rep", transform=None, **params):
    torch.manual_seed(0)
    cls = method_class(name)
    method = cls(cls.Params(**params), OptimConfig(name="adam", lr=0.01, grad_clip=1.0))
    info = BenchmarkInfo(num_classes=4, n_tasks=2, task_classes=TASKS,
                         train_transform=transform, device=torch.device("cpu"),
                         meter=CostMeter(), seed=0, steps_per_task=[4, 4], input_size=32)
    method.setup(VisionTransformer(TINY), info)
    return method


def task(t: int) -> TaskInfo:
    return TaskInfo(t, TASKS[t], 8, 4)


def batch(t: int, step: int) -> Batch:
    """4 of the task's 8 images, un-augmented (x is raw through the eval transform)."""
    g = torch.Generator().manual_seed(100 * t + step % 2)
    raw = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=g)
    x = eval_transform(32, *MEAN_STD)(raw)
    y = TASKS[t][torch.tensor([0, 1, 0, 1])]
    return Batch(x, y, raw, torch.arange(4) + 4 * (step % 2) + 8 * t, t, step // 2)


def widths(method) -> list[int]:
    """Token counts entering block 0 and every block after, in call order."""
    seen: list[int] = []
    for block in method.vit.blocks:
        block.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    return seen


# ---- the significance map ---------------------------------------------------------------------
def test_resize_significance_by_hand():
    coarse = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # a 2x2 grid
    fine = resize_significance(coarse, 16, "nearest").view(4, 4)
    assert fine.tolist() == [[0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5],
                             [0.75, 0.75, 1.0, 1.0], [0.75, 0.75, 1.0, 1.0]]
    # bilinear, align_corners=False, 2 -> 4 in 1-D: a, 3a/4 + b/4, a/4 + 3b/4, b; then / 4
    row = resize_significance(coarse, 16, "bilinear").view(4, 4)[0]
    assert row.tolist() == pytest.approx([0.25, 0.3125, 0.4375, 0.5])
    for mode in ("nearest", "bilinear"):  # the mass is preserved
        assert resize_significance(coarse, 16, mode).sum().item() == pytest.approx(10.0)
    assert resize_significance(coarse, 4) is coarse
    with pytest.raises(ValueError):
        resize_significance(torch.ones(1, 5), 16)


# ---- swift selection --------------------------------------------------------------------------
def test_one_selector_pass_gives_the_query_and_the_patch_significance():
    method = make(**BASE, ald=False)
    method.begin_task(task(0))
    b = batch(0, 0)
    query, significance = method.query_with_significance(b)
    selector = method.query_model.vit
    assert selector.cfg.img_size == 16 and selector.blocks[3] is method.vit.blocks[3]
    small = resize_input(b.x, 16)
    with torch.no_grad():
        out = selector.forward_features(small, ViTHooks(significance_layer=3))
    assert torch.allclose(query, method.query(b.x), atol=1e-6)
    assert significance.shape == (4, 16)
    assert torch.allclose(significance, resize_significance(out.significance, 16), atol=1e-7)
    # the steps: a 1 + 4-token selector pass, then the 1 + 8-token sparse update pass; CPS
    # alone queries with the dense 1 + 16-token update model
    for name, expected in (("cps_prompt_rep", [5, 9]), ("cps_prompt", [17, 9])):
        m = make(name, **{k: v for k, v in BASE.items() if name != "cps_prompt"
                          or k != "selector"}, **({"ald": False} if "rep" in name else {}))
        m.begin_task(task(0))
        seen = widths(m)
        m.observe(b)
        assert seen[::4] == expected, name
    # the head phase's query also comes from the selector: 1 + 4, then the dense 1 + 16
    seen = widths(method)
    for step in range(3):
        method.observe(batch(0, step))
    assert seen[-8::4] == [5, 17]


# ---- ALD and AToM -----------------------------------------------------------------------------
def test_atom_merges_on_top_of_the_sampled_tokens_by_the_schedule():
    method = make(**BASE, atom=True, r_max=2, ald=False)
    assert method.merger.merges == [0, 0, 1, 2]
    method.begin_task(task(0))
    seen = widths(method)
    stats = method.observe(batch(0, 0))
    # selector pass (no merging) 5 tokens per block; sparse pass 9, 9, 9, then 8 after
    # block 2's merge (block 3's own merge happens after its attention)
    assert seen == [5, 5, 5, 5, 9, 9, 9, 8]
    assert stats.extra["tokens_merged"] == 3.0
    seen.clear()
    for step in (1, 2):  # step 2 is the head phase: dense and unmerged
        stats = method.observe(batch(0, step))
    assert seen[-4:] == [17, 17, 17, 17] and stats.extra["tokens_merged"] == 0.0
    assert make(**BASE, atom=False).merger is None and make(**BASE).merger is not None


def test_ald_drops_blocks_of_the_sparse_forward_only_and_keeps_prefix_blocks():
    method = make(**BASE, ald=True, ald_reference_steps=10**6)  # θ ≈ θ̄ = 0.5 from the second step
    hooks: list[ViTHooks] = []
    forward_from = method.vit.forward_from

    def spy(x, start, h=None, n_prompts=0):
        hooks.append(h)
        return forward_from(x, start, h, n_prompts)

    method.vit.forward_from = spy
    layers_run = []
    for t in range(2):
        method.begin_task(task(t))
        for step in range(4):
            layers_run.append(method.observe(batch(t, step)).extra["layers_run"])
    # every observe calls the update model once: sparse (steps 0-1) or dense (steps 2-3)
    sparse = [h for i, h in enumerate(hooks) if i % 4 < 2]
    dense = [h for i, h in enumerate(hooks) if i % 4 >= 2]
    assert any(h.skip for h in sparse) and all(0 not in h.skip for h in sparse)
    assert all(not h.skip and h.merge is None for h in dense)
    assert all(r == 4.0 for i, r in enumerate(layers_run) if i % 4 >= 2)
    assert method.rep_step == 8 and method.task_step == method.phase_step == 4


# ---- the cache --------------------------------------------------------------------------------
def test_cache_rows_hold_query_and_significance_of_the_unaugmented_view():
    method = make(**BASE, cache_queries=True, ald=False)
    method.begin_task(task(0))
    meter = method.meter
    with meter.active():
        method.observe(batch(0, 0))
        method.observe(batch(0, 1))
        first = meter.flops["selection"]
        method.observe(batch(0, 2))  # the head phase on step 0's images: a cache hit
        assert meter.flops["selection"] == first
    rows = method.query_cache.get(batch(0, 0).index)
    expected = torch.cat(method.selector_pass(batch(0, 0).x), dim=1)
    assert rows.shape == (4, 32 + 4) and torch.allclose(rows, expected, atol=1e-6)
    assert (method.query_cache.hits, method.query_cache.misses) == (4, 8)
    assert method.buffer_bytes() >= 8 * 36 * 4
    with pytest.raises(ConfigError, match="un-augmented"):
        make(**BASE, cache_queries=True, transform=train_transform(32, *MEAN_STD))
    make(**BASE, cache_queries=True, sampling="uniform",
         transform=train_transform(32, *MEAN_STD))  # no significance to cache: allowed


# ---- flags off, resume, configs ---------------------------------------------------------------
def train(method, tasks: int = 2) -> list[float]:
    losses = []
    with method.meter.active():
        for t in range(tasks):
            method.begin_task(task(t))
            for step in range(4):
                losses.append(method.observe(batch(t, step)).loss)
    return losses


def test_flags_off_is_exactly_cps_prompt():
    host = {k: v for k, v in BASE.items() if k != "selector"}
    combo, plain = make(**BASE, **OFF), make("cps_prompt", **host)
    assert train(combo) == train(plain)
    for (k, a), b in zip(combo.modules.state_dict().items(),
                         plain.modules.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert dict(combo.meter.flops) == dict(plain.meter.flops)


def play(method, begin: int, end: int) -> list[float]:
    """Global steps [begin, end) of 2 tasks x 4 steps; a task begins at its step 0."""
    losses = []
    for g in range(begin, end):
        t, step = divmod(g, 4)
        if step == 0:
            method.begin_task(task(t))
        losses.append(method.observe(batch(t, step)).loss)
    return losses


# after a prompt step, before the first head step, at the task boundary, in task 1's head phase
@pytest.mark.parametrize("stop", [0, 1, 3, 6])
def test_resume_is_exact(stop):
    params = {**BASE, "atom": True, "r_max": 2, "ald": True, "ald_reference_steps": 10**6,
              "cache_queries": True, "cache_head_features": True}
    full = make(**params)
    full_losses = play(full, 0, 8)
    cut = make(**params)
    play(cut, 0, stop + 1)
    buffer = io.BytesIO()  # through bytes, as a checkpoint: nothing shared with `cut`
    torch.save(cut.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(**params)
    resumed.begin_task(task(stop // 4))  # as the runner: the task of the last finished step
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert play(resumed, stop + 1, 8) == full_losses[stop + 1:]
    assert resumed.rep_step == full.rep_step == 8
    for (k, a), b in zip(full.modules.state_dict().items(),
                         resumed.modules.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    x = batch(1, 0).x
    assert torch.equal(full.predict(x), resumed.predict(x))


def test_the_configs_load():
    from edgecl.config import load_config

    for suffix in ("", "_reduced"):
        cfg = load_config(f"configs/cifar100_cps_prompt_rep{suffix}.yaml")
        names = [m.name for m in cfg.methods]
        assert names == ["coda_prompt", "cps_prompt", "cps_prompt_rep"]
