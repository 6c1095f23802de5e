"""Accuracy summaries, FLOP counting and saved-for-backward memory on hand-checked cases."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from edgecl.backbones.vit import VisionTransformer, ViTConfig, ViTHooks
from edgecl.metrics.accuracy import (
    AccuracyMatrix,
    class_il_predictions,
    percent_correct,
    task_il_predictions,
)
from edgecl.metrics.cost import CostMeter
from edgecl.metrics.devices import PROFILES

aten = torch.ops.aten


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, q, k, v)


# torch's FlopCounterMode has no formula for the CPU flash-attention kernels; give it torch's
# own sdpa formulas so the reference counts attention as our meter does.
for op, fn in [
    (aten._scaled_dot_product_flash_attention_for_cpu, _sdpa_cpu_flops),
    (aten._scaled_dot_product_flash_attention_for_cpu_backward, _sdpa_cpu_backward_flops),
]:
    with contextlib.suppress(RuntimeError):  # already registered (newer torch)
        register_flop_formula(op)(fn)


def test_accuracy_summaries_hand_computed():
    m = AccuracyMatrix()
    for row in ([90.0], [60.0, 80.0], [50.0, 70.0, 85.0]):
        m.add_row(row)
    assert m.final_average() == pytest.approx((50 + 70 + 85) / 3)
    assert m.average_incremental() == pytest.approx((90 + 70 + (50 + 70 + 85) / 3) / 3)
    assert m.forgetting() == pytest.approx(((90 - 50) + (80 - 70)) / 2)
    assert m.bwt() == pytest.approx(((50 - 90) + (70 - 80)) / 2)
    with pytest.raises(ValueError, match="needs 4 task accuracies"):
        m.add_row([1.0])


def test_single_task_has_no_forgetting():
    m = AccuracyMatrix()
    m.add_row([75.0])
    assert m.forgetting() == 0.0 and m.bwt() == 0.0


def test_class_il_and_task_il_predictions():
    logits = torch.tensor([[0.1, 0.9, 0.5, 2.0], [3.0, 0.0, 1.0, 0.0]])
    assert class_il_predictions(logits, 3).tolist() == [1, 0]  # class 3 not seen yet
    assert task_il_predictions(logits, torch.tensor([2, 3])).tolist() == [3, 2]
    assert percent_correct(torch.tensor([1, 2]), torch.tensor([1, 0])) == 50.0


def count_both(model_fn):
    meter = CostMeter()
    with meter.active(), meter.phase("forward"):
        model_fn()
    ours = meter.flops["forward"] + meter.flops["backward"]
    with FlopCounterMode(display=False) as ref:
        model_fn()
    return ours, ref.get_total_flops(), meter


SMALL = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)


@pytest.mark.parametrize(
    "hooks_kw, frozen",
    [
        ({}, False),  # full finetune
        ({"skip": {1, 2}}, False),  # skipped layers cost nothing
        ({"frozen_until": 2}, False),  # frozen prefix: no backward there
        ({"prompts": True}, True),  # frozen backbone, trainable prompts (input grads only)
    ],
)
def test_flops_match_flop_counter_mode(hooks_kw, frozen):
    torch.manual_seed(0)
    vit = VisionTransformer(SMALL)
    vit.requires_grad_(not frozen)
    x = torch.randn(2, 3, 32, 32)
    prompts = nn.Parameter(torch.randn(2, 3, 32)) if hooks_kw.pop("prompts", False) else None

    def step():
        out = vit.forward_features(x, ViTHooks(prompts=prompts, **hooks_kw))
        out.tokens.sum().backward()

    ours, ref, meter = count_both(step)
    assert ours == ref
    assert meter.flops["backward"] > 0


@pytest.mark.parametrize("kernel", ["explicit", "recompute"])
def test_flops_of_the_matmul_attention_kernels_match_flop_counter_mode(kernel):
    """Plain-matmul attention (bf16 on a CPU): ``recompute`` repeats q kᵀ in backward and
    ``explicit`` does not; the meter books each as FlopCounterMode sees it."""
    torch.manual_seed(0)
    vit = VisionTransformer(dataclasses.replace(SMALL, attention_kernel=kernel)).bfloat16()
    x = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)

    def step():
        vit.forward_features(x).tokens.float().sum().backward()

    ours, ref, _ = count_both(step)
    assert ours == ref


def test_flops_of_a_linear_layer_by_hand():
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    meter = CostMeter()
    with meter.active(), meter.phase("forward"):
        lin(x).sum().backward()
    assert meter.flops["forward"] == 2 * 5 * 4 * 3
    assert meter.flops["backward"] == 2 * (2 * 5 * 4 * 3)  # input grad + weight grad
    lin.weight.requires_grad_(False)
    meter = CostMeter()
    with meter.active(), meter.phase("eval"), torch.no_grad():
        lin(x)
    assert meter.flops["eval"] == 2 * 5 * 4 * 3 and meter.flops["backward"] == 0


def test_fewer_tokens_cost_fewer_flops():
    vit = VisionTransformer(SMALL)

    def merged(layer, x, keys, sizes, n_protected):
        return x[:, :-3], sizes[:, :-3]

    counts = []
    for hooks in (ViTHooks(), ViTHooks(merge=merged)):
        meter = CostMeter()
        with meter.active(), meter.phase("eval"), torch.no_grad():
            vit.forward_features(torch.randn(1, 3, 32, 32), hooks)
        counts.append(meter.flops["eval"])
    assert counts[1] < counts[0]


def test_saved_for_backward_bytes_hand_computed():
    meter = CostMeter()
    w = nn.Parameter(torch.randn(8, 8))
    meter.watch_parameters([nn.ParameterList([w])])
    x = torch.randn(4, 8, requires_grad=True)
    with meter.training_step() as mem:
        y = x @ w  # saves x (4*8 floats) and w (a parameter: not counted)
        z = torch.relu(y)  # saves its output (4*8 floats)
        z.sum().backward()
    assert mem.saved_bytes == 2 * 4 * 8 * 4
    assert meter.saved_bytes_per_step == [256]


def test_phase_timer_accumulates_and_rejects_unknown():
    meter = CostMeter()
    with meter.phase("data"):
        pass
    assert meter.seconds["data"] >= 0.0
    with pytest.raises(ValueError, match="unknown phase"), meter.phase("lunch"):
        pass


def test_nested_phases_are_exclusive_and_book_their_own_flops():
    import time

    meter = CostMeter()
    lin = torch.nn.Linear(4, 3)
    with meter.active(), meter.phase("forward"):
        time.sleep(0.02)
        with meter.phase("prefix"), torch.no_grad():
            time.sleep(0.05)
            lin(torch.randn(2, 4))
        lin(torch.randn(2, 4))
    assert 0.05 <= meter.seconds["prefix"] < 0.065
    assert 0.02 <= meter.seconds["forward"] < 0.035  # the nested 0.05 s is not counted twice
    assert meter.flops["prefix"] == meter.flops["forward"] == 2 * 2 * 4 * 3
    train = meter.train_flops()
    assert train["total"] == train["forward"] + train["prefix"] + train["backward"]


def test_device_profile_estimate_by_hand():
    nano = PROFILES["jetson_nano"]
    est = nano.estimate(flops=nano.sustained_flops, dram_bytes=1e9)
    assert est["compute_seconds"] == pytest.approx(1.0)
    assert est["joules"] == pytest.approx(nano.load_watts + 1e9 * nano.dram_joules_per_byte)
