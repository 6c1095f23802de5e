"""ToMe bipartite soft matching with protected tokens, size tracking, and AToM's schedule."""

from __future__ import annotations

import pytest
import torch

from edgecl.backbones.vit import Attention, VisionTransformer, ViTConfig, ViTHooks
from edgecl.efficiency.token_merging import (
    TokenMerger,
    atom_schedule,
    bipartite_soft_matching,
    matching_flops,
    merge_protected,
    removed_before,
)

pytestmark = pytest.mark.usefixtures("one_thread")


TINY_VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


def test_atom_schedule_vit_12_layers():
    # n_l = min(floor(8 (l-1) / 11), 8), l = 1..12
    assert atom_schedule(12, 8) == [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8]
    assert atom_schedule(12, 6) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6]
    assert atom_schedule(12, 4) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]
    assert atom_schedule(12, 0) == [0] * 12
    assert atom_schedule(1, 8) == [0]
    assert removed_before(atom_schedule(12, 8)) == [0, 0, 0, 1, 3, 5, 8, 12, 17, 22, 28, 35]
    with pytest.raises(ValueError):
        atom_schedule(0, 8)


# One protected token, then eligible tokens A0 B0 A1 B1 A2 B2 (A: even, B: odd positions).
KEYS = torch.tensor([[
    [1.0, 0.0],   # protected (would match B0 perfectly)
    [1.0, 0.1],   # A0 → B0, cos 0.995
    [1.0, 0.0],   # B0
    [0.5, 1.0],   # A1 → B1, cos 0.894
    [0.0, 1.0],   # B1
    [-1.0, 1.0],  # A2 → B1 and B2 tie at cos 0.707: the lower B index (B1) wins
    [-1.0, 0.0],  # B2
]])
X = torch.tensor([[[100.0, -100.0], [1.0, 1.0], [3.0, 3.0], [5.0, 5.0], [7.0, 7.0],
                   [9.0, 9.0], [11.0, 11.0]]])
SIZES = torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 3.0]])


def test_the_most_similar_pairs_merge_by_size_weighted_average():
    plan = bipartite_soft_matching(KEYS[:, 1:], r=2)
    assert plan is not None and plan.n_out == 4
    assert plan.src.tolist() == [[0, 1]] and plan.dst.tolist() == [[0, 1]]  # A0→B0, A1→B1
    x, sizes, _ = merge_protected(X, KEYS, SIZES, n_protected=1, r=2)
    # kept order: protected, B0 (+A0), B1 (+A1), A2, B2
    expected = torch.tensor([[100.0, -100.0], [(1 * 1 + 3 * 2) / 3] * 2, [6.0, 6.0],
                             [9.0, 9.0], [11.0, 11.0]])
    assert torch.allclose(x[0], expected)
    assert sizes.tolist() == [[1.0, 3.0, 2.0, 1.0, 3.0]]
    assert torch.equal(x[0, 0], X[0, 0])  # the protected token passes bit for bit


def test_r_is_capped_at_half_the_eligible_tokens_and_ties_go_low():
    x, sizes, plan = merge_protected(X, KEYS, SIZES, n_protected=1, r=10)
    assert plan is not None and plan.n_out == 3
    assert plan.dst.tolist() == [[0, 1, 1]]  # A2 joins B1 (tie with B2)
    assert torch.allclose(x[0, 2], torch.tensor([(5.0 + 7.0 + 9.0) / 3] * 2))
    assert sizes.tolist() == [[1.0, 3.0, 3.0, 3.0]]
    assert sizes.sum() == SIZES.sum()


def test_protected_tokens_are_never_merged_even_when_identical():
    keys = torch.ones(1, 5, 4)  # every token identical
    x = torch.arange(10.0).view(1, 5, 2)
    out, sizes, _ = merge_protected(x, keys, torch.ones(1, 5), n_protected=3, r=5)
    assert torch.equal(out[:, :3], x[:, :3]) and sizes[0, :3].tolist() == [1.0, 1.0, 1.0]
    assert out.shape[1] == 4  # 2 eligible → 1 merge
    assert merge_protected(x, keys, torch.ones(1, 5), n_protected=4, r=1)[2] is None


def test_merging_is_per_sample_and_vectorised():
    keys = torch.cat([KEYS, KEYS.flip(1)], dim=0)
    x, sizes = X.expand(2, -1, -1), SIZES.expand(2, -1)
    out, out_sizes, plan = merge_protected(x, keys, sizes, n_protected=1, r=2)
    assert out.shape == (2, 5, 2)
    first, _, _ = merge_protected(X, KEYS, SIZES, 1, 2)
    assert torch.equal(out[:1], first)
    assert out_sizes.sum(1).tolist() == [SIZES.sum().item()] * 2


def test_merge_is_differentiable_into_every_merged_token():
    x = X.clone().requires_grad_(True)
    out, _, _ = merge_protected(x, KEYS, SIZES, n_protected=1, r=2)
    out[0, 1].sum().backward()  # the B0 slot holds A0 (size 1) and B0 (size 2)
    assert torch.allclose(x.grad[0, :, 0], torch.tensor([0, 1 / 3, 2 / 3, 0, 0, 0, 0]))


def test_proportional_attention_sees_a_size_two_token_as_two_copies():
    torch.manual_seed(0)
    attn = Attention(TINY_VIT).eval()
    tokens = torch.randn(1, 4, 32)
    duplicated = torch.cat([tokens, tokens[:, 3:]], dim=1)  # token 3 twice
    with torch.no_grad():
        full, _ = attn(duplicated)
        merged, _ = attn(tokens, sizes=torch.tensor([[1.0, 1.0, 1.0, 2.0]]))
    assert torch.allclose(full[:, :4], merged, atol=1e-5)


def test_token_merger_in_the_vit_follows_the_schedule():
    torch.manual_seed(0)
    vit = VisionTransformer(TINY_VIT).eval()
    flops: list[int] = []
    merger = TokenMerger.atom(4, 2, on_flops=flops.append)
    assert merger.merges == [0, 0, 1, 2]
    prompts = torch.randn(2, 3, 32)
    out = vit.forward_features(torch.randn(2, 3, 32, 32), ViTHooks(prompts=prompts, merge=merger))
    # 1 CLS + 3 prompts + 16 patches = 20 tokens, minus 1 + 2 merges
    assert out.tokens.shape == (2, 17, 32) and out.n_prompts == 3
    assert out.sizes is not None and out.sizes.sum(1).tolist() == [20.0, 20.0]
    assert out.sizes[:, :4].eq(1).all()  # CLS and prompts
    assert merger.removed == {2: 1, 3: 2}
    # similarity matmuls: 16 eligible (8 A x 8 B), then 15 (8 x 7); head dim 16
    assert flops == [matching_flops(2, 16, 16), matching_flops(2, 15, 16)]
    assert flops[0] == 2 * 2 * 8 * 8 * 16
