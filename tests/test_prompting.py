"""Prompt methods: selection, pull loss, prefix attention, CODA components, frozen parts."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from edgecl.backbones.vit import Attention, VisionTransformer, ViTConfig, ViTHooks
from edgecl.efficiency.prompts import (
    CodaComponents,
    PromptPool,
    batchwise_ids,
    gram_schmidt_new,
    layer_inputs,
    merge_prefix,
    pull_similarity,
    split_prefix,
    topk_ids,
)
from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.metrics.cost import CostMeter

pytestmark = pytest.mark.usefixtures("one_thread")


REPO = Path(__file__).resolve().parents[1]
TINY_VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
TASKS = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])]


# ---- selection ------------------------------------------------------------------------------
def test_topk_is_largest_first_and_ties_go_to_the_lower_id():
    sim = torch.tensor([[0.5, 0.9, 0.9, 0.1], [0.2, 0.2, 0.2, 0.3]])
    assert topk_ids(sim, 2).tolist() == [[1, 2], [3, 0]]
    with pytest.raises(ValueError, match="top_k"):
        topk_ids(sim, 5)


def test_batchwise_picks_the_most_frequent_ids_with_ties_to_the_lower_id():
    ids = torch.tensor([[0, 1], [1, 2], [2, 1], [3, 0]])  # counts 0:2 1:3 2:2 3:1 4:0
    assert batchwise_ids(ids, pool_size=5, k=2).tolist() == [[1, 0]] * 4
    assert batchwise_ids(ids, pool_size=5, k=3).tolist() == [[1, 0, 2]] * 4


def test_batchwise_pool_padding_never_selects_unused_ids():
    # every sample picks {3, 1}: ids 0, 2, 4, 5 (count 0, the reference's padding) never win,
    # and the tie between 1 and 3 goes to 1
    ids = torch.tensor([[3, 1], [3, 1], [1, 3]])
    assert batchwise_ids(ids, pool_size=6, k=2).tolist() == [[1, 3]] * 3
    # a single sample: its own top-k, reordered by id since all counts tie
    assert batchwise_ids(torch.tensor([[4, 0, 2]]), pool_size=6, k=3).tolist() == [[0, 2, 4]]


def pool_with_keys(keys: torch.Tensor) -> PromptPool:
    pool = PromptPool(len(keys), 2, 3, keys.shape[1], torch.Generator().manual_seed(0))
    with torch.no_grad():
        pool.keys.copy_(keys)
        pool.prompts.copy_(torch.arange(pool.prompts.numel()).view_as(pool.prompts).float())
    return pool


def test_pool_select_per_sample_and_batchwise_by_cosine():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    pool = pool_with_keys(keys)
    query = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 0.9]])
    # cosines: q0 → k0 (≈1) > k3; q1 → k1 > k3; q2 → k3 > k0
    per_sample = pool.select(query, top_k=2, batchwise=False)
    assert per_sample.ids.tolist() == [[0, 3], [1, 3], [3, 0]]
    batchwise = pool.select(query, top_k=2, batchwise=True)
    assert batchwise.ids.tolist() == [[3, 0]] * 3  # counts: 3 → 3, 0 → 2, 1 → 1
    gathered = pool.gather(batchwise.ids)  # (n_layers, B, k, L, D)
    assert gathered.shape == (1, 3, 2, 2, 3)
    assert torch.equal(gathered[0, 1, 0], pool.prompts[3, 0])
    forced = pool.select(query, top_k=2, batchwise=True, forced=torch.tensor([2, 1]))
    assert forced.ids.tolist() == [[2, 1]] * 3


# ---- pull constraint ------------------------------------------------------------------------
def test_pull_similarity_hand_computed():
    query = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    keys = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    ids = torch.tensor([[0, 1], [0, 0]])
    # sample 0: cos(q0, k0) + cos(q0, k1) = 0.6 + 0.8; sample 1: 1 + 1; divided by B = 2
    assert pull_similarity(query, keys, ids).item() == pytest.approx((1.4 + 2.0) / 2)


def test_minimising_minus_pull_moves_keys_toward_queries():
    query = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[0.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    ids = torch.tensor([[0]])
    before = pull_similarity(query, keys, ids).item()
    (-pull_similarity(query, keys, ids)).backward()
    assert keys.grad[1].abs().sum() == 0  # an unselected key gets no pull
    with torch.no_grad():
        keys -= 0.5 * keys.grad
    assert pull_similarity(query, keys, ids).item() > before


def test_l2p_aux_loss_is_minus_lambda_times_pull():
    method = make_method("l2p", pull_lambda=0.25)
    method.begin_task(task(0))
    query = method.query(torch.randn(3, 3, 32, 32))
    batch = method.prompt_batch(query, training=True)
    assert batch.aux_loss.item() == pytest.approx(-0.25 * batch.stats["pull"])
    assert batch.prompts.shape == (3, 5 * 5, 32) and batch.prefix == {}


# ---- prefix attention -----------------------------------------------------------------------
def test_prefix_attention_hand_case_zero_queries_average_all_values():
    d, n, p = 4, 3, 2
    attn = Attention(ViTConfig(embed_dim=d, num_heads=2))
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.bias[2 * d :] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # every value = c
        attn.proj.weight.copy_(torch.eye(d))
        attn.proj.bias.zero_()
    x = torch.randn(1, n, d)
    pk = torch.randn(1, p, d)
    pv = torch.tensor([[[10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]]])
    out, _ = attn(x, prefix=(pk, pv))
    # queries are 0 → uniform attention over p + n keys (prefix keys are irrelevant)
    expected = (pv.sum(1) + n * torch.tensor([[1.0, 2.0, 3.0, 4.0]])) / (p + n)
    assert torch.allclose(out, expected.unsqueeze(1).expand(1, n, d), atol=1e-6)


def test_prefix_attention_equals_concatenated_keys_and_values():
    torch.manual_seed(0)
    cfg = ViTConfig(embed_dim=8, num_heads=2)
    attn = Attention(cfg)
    b, n, p, h, hd = 2, 5, 3, 2, 4
    x, pk, pv = torch.randn(b, n, 8), torch.randn(b, p, 8), torch.randn(b, p, 8)
    out, _ = attn(x, prefix=(pk, pv))
    q, k, v = attn.qkv(x).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
    heads = lambda t: t.view(b, -1, h, hd).transpose(1, 2)  # noqa: E731
    k, v = torch.cat([heads(pk), k], dim=2), torch.cat([heads(pv), v], dim=2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, 8))
    assert torch.allclose(out, expected, atol=1e-5)
    # a prefix leaves the token count alone
    assert out.shape == x.shape


def test_split_prefix_and_layer_inputs():
    prompts = torch.arange(2 * 3 * 2 * 4 * 1, dtype=torch.float).view(2, 3, 2, 4, 1)
    keys, values = split_prefix(prompts[0])  # (B=3, n=2, L=4, D=1)
    assert keys.shape == values.shape == (3, 4, 1)
    assert keys[0, :, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # first halves of both prompts
    assert values[0, :, 0].tolist() == [2.0, 3.0, 6.0, 7.0]
    tokens, prefix = layer_inputs(prompts, [2, 4], "prefix")
    assert tokens is None and sorted(prefix) == [2, 4]
    tokens, prefix = layer_inputs(prompts[:1], [0], "prompt")
    assert tokens.shape == (3, 8, 1) and prefix == {}
    with pytest.raises(ValueError, match="odd"):
        split_prefix(torch.zeros(1, 1, 3, 2))
    merged = merge_prefix({0: (keys, values)}, {0: (keys[:, :1], values[:, :1]), 1: (keys, keys)})
    assert merged[0][0].shape == (3, 5, 1) and torch.equal(merged[1][1], keys)


def test_prompt_tokens_enter_after_cls_and_prefix_changes_only_its_layers():
    torch.manual_seed(0)
    vit = VisionTransformer(TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    out = vit.forward_features(x, ViTHooks(prompts=torch.randn(2, 3, 32)))
    assert out.n_prompts == 3 and out.tokens.shape == (2, 1 + 3 + 16, 32)
    plain = vit.forward_features(x, ViTHooks(taps=[0, 1]))
    prefixed = vit.forward_features(x, ViTHooks(prefix={1: (torch.randn(2, 2, 32),) * 2},
                                                taps=[0, 1]))
    assert torch.equal(plain.taps[0], prefixed.taps[0])
    assert not torch.allclose(plain.taps[1], prefixed.taps[1])


# ---- CODA-Prompt ----------------------------------------------------------------------------
def test_coda_weighted_component_sum_hand_computed():
    comps = CodaComponents(n_layers=1, per_task=2, length=2, embed_dim=1, key_dim=2)
    comps.add_slice(torch.Generator().manual_seed(0))
    with torch.no_grad():
        comps.attention[0].copy_(torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]))
        comps.keys[0].copy_(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]))
        comps.prompts[0].copy_(torch.tensor([[[[3.0], [5.0]], [[7.0], [11.0]]]]))
    query = torch.tensor([[1.0, 2.0]])
    # q ⊙ A_0 = (1, 2): cos with K_0 = (1, 0) is 1/√5; q ⊙ A_1 = (1, 0) ⟂ K_1 = (0, 1): 0
    alpha = comps.weights(query)
    assert torch.allclose(alpha, torch.tensor([[[1 / math.sqrt(5), 0.0]]]), atol=1e-6)
    prompt = comps(query)  # (n_layers, B, 1, L, D)
    assert torch.allclose(prompt[0, 0, 0, :, 0], torch.tensor([3.0, 5.0]) / math.sqrt(5))
    keys, values = split_prefix(prompt[0])
    assert keys.item() == pytest.approx(3 / math.sqrt(5))
    assert values.item() == pytest.approx(5 / math.sqrt(5))


def test_gram_schmidt_new_slices_are_orthonormal_and_orthogonal_to_trained_old_ones():
    g = torch.Generator().manual_seed(1)
    comps = CodaComponents(n_layers=2, per_task=3, length=2, embed_dim=4, key_dim=12)
    comps.add_slice(g)
    for plist in (comps.prompts, comps.keys, comps.attention):
        rows = plist[0].detach().flatten(2)
        gram = rows @ rows.transpose(1, 2)
        assert torch.allclose(gram, torch.eye(3).expand(2, 3, 3), atol=1e-5)
    with torch.no_grad():  # "training" makes the old slice non-orthogonal
        for plist in (comps.prompts, comps.keys, comps.attention):
            plist[0].add_(0.5 * torch.randn(plist[0].shape, generator=g))
    comps.add_slice(g)
    for plist in (comps.prompts, comps.keys, comps.attention):
        old, new = plist[0].detach().flatten(2), plist[1].detach().flatten(2)
        assert (new @ old.transpose(1, 2)).abs().max() < 1e-5
        assert torch.allclose(new @ new.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="orthogonal"):
        gram_schmidt_new(torch.randn(3, 4), 2, g)


# ---- methods on a tiny ViT ------------------------------------------------------------------
def make_method(name: str, optim: OptimConfig | None = None, **params):
    torch.manual_seed(0)
    vit = VisionTransformer(TINY_VIT)
    cls = method_class(name)
    method = cls(cls.Params(**params), optim or OptimConfig(name="adam", lr=0.05, grad_clip=1.0))
    info = BenchmarkInfo(
        num_classes=6, n_tasks=3, task_classes=TASKS, train_transform=None,
        device=torch.device("cpu"), meter=CostMeter(), seed=0, steps_per_task=[2, 2, 2],
        input_size=32,
    )
    method.setup(vit, info)
    return method


def task(t: int) -> TaskInfo:
    return TaskInfo(t, TASKS[t], 8, 2)


def batch(t: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    y = TASKS[t][torch.tensor([0, 1, 0, 1])]
    return Batch(torch.randn(4, 3, 32, 32, generator=g), y, None, None, t)


METHODS = {
    "l2p": {},
    "dualprompt": {"prompt_layers": [1, 2], "g_layers": [0], "pool_size": 3},
    "coda_prompt": {"pool_size": 6, "prompt_layers": [1, 2]},
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_frozen_parameters_get_no_grads_and_do_not_change(name):
    method = make_method(name, **METHODS[name])
    backbone = copy.deepcopy(method.vit.state_dict())
    with method.meter.active():
        for t in range(2):
            method.begin_task(task(t))
            if t == 1 and name == "coda_prompt":
                comps = method.components
                old = [plist[0].detach().clone()
                       for plist in (comps.prompts, comps.keys, comps.attention)]
            for step in range(2):
                method.observe(batch(t, seed=10 * t + step))
                assert all(p.grad is None for p in method.vit.parameters())
                trainable = method.trainable_parameters()
                assert trainable and all(p.grad is not None for p in trainable)
            method.end_task(task(t))
    assert all(torch.equal(v, method.vit.state_dict()[k]) for k, v in backbone.items())
    assert all(not p.requires_grad for p in method.vit.parameters())
    flops = method.meter.flops
    assert flops["selection"] > 0 and flops["forward"] > 0 and flops["backward"] > 0
    if name == "coda_prompt":  # task 0's slice froze when task 1 began
        comps = method.components
        now = [plist[0] for plist in (comps.prompts, comps.keys, comps.attention)]
        assert all(p.grad is None and not p.requires_grad for p in now)
        assert all(torch.equal(a, b) for a, b in zip(old, now, strict=True))
        assert len(comps) == 2


def test_train_mask_restricts_the_loss_to_the_current_task():
    method = make_method("l2p")
    method.begin_task(task(1))
    logits = torch.zeros(2, 6)
    masked = method.train_logits(logits)
    assert torch.isinf(masked[:, [0, 1, 4, 5]]).all() and (masked[:, 2:4] == 0).all()
    method.params.train_mask = False
    assert torch.equal(method.train_logits(logits), logits)


def test_dualprompt_trains_the_task_prompt_and_warm_starts_the_next():
    method = make_method("dualprompt", **METHODS["dualprompt"])
    method.begin_task(task(0))
    query = method.query(torch.randn(2, 3, 32, 32))
    assert method.task_prompt_ids(0).tolist() == [0]
    train = method.pool.select(query, 1, True, method.task_prompt_ids(0))
    assert train.ids.tolist() == [[0], [0]]
    batch_ = method.prompt_batch(query, training=True)
    # G at block 0 (5 + 5 tokens per_kv), E at blocks 1 and 2
    assert sorted(batch_.prefix) == [0, 1, 2] and batch_.prefix[1][0].shape == (2, 5, 32)
    assert method.vit_hooks(None, batch_.prefix, True).frozen_until == 0
    method.observe(batch(0, 0))
    method.begin_task(task(1))
    assert torch.equal(method.pool.prompts[1], method.pool.prompts[0])


def test_reference_batch_mixing_is_the_references_reshape():
    from edgecl.efficiency.prompts import reference_batch_mixing

    # B = 4 samples, one token of width 1: keys k0..k3 = 0..3, values v0..v3 = 10..13
    keys = torch.arange(4.0).view(4, 1, 1)
    values = keys + 10
    mixed_k, mixed_v = reference_batch_mixing(keys, values)
    # rows k0 k1 k2 k3 v0 v1 v2 v3: sample b takes row 2b as keys, row 2b + 1 as values
    assert mixed_k.flatten().tolist() == [0, 2, 10, 12]
    assert mixed_v.flatten().tolist() == [1, 3, 11, 13]
    # the same as dualprompt-pytorch's (2, B, ...) -> (B, 2, ...) reshape without a permute
    ref = torch.stack([keys, values]).reshape(4, 2, 1, 1)
    assert torch.equal(ref[:, 0], mixed_k) and torch.equal(ref[:, 1], mixed_v)


def test_dualprompt_mixes_the_e_prefix_only_when_asked():
    plain = make_method("dualprompt", **METHODS["dualprompt"])
    mixed = make_method("dualprompt", **METHODS["dualprompt"], reference_batch_mixing=True)
    for m in (plain, mixed):
        m.begin_task(task(0))
    query = plain.query(torch.randn(4, 3, 32, 32))
    a, b = plain.prompt_batch(query, True).prefix, mixed.prompt_batch(query, True).prefix
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0], strict=True))  # G-prompt: as is
    for layer in (1, 2):  # E-prompt layers: one prompt for the batch, halves swapped in
        (k, v), (mk, mv) = a[layer], b[layer]
        assert torch.equal(mk[:2], k[:2]) and torch.equal(mv[:2], k[:2])
        assert torch.equal(mk[2:], v[2:]) and torch.equal(mv[2:], v[2:])


def test_coda_resume_at_any_task_is_exact():
    def run(stop_after: tuple[int, int] | None):
        method = make_method("coda_prompt", **METHODS["coda_prompt"])
        for t in range(3):
            method.begin_task(task(t))
            for step in range(2):
                method.observe(batch(t, seed=10 * t + step))
                if (t, step) == stop_after:
                    return method
        return method

    full = run(None)
    for stop in [(0, 1), (1, 0), (2, 0)]:
        partial = run(stop)
        state = copy.deepcopy(partial.state_dict())
        resumed = make_method("coda_prompt", **METHODS["coda_prompt"])
        resumed.begin_task(task(stop[0]))
        resumed.load_state_dict(state)
        for t in range(stop[0], 3):
            if t > stop[0]:
                resumed.begin_task(task(t))
            for step in range(stop[1] + 1 if t == stop[0] else 0, 2):
                resumed.observe(batch(t, seed=10 * t + step))
        for (k, a), b in zip(full.modules.state_dict().items(),
                             resumed.modules.state_dict().values(), strict=True):
            assert torch.equal(a, b), (stop, k)


def test_coda_requires_a_fresh_optimizer_per_task():
    with pytest.raises(ValueError, match="reset_each_task"):
        make_method("coda_prompt", optim=OptimConfig(name="adam", reset_each_task=False),
                    **METHODS["coda_prompt"])


def test_param_validation_names_the_problem():
    cls = method_class("l2p")
    with pytest.raises(ValueError, match="prompt_layers must be"):
        cls.Params(tuning="prompt", prompt_layers=[1])
    with pytest.raises(ValueError, match="head_input"):
        cls.Params(tuning="prefix", head_input="prompt_mean")
    with pytest.raises(ValueError, match="top_k"):
        cls.Params(top_k=11)


def test_prediction_uses_every_class_and_no_grad():
    method = make_method("coda_prompt", **METHODS["coda_prompt"])
    method.begin_task(task(0))
    logits = method.predict(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 6) and not logits.requires_grad
    assert F.softmax(logits, dim=1).sum(1).allclose(torch.ones(3))


# ---- configs and one real-data run ----------------------------------------------------------
@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda"])
def test_protocol_configs_load(name):
    from edgecl.config import load_config

    for suffix in ("", "_reduced"):
        cfg = load_config(REPO / "configs" / f"cifar100_{name}{suffix}.yaml")
        assert cfg.data.n_tasks == 10 and cfg.backbone.name.startswith("vit")
        assert any(m.name in ("l2p", "dualprompt", "coda_prompt") for m in cfg.methods)


def test_real_run_reports_selection_separately(cifar100_root, vit_tiny_path, tmp_path):
    from edgecl.config import load_config
    from edgecl.runner import run

    tree = {
        "name": "prompt-smoke", "seed": 3,
        "data": {"dataset": "cifar100", "root": str(cifar100_root), "n_tasks": 2,
                 "class_order": [3, 1, 4, 5], "train_per_class": 2, "test_per_class": 2},
        "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 8},
        "optim": {"name": "adam", "lr": 0.001875, "grad_clip": 1.0},
        "methods": [{"name": "l2p"}],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    (res,) = run(load_config(path), tmp_path / "run")
    flops = res.cost.flops.train
    assert flops.selection > 0 and flops.forward > 0
    assert flops.backward < 2 * flops.forward  # no weight grads
    mem = res.cost.memory
    assert 0 < mem.trainable_parameter_bytes < mem.parameter_bytes / 100
    assert res.cost.time_s.selection > 0
    assert [len(r) for r in res.accuracy.class_il.matrix] == [1, 2]


# ---- the evaluation-time query memo ----------------------------------------------------------
def test_query_cache_computes_only_unseen_rows_and_stays_under_its_size():
    from edgecl.efficiency.query_cache import QueryCache

    calls: list[int] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1)[:, :2] * 2

    cache = QueryCache()
    x = torch.arange(12.0).view(3, 4)
    assert torch.equal(cache.features(x, compute), compute(x))
    calls.clear()
    mixed = torch.cat([x[1:], torch.full((1, 4), 7.0)])  # two seen rows, one new
    assert torch.equal(cache.features(mixed, compute), compute(mixed)[:3])
    assert calls[0] == 1 and cache.hits == 2 and cache.misses == 4
    small = QueryCache(max_bytes=8)  # room for one 2-float row
    small.features(x, compute)
    assert len(small) == 1 and small.bytes == 8


@pytest.mark.parametrize("name", sorted(METHODS))
def test_evaluation_runs_the_query_pass_once_per_test_image(name):
    method = make_method(name, **METHODS[name])
    method.begin_task(task(0))
    x = batch(0, 1).x
    passes: list[int] = []
    method.query_model.register_forward_hook(lambda m, a, out: passes.append(len(a[0])))
    first = method.predict(x)
    again = method.predict(x)
    assert passes == [4] and torch.equal(first, again)
    method.params.cache_eval_queries = False
    assert torch.allclose(method.predict(x), first) and passes == [4, 4]


def test_query_cache_state_round_trips_through_a_checkpoint():
    import io

    from edgecl.efficiency.query_cache import QueryCache

    cache, x = QueryCache(), torch.randn(3, 4)
    cache.features(x, lambda t: t[:, :2])
    buffer = io.BytesIO()
    torch.save(cache.state_dict(), buffer)
    buffer.seek(0)
    restored = QueryCache()
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    def fail(t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("every row is cached")

    assert torch.equal(restored.features(x, fail), x[:, :2]) and restored.bytes == cache.bytes
