"""CPS-Prompt: patch significance, critical patch sampling, the decoupled phases, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from edgecl.backbones.vit import VisionTransformer, ViTConfig, ViTHooks, token_significance
from edgecl.efficiency.patch_sampling import keep_tokens, kept_patches, sample_patches
from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.metrics.cost import CostMeter

TINY = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)  # 16 patches
TASKS = [torch.tensor([0, 1]), torch.tensor([2, 3])]


def test_significance_is_cls_attention_times_value_norm_hand_computed():
    # one head, head_dim 1: the CLS query 1 against keys 0, 1, 2; values 5, -3, 4
    q = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3, 1)
    k = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 3, 1)
    v = torch.tensor([5.0, -3.0, 4.0]).view(1, 1, 3, 1)
    e = [math.exp(0), math.exp(1), math.exp(2)]
    attn = [x / sum(e) for x in e]
    expected = [attn[1] * 3.0, attn[2] * 4.0]  # CLS dropped; |v| = 3, 4
    assert token_significance(q, k, v)[0].tolist() == pytest.approx(expected)


def test_the_vit_returns_the_last_blocks_significance_without_changing_its_output():
    torch.manual_seed(0)
    vit = VisionTransformer(TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = vit.forward_features(x)
    out = vit.forward_features(x, ViTHooks(significance_layer=2))
    assert torch.equal(out.tokens, plain.tokens) and plain.significance is None
    # by hand: the last block's input, its norm1 and qkv
    tokens = vit.embed(x)
    for layer in range(2):
        tokens, _ = vit.blocks[layer](tokens, layer=layer)
    attn = vit.blocks[2].attn
    h = vit.blocks[2].norm1(tokens)
    q, k, v = attn.qkv(h).view(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
    cls = (q[:, :, :1] @ k.transpose(-2, -1) / 4.0).softmax(-1)[:, :, 0].sum(1)
    norm = v.transpose(1, 2).reshape(2, 17, 32).norm(dim=-1)
    assert out.significance.shape == (2, 16)
    assert torch.allclose(out.significance, (cls * norm)[:, 1:], atol=1e-6)


def test_sampling_keeps_cls_and_sorted_unique_patches():
    assert kept_patches(196, 0.5) == 98 and kept_patches(16, 0.25) == 12
    with pytest.raises(ValueError):
        kept_patches(16, 1.0)
    g = torch.Generator().manual_seed(0)
    scores = torch.full((3, 16), -50.0)
    scores[:, [2, 7, 11]] = 50.0  # at temperature 0.1 these dominate completely
    idx = sample_patches(scores, 16, 3, "critical_score", 0.1, g)
    assert idx.tolist() == [[2, 7, 11]] * 3
    idx = sample_patches(torch.zeros(4, 16), 16, 8, "uniform", 0.1, g)
    assert all(row == sorted(set(row)) and len(row) == 8 for row in idx.tolist())
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)  # CLS + 4 patches
    kept = keep_tokens(tokens, torch.tensor([[1, 3], [0, 2]]))
    assert kept[..., 0].tolist() == [[0, 2, 4], [5, 6, 8]]


def make(**params):
    torch.manual_seed(0)
    cls = method_class("cps_prompt")
    method = cls(cls.Params(pool_size=4, prompt_layers=[0, 1], **params),
                 OptimConfig(name="adam", lr=0.01, grad_clip=1.0))
    info = BenchmarkInfo(num_classes=4, n_tasks=2, task_classes=TASKS, train_transform=None,
                         device=torch.device("cpu"), meter=CostMeter(), seed=0,
                         steps_per_task=[4, 4], input_size=32, epochs=1)
    method.setup(VisionTransformer(TINY), info)
    return method


def batch(seed: int, epoch: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 0, 1]), None,
                 torch.arange(4) + 4 * seed, 0, epoch)


def test_prompt_steps_run_sparse_and_head_steps_leave_the_prompts_alone():
    method = make(phase_split="steps", phase_ratio=0.5, reduction_ratio=0.5)
    method.begin_task(TaskInfo(0, TASKS[0], 16, 4))
    widths: list[int] = []
    method.vit.blocks[0].register_forward_hook(lambda m, a, out: widths.append(a[0].shape[1]))
    prompts = method.components
    snapshot = [p.detach().clone() for p in prompts.parameters()]
    for seed in range(2):  # steps 1-2 of 4: the prompt phase
        assert method.observe(batch(seed)).extra["prompt_phase"] == 1.0
    # the query pass is dense (1 + 16 tokens), the prompt-update pass sparse (1 + 8)
    assert widths == [17, 9, 17, 9]
    changed = [p for p, s in zip(prompts.parameters(), snapshot, strict=True)
               if not torch.equal(p, s)]
    assert changed
    after_prompts = [p.detach().clone() for p in prompts.parameters()]
    head = method.head.weight.detach().clone()
    widths.clear()
    for seed in range(2, 4):  # the head phase: dense and under no_grad
        assert method.observe(batch(seed)).extra["prompt_phase"] == 0.0
    assert widths == [17, 17, 17, 17]
    assert all(torch.equal(p, s) for p, s in zip(prompts.parameters(), after_prompts,
                                                 strict=True))
    assert not torch.equal(method.head.weight, head)


def test_epoch_phases_follow_the_reference_rule():
    method = make()  # phase_ratio 0.4
    method.info.epochs = 5
    method.begin_task(TaskInfo(0, TASKS[0], 16, 20))
    assert [method.prompt_phase(batch(0, e)) for e in range(5)] == [True, True, False,
                                                                    False, False]
    method.info.epochs = 1  # int(1 x 0.4) = 0: no prompt epoch, as in the reference
    assert not method.prompt_phase(batch(0, 0))
    assert make(decoupled=False).prompt_phase(batch(0, 3))


def test_resume_mid_task_is_exact():
    a = make(phase_split="steps", phase_ratio=0.75, cache_head_features=True)
    a.begin_task(TaskInfo(0, TASKS[0], 16, 4))
    a.observe(batch(0))
    a.observe(batch(1))
    buffer = io.BytesIO()  # through bytes, as a checkpoint: nothing shared with `a`
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    b = make(phase_split="steps", phase_ratio=0.75, cache_head_features=True)
    b.begin_task(TaskInfo(0, TASKS[0], 16, 4))
    b.load_state_dict(state)
    for seed in (2, 3, 3):  # a sparse step (sampling uses the saved generator), head steps
        sa, sb = a.observe(batch(seed)), b.observe(batch(seed))
        assert sa.loss == sb.loss
    x = batch(9).x
    assert torch.equal(a.predict(x), b.predict(x))


def test_the_config_loads():
    from edgecl.config import load_config

    cfg = load_config("configs/cifar100_cps_prompt_reduced.yaml")
    assert [m.name for m in cfg.methods] == ["coda_prompt", "cps_prompt"]
    assert cfg.methods[1].params.phase_split == "steps"
