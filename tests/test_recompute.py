"""Activation recomputation (edgecl/backbones/recompute.py, ``train.recompute``)."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgecl.backbones.recompute import recomputed
from edgecl.backbones.resnet_cifar import build_cifar_resnet
from edgecl.backbones.vit import VisionTransformer, ViTConfig, ViTHooks
from edgecl.config import TrainConfig
from edgecl.errors import ConfigError
from edgecl.metrics.cost import CostMeter, StepMemory
from edgecl.runner.build import set_recompute

SMALL = ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)


def test_hand_computed_gradients_and_only_the_input_is_kept():
    # f(x) = w * x^2, summed: df/dx = 2 w x, df/dw = sum x^2
    w = nn.Parameter(torch.tensor(3.0))
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    mem = StepMemory({w.untyped_storage().data_ptr()})
    with torch.autograd.graph.saved_tensors_hooks(mem.pack, lambda t: t):
        y = recomputed(lambda t: w * t * t, (x,), [w]).sum()
    assert mem.saved_bytes == x.untyped_storage().nbytes()  # x only, not x * x
    y.backward()
    assert torch.equal(x.grad, torch.tensor([6.0, -12.0]))
    assert w.grad.item() == 5.0


def test_a_parameter_that_needs_no_gradient_gets_none():
    w = torch.tensor(2.0)  # not a parameter that trains
    x = torch.tensor([1.0, 3.0], requires_grad=True)
    (grad,) = torch.autograd.grad(recomputed(lambda t: w * t, (x,), [w]).sum(), [x])
    assert torch.equal(grad, torch.tensor([2.0, 2.0]))


def _step(vit: VisionTransformer, mode: str, frozen: bool, dtype: torch.dtype):
    vit = copy.deepcopy(vit)
    vit.set_recompute(mode)
    for p in vit.parameters():
        p.requires_grad_(not frozen)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    prompts = torch.randn(4, 2, 48, generator=g).requires_grad_()
    key, value = (torch.randn(4, 3, 48, generator=g).requires_grad_() for _ in range(2))
    meter = CostMeter()
    meter.watch_parameters([vit])
    with meter.active(), meter.training_step() as mem, \
            torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
        hooks = ViTHooks(prompts=prompts, prefix={1: (2 * key, 2 * value)})
        loss = vit.forward_features(images, hooks).cls.float().pow(2).sum()
        with meter.phase("backward"):
            wrt = [prompts, key, value, *(p for p in vit.parameters() if p.requires_grad)]
            grads = torch.autograd.grad(loss, wrt)
    return grads, dict(meter.flops), mem.saved_bytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frozen", [True, False])
def test_vit_gradients_are_unchanged_and_less_is_saved(dtype, frozen):
    vit = VisionTransformer(SMALL)
    base, base_flops, base_saved = _step(vit, "none", frozen, dtype)
    saved = {}
    for mode in ("mlp", "all"):
        grads, flops, saved[mode] = _step(vit, mode, frozen, dtype)
        assert len(grads) == len(base)
        for a, b in zip(grads, base, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert flops["forward"] == base_flops["forward"]
    assert saved["all"] < saved["mlp"] < base_saved


def test_recomputed_forward_flops_are_booked_to_backward():
    vit = VisionTransformer(SMALL)
    _, none, _ = _step(vit, "none", True, torch.float32)
    _, mlp, _ = _step(vit, "mlp", True, torch.float32)
    _, every, _ = _step(vit, "all", True, torch.float32)
    rows = 4 * (1 + 2 + 16)  # batch x (CLS, 2 prompts, 4x4 patches)
    fc1 = 2 * rows * 48 * 192
    qkv, proj = 2 * rows * 48 * 144, 2 * rows * 48 * 48
    # q kᵀ and p v per layer; layer 1 attends over 3 prefix keys as well
    core = sum(2 * 2 * 4 * 3 * 19 * keys * 16 for keys in (19, 22, 19))
    assert mlp["backward"] - none["backward"] == 3 * fc1
    assert every["backward"] - none["backward"] == 3 * (fc1 + qkv + proj) + core


def test_merging_blocks_recompute_too_and_the_significance_block_keeps_its_path():
    vit = VisionTransformer(SMALL)
    images = torch.randn(2, 3, 32, 32)

    def merge(layer, x, keys, sizes, n_protected):  # merge the two last tokens
        x = torch.cat([x[:, :-2], x[:, -2:].mean(dim=1, keepdim=True)], dim=1)
        return x, torch.cat([sizes[:, :-2], sizes[:, -2:].sum(dim=1, keepdim=True)], dim=1)

    outs, saved = {}, {}
    for mode in ("none", "mlp", "all"):
        model = copy.deepcopy(vit)
        model.set_recompute(mode)
        prompts = torch.ones(2, 1, 48, requires_grad=True)
        mem = StepMemory({p.untyped_storage().data_ptr() for p in model.parameters()})
        with torch.autograd.graph.saved_tensors_hooks(mem.pack, lambda t: t):
            out = model.forward_features(
                images, ViTHooks(prompts=prompts, merge=merge, significance_layer=1))
        out.cls.sum().backward()
        outs[mode], saved[mode] = (out.tokens, out.significance, prompts.grad), mem.saved_bytes
    for mode in ("mlp", "all"):
        for a, b in zip(outs[mode], outs["none"], strict=True):
            torch.testing.assert_close(a, b)
    assert saved["all"] < saved["mlp"] < saved["none"]


def test_no_grad_and_unknown_modes():
    vit = VisionTransformer(SMALL)
    vit.set_recompute("all")
    with torch.no_grad():
        vit(torch.randn(1, 3, 32, 32))  # nothing to keep: the plain path
    with pytest.raises(ValueError, match="recompute must be one of"):
        vit.set_recompute("everything")
    with pytest.raises(ValidationError):
        TrainConfig(recompute="everything")
    assert TrainConfig().recompute == "none"


def test_recompute_needs_a_vit_backbone():
    set_recompute(build_cifar_resnet(20, None, None), "none")
    with pytest.raises(ConfigError, match="train.recompute: mlp needs a ViT backbone"):
        set_recompute(build_cifar_resnet(20, None, None), "mlp")
    with pytest.raises(ConfigError, match="^recompute: all needs a ViT backbone"):
        set_recompute(build_cifar_resnet(20, None, None), "all", key="recompute")


def test_trainable_blocks_over_a_frozen_input_recompute_too():
    # latent replay: the input to the trainable blocks is a stored latent (no gradient)
    vit = VisionTransformer(SMALL)
    latent = torch.randn(2, 17, 48)
    grads, saved = {}, {}
    for mode in ("none", "all"):
        model = copy.deepcopy(vit)
        model.set_recompute(mode)
        mem = StepMemory({p.untyped_storage().data_ptr() for p in model.parameters()})
        with torch.autograd.graph.saved_tensors_hooks(mem.pack, lambda t: t):
            x = latent
            for block in model.blocks:
                x, _ = block(x)
        x[:, 0].pow(2).sum().backward()
        grads[mode] = [p.grad for p in model.blocks.parameters()]
        saved[mode] = mem.saved_bytes
    for a, b in zip(grads["all"], grads["none"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert saved["all"] < saved["none"]


def test_a_trainable_prefix_over_a_frozen_input_recomputes_its_block():
    # CODA-Prompt's block 0: frozen weights and input, only the prefix takes a gradient; one
    # block, so what it saves is block 0's alone
    vit = VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=1,
                                      num_heads=3))
    for p in vit.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 32, 32, generator=g)
    prefix = [torch.randn(2, 3, 48, generator=g) for _ in range(2)]
    grads, saved = {}, {}
    for mode in ("none", "mlp", "all"):
        model = copy.deepcopy(vit)
        model.set_recompute(mode)
        key, value = (t.clone().requires_grad_() for t in prefix)
        mem = StepMemory({p.untyped_storage().data_ptr() for p in model.parameters()})
        with torch.autograd.graph.saved_tensors_hooks(mem.pack, lambda t: t):
            out = model.forward_features(images, ViTHooks(prefix={0: (key, value)}))
        grads[mode] = torch.autograd.grad(out.cls.pow(2).sum(), [key, value])
        saved[mode] = mem.saved_bytes
    for mode in ("mlp", "all"):
        for a, b in zip(grads[mode], grads["none"], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert saved["all"] < saved["mlp"] < saved["none"]
