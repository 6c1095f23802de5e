"""The hookable ViT: weight loading, every hook, and exactness of the fast paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecl.backbones.attention_kernels import resolve_kernel
from edgecl.backbones.registry import build_vit
from edgecl.backbones.vit import (
    AttentionCore,
    VisionTransformer,
    ViTConfig,
    ViTHooks,
    interpolate_pos_embed,
)
from edgecl.backbones.weights import load_into_vit, read_state_dict
from edgecl.errors import WeightsError

SMALL = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


@pytest.fixture
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(SMALL).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def manual_blocks(vit: VisionTransformer, x: torch.Tensor, layers: list[int]) -> torch.Tensor:
    tokens = vit.embed(x)
    for layer in layers:
        tokens, _ = vit.blocks[layer](tokens)
    return vit.norm(tokens)


def test_plain_forward_matches_manual_sequence(vit, images):
    out = vit.forward_features(images)
    assert out.tokens.shape == (3, 17, 32)
    torch.testing.assert_close(out.tokens, manual_blocks(vit, images, [0, 1, 2, 3]))
    assert out.layers_run == (0, 1, 2, 3)


def test_attention_matches_explicit_softmax(vit):
    x = torch.randn(2, 5, 32)
    attn = vit.blocks[0].attn
    out, _ = attn(x)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(out, expected)


def test_attention_kernels_agree_with_the_hand_written_formula():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    bias = torch.tensor([0.0, -1.0, 0.5, 0.0, 2.0])[None, None, None, :]
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + bias, dim=-1)
    for kernel in ("sdpa", "explicit", "recompute"):
        torch.testing.assert_close(AttentionCore(kernel)(q, k, v, bias), weights @ v)
        out = AttentionCore(kernel)(*(t.bfloat16() for t in (q, k, v)), bias.bfloat16())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), weights @ v, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="attention kernel"):
        AttentionCore("flash")


def test_auto_kernel_recomputes_for_reduced_precision_on_cpu_only():
    x = torch.zeros(1, 1, 2, 4)
    assert resolve_kernel("auto", x.bfloat16()) == "recompute"
    assert resolve_kernel("auto", x.half()) == "recompute"
    assert resolve_kernel("auto", x) == "sdpa"
    assert resolve_kernel("explicit", x) == "explicit"


@pytest.mark.parametrize("kernel", ["explicit", "recompute"])
def test_kernel_gradients_match_sdpa_bias_included(kernel):
    grads = {}
    for name in ("sdpa", kernel):
        torch.manual_seed(4)
        q, k, v = (torch.randn(2, 2, 6, 4, dtype=torch.float64, requires_grad=True)
                   for _ in range(3))
        bias = torch.randn(2, 1, 1, 6, dtype=torch.float64, requires_grad=True)
        AttentionCore(name)(q, k, v, bias).pow(2).sum().backward()
        grads[name] = [t.grad for t in (q, k, v, bias)]
    for a, b in zip(grads["sdpa"], grads[kernel], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel", ["auto", "explicit", "recompute"])
def test_fp32_prefix_under_bf16_autocast_trains(vit, images, kernel):
    """A prefix (DualPrompt, CODA-Prompt) is an fp32 parameter while autocast computes the
    projection in bf16: every kernel takes them together, and gradients reach the prefix."""
    block = vit.blocks[0].attn
    block.core = AttentionCore(kernel)
    prefix = tuple(nn.Parameter(torch.randn(3, 2, 32)) for _ in range(2))
    with torch.autocast("cpu", torch.bfloat16):
        out = vit.forward_features(images, ViTHooks(prefix={0: prefix}))
    out.tokens.float().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix)


def test_recompute_keeps_no_probability_matrix_for_backward():
    """(B, heads, N, N) probabilities stay only with ``explicit``; recompute keeps q, k, v."""
    def saved_shapes(kernel: str) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []
        q, k, v = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            AttentionCore(kernel)(q, k, v)
        return shapes
    assert (1, 2, 6, 6) in saved_shapes("explicit")
    assert (1, 2, 6, 6) not in saved_shapes("recompute")


def test_skipped_layers_are_identity(vit, images):
    out = vit.forward_features(images, ViTHooks(skip={1, 3}))
    torch.testing.assert_close(out.tokens, manual_blocks(vit, images, [0, 2]))
    assert out.layers_run == (0, 2)


def test_prompts_are_inserted_after_cls(vit, images):
    prompts = torch.randn(3, 4, 32)
    out = vit.forward_features(images, ViTHooks(prompts=prompts))
    assert out.tokens.shape == (3, 1 + 4 + 16, 32)
    assert out.n_prompts == 4 and out.prompt_tokens.shape == (3, 4, 32)
    tokens = vit.embed(images)
    tokens = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
    for block in vit.blocks:
        tokens, _ = block(tokens)
    torch.testing.assert_close(out.tokens, vit.norm(tokens))


def test_prefix_equals_concatenated_keys_and_values(vit):
    """Prefix K/V of length p change attention exactly as concatenated keys/values would."""
    attn = vit.blocks[0].attn
    x = torch.randn(2, 5, 32)
    pk, pv = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    out, _ = attn(x, prefix=(pk, pv))
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    heads = lambda t: t.view(2, 3, 2, 16).transpose(1, 2)  # noqa: E731
    k_all, v_all = torch.cat([heads(pk), k], 2), torch.cat([heads(pv), v], 2)
    weights = torch.softmax(q @ k_all.transpose(-1, -2) / 4.0, dim=-1)
    expected = attn.proj((weights @ v_all).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(out, expected)
    assert out.shape == x.shape  # token count unchanged


def test_proportional_attention_equals_duplicated_tokens(vit):
    """A token of size 2 attracts attention exactly like two identical copies of it."""
    attn = vit.blocks[0].attn
    x = torch.randn(1, 4, 32)
    duplicated = torch.cat([x, x[:, 3:]], dim=1)  # token 3 twice
    out_dup, _ = attn(duplicated)
    out_sized, _ = attn(x, sizes=torch.tensor([[1.0, 1.0, 1.0, 2.0]]))
    torch.testing.assert_close(out_sized, out_dup[:, :4])


def test_merge_callback_gets_keys_sizes_and_protected_count(vit, images):
    calls = []

    def identity_merge(layer, x, keys, sizes, n_protected):
        calls.append((layer, x.shape[1], keys.shape, sizes.shape, n_protected))
        return x, sizes

    prompts = torch.randn(3, 2, 32)
    out = vit.forward_features(images, ViTHooks(prompts=prompts, merge=identity_merge))
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert calls[0][1:] == (19, torch.Size([3, 19, 16]), torch.Size([3, 19]), 3)
    plain = vit.forward_features(images, ViTHooks(prompts=prompts))
    torch.testing.assert_close(out.tokens, plain.tokens)  # sizes of 1: log 1 = 0


def test_merge_that_drops_tokens_shrinks_the_sequence(vit, images):
    def drop_last_two(layer, x, keys, sizes, n_protected):
        return x[:, :-2], sizes[:, :-2]

    out = vit.forward_features(images, ViTHooks(merge=drop_last_two))
    assert out.tokens.shape[1] == 17 - 2 * 4
    assert out.sizes is not None and out.sizes.shape == (3, 9)


def test_taps_return_block_outputs(vit, images):
    out = vit.forward_features(images, ViTHooks(taps={0, 2}))
    tokens = vit.embed(images)
    t0, _ = vit.blocks[0](tokens)
    torch.testing.assert_close(out.taps[0], t0)
    assert set(out.taps) == {0, 2}


def test_frozen_prefix_runs_without_grad_and_matches(vit, images):
    vit.train()
    out = vit.forward_features(images, ViTHooks(frozen_until=2))
    out.tokens.sum().backward()
    assert all(p.grad is None for p in vit.blocks[0].parameters())
    assert all(p.grad is None for p in vit.patch_embed.parameters())
    assert all(p.grad is not None for p in vit.blocks[2].parameters())
    cached = vit.frozen_prefix(images, 2)
    resumed = vit.forward_from(cached, 2)
    torch.testing.assert_close(resumed.tokens, out.tokens.detach())


def test_wrong_resolution_is_a_clear_error(vit):
    with pytest.raises(ValueError, match="expected 32x32 input"):
        vit.forward_features(torch.randn(1, 3, 64, 64))


def test_pos_embed_interpolation_keeps_cls_and_identity(vit):
    pos = vit.pos_embed.detach()
    torch.testing.assert_close(interpolate_pos_embed(pos, 4), pos)
    bigger = interpolate_pos_embed(pos, 8)
    assert bigger.shape == (1, 65, 32)
    torch.testing.assert_close(bigger[:, 0], pos[:, 0])


@pytest.mark.parametrize("suffix", [".npz", ".pth", ".safetensors"])
def test_checkpoint_formats_round_trip(vit, images, tmp_path, suffix):
    sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    sd["head.weight"] = torch.randn(7, 32)  # a classifier head is dropped on load
    path = tmp_path / f"w{suffix}"
    if suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    elif suffix == ".pth":
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    loaded = build_vit(weights=str(path), num_heads=2)
    assert loaded.cfg.embed_dim == 32 and loaded.cfg.depth == 4 and loaded.cfg.patch_size == 8
    torch.testing.assert_close(loaded.eval()(images), vit(images))
    # position embeddings interpolated to a new resolution
    bigger = build_vit(weights=str(path), img_size=64, num_heads=2)
    assert bigger(torch.randn(1, 3, 64, 64)).shape == (1, 32)


def test_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(WeightsError, match="could not read weights"):
        read_state_dict(bad)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(WeightsError, match="not in timm ViT layout"):
        build_vit(weights=str(foreign))
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


def test_mismatched_weights_are_rejected(vit):
    sd = dict(vit.state_dict())
    del sd["blocks.3.mlp.fc2.bias"]
    with pytest.raises(WeightsError, match="missing"):
        load_into_vit(VisionTransformer(SMALL), sd)


# ---- the real checkpoint ---------------------------------------------------------------
def ncm_accuracy(model, train_x, train_y, test_x, test_y) -> float:
    with torch.no_grad():
        f_train = F.normalize(model(train_x), dim=1)
        f_test = F.normalize(model(test_x), dim=1)
    classes = train_y.unique()
    means = torch.stack([f_train[train_y == c].mean(0) for c in classes])
    pred = classes[torch.cdist(f_test, means).argmin(1)]
    return float((pred == test_y).float().mean()) * 100


def test_real_checkpoint_gives_far_above_chance_features(cifar100_root, vit_tiny_path):
    """Frozen ViT-Ti features separate real CIFAR-100 classes; shuffled weights do not."""
    from edgecl.data import load_dataset
    from edgecl.data.transforms import eval_transform

    train = load_dataset("cifar100", "train", root=cifar100_root)
    test = load_dataset("cifar100", "test", root=cifar100_root)
    classes = np.arange(0, 100, 10)  # 10 classes, chance = 10 %

    def pick(ds, per_class):
        idx = np.concatenate([np.flatnonzero(ds.labels == c)[:per_class] for c in classes])
        tf = eval_transform(224, (0.5,) * 3, (0.5,) * 3)
        return tf(torch.from_numpy(ds.images[idx]), None), torch.from_numpy(ds.labels[idx])

    tr_x, tr_y = pick(train, 10)
    te_x, te_y = pick(test, 10)
    real = build_vit(weights=str(vit_tiny_path)).eval()
    acc_real = ncm_accuracy(real, tr_x, tr_y, te_x, te_y)
    shuffled = build_vit(weights=str(vit_tiny_path)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in shuffled.parameters():
            flat = p.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=g)])
    acc_shuffled = ncm_accuracy(shuffled, tr_x, tr_y, te_x, te_y)
    print(f"NCM accuracy: real {acc_real:.1f}%, shuffled {acc_shuffled:.1f}% (chance 10%)")
    assert acc_real >= 60.0, acc_real
    # Random weights keep some colour statistics (about 3x chance); real features far more.
    assert acc_shuffled <= 40.0, acc_shuffled
    assert acc_real - acc_shuffled >= 30.0


def test_local_weights_are_checksum_verified(tmp_path, vit_tiny_path):
    from edgecl.backbones.registry import backbone_entry

    local = backbone_entry("vit_tiny_patch16_224").weights[0]
    (tmp_path / local.folder).mkdir()
    corrupt = tmp_path / local.folder / local.filename
    data = bytearray(vit_tiny_path.read_bytes())
    data[-100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        build_vit("vit_tiny_patch16_224", data_root=tmp_path, cache=tmp_path / "cache")


def test_missing_weights_offline_say_what_to_do(tmp_path, monkeypatch):
    import edgecl.backbones.pretrained as w

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(w, "download_file", offline)
    with pytest.raises(WeightsError, match="EDGECL_DATA") as err:
        build_vit("vit_tiny_patch16_224", data_root=tmp_path, cache=tmp_path / "cache")
    assert "huggingface.co/timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in str(err.value)
