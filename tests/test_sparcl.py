"""SparCL mechanisms on small tensors: TDM masks and schedule, DGM, DDR, sparse FLOPs, resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecl.data.transforms import eval_transform
from edgecl.efficiency.data_removal import (
    DynamicDataRemoval,
    ForgettingTracker,
    RemovalSchedule,
    least_forgotten,
)
from edgecl.efficiency.gradient_masking import DynamicGradientMask, topk_gradient_mask
from edgecl.efficiency.sparsity import (
    BoundSchedule,
    TaskAwareDynamicMask,
    importance_scores,
    prune_mask,
    regrow_mask,
    sample_without_replacement,
    select_sparse_convs,
)
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.methods.sparcl import SparCL, SparCLParams
from edgecl.metrics.cost import CostMeter
from edgecl.metrics.sparse_flops import (
    LayerFlops,
    SparseFlopCounter,
    conv2d_layer_flops,
    sparse_layer_flops,
)

# ---- TDM -----------------------------------------------------------------------------------


def test_prune_to_lower_bound_by_weight_plus_half_gradient():
    w = torch.tensor([0.1, -0.5, 0.3, 0.05, -0.2, 0.4])
    g = torch.tensor([1.0, 0.0, 0.0, -0.8, 0.0, 0.0])
    imp = importance_scores(w, g, 0.5)  # |w| + 0.5|g|
    assert imp.tolist() == pytest.approx([0.6, 0.5, 0.3, 0.45, 0.2, 0.4])
    assert prune_mask(imp, 0.5).tolist() == [True, True, False, True, False, False]
    # without the gradient term: plain magnitude
    assert prune_mask(importance_scores(w, None, 0.5), 0.5).tolist() == [
        False,
        True,
        True,
        False,
        False,
        True,
    ]
    assert prune_mask(imp, 0.0).all() and not prune_mask(imp, 1.0).any()


def test_random_regrow_count_and_zero_init():
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(100, dtype=torch.bool)
    mask[:10] = True  # sparsity 0.90
    grown_mask, grown = regrow_mask(mask, 0.85, gen)
    assert int(grown_mask.sum()) == 15 and int(grown.sum()) == 5
    assert not (grown & mask).any() and torch.equal(grown_mask, mask | grown)
    same, none = regrow_mask(mask, 0.95, gen)  # already sparser than asked: nothing grows
    assert torch.equal(same, mask) and not none.any()
    # TDM update: keep the top 10 by |w|, grow 5 more at zero
    w = nn.Parameter(torch.linspace(-1, 1, 100)[torch.randperm(100, generator=gen)])
    before = w.detach().clone()
    sched = BoundSchedule(update_every=5, change_epochs=(), lower=(0.90,), upper=(0.85,))
    tdm = TaskAwareDynamicMask({"w": w}, sched, gen, importance_lambda=0.5)
    assert tdm.update(0, {"w": None})
    m = tdm.masks["w"]
    assert int(m.sum()) == 15
    top10 = torch.topk(before.abs(), 10).indices
    assert m[top10].all() and torch.equal(w.detach()[top10], before[top10])
    grown_idx = torch.nonzero(m & (w.detach() == 0)).squeeze(1)
    assert len(grown_idx) == 5  # regrown entries start at 0
    assert (w.detach()[~m] == 0).all()
    assert not tdm.update(3)  # not an update epoch


def test_sampling_without_replacement_is_distinct_and_covers_pool():
    gen = torch.Generator().manual_seed(1)
    for pool, k in ((1000, 7), (10, 9), (50, 0)):
        pick = sample_without_replacement(pool, k, gen)
        assert len(pick) == k and len(pick.unique()) == k and (pick < pool).all()
    counts = torch.zeros(40)
    for _ in range(2000):
        counts[sample_without_replacement(40, 3, gen)] += 1
    assert counts.min() > 100 and counts.max() < 200  # 150 expected per position


def test_schedule_per_epoch_at_075():
    s = BoundSchedule.for_sparsity(0.75)
    assert s.lower == pytest.approx((0.75, 0.76, 0.75))
    assert s.upper == pytest.approx((0.74, 0.75, 0.75))
    expect = {
        0: (0.75, 0.74),
        4: (0.75, 0.74),
        5: (0.76, 0.75),
        44: (0.76, 0.75),
        45: (0.75, 0.75),
        49: (0.75, 0.75),
    }
    for epoch, bounds in expect.items():
        assert s.bounds(epoch) == pytest.approx(bounds)
    assert [e for e in range(50) if s.is_update_epoch(e)] == list(range(0, 50, 5))
    small = s.scaled(0.2)  # 10-epoch tasks
    assert (small.update_every, small.change_epochs) == (1, (1, 9))
    assert small.bounds(0) == pytest.approx((0.75, 0.74))
    assert small.bounds(9) == pytest.approx((0.75, 0.75))


def test_tdm_densities_follow_the_schedule():
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(100, 100, generator=gen))
    tdm = TaskAwareDynamicMask({"w": w}, BoundSchedule.for_sparsity(0.75), gen)
    tdm.initial_prune(0.75)
    assert tdm.densities()["w"] == pytest.approx(0.25)
    tdm.update(0)  # prune 0.75, grow to 0.74
    assert tdm.densities()["w"] == pytest.approx(0.26)
    w.grad = torch.randn(100, 100, generator=gen) * tdm.masks["w"]
    tdm.update(5, {"w": w.grad})  # prune to 0.76, grow to 0.75
    assert tdm.densities()["w"] == pytest.approx(0.25)
    tdm.update(45)  # 0.75 / 0.75: no regrowth, all live weights kept
    assert tdm.densities()["w"] == pytest.approx(0.25)
    assert (w.detach()[~tdm.masks["w"]] == 0).all()


# ---- DGM -----------------------------------------------------------------------------------


def test_dgm_keeps_top_20_percent_of_the_layer():
    g = torch.tensor([0.1, -0.9, 0.3, 0.05, -0.2, 0.4, 0.0, 0.7, -0.6, 0.25])
    assert topk_gradient_mask(g, 0.2).tolist() == [
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    live = torch.tensor([1, 0, 1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    # "layer": 2 of the live entries; "live": round(0.2 * 7) = 1
    assert torch.nonzero(topk_gradient_mask(g, 0.2, live)).squeeze(1).tolist() == [5, 8]
    assert torch.nonzero(topk_gradient_mask(g, 0.2, live, "live")).squeeze(1).tolist() == [8]
    # 95 % weight sparsity: 20 % of the layer is more than is alive, every live entry is kept
    one = torch.zeros(10, dtype=torch.bool)
    one[2] = True
    assert topk_gradient_mask(g, 0.2, one).tolist() == one.tolist()


def test_dgm_refreshes_every_k_batches_and_masks_in_between():
    w = nn.Parameter(torch.zeros(10))
    dgm = DynamicGradientMask({"w": w}, gradient_sparsity=0.8, refresh_every=3)
    weight_mask = {"w": torch.ones(10, dtype=torch.bool)}
    grads = [torch.arange(1.0, 11.0), torch.arange(10.0, 0.0, -1.0)]
    history = []
    for batch in range(7):
        w.grad = grads[batch % 2].clone()
        refreshed = dgm.apply(batch, weight_mask)
        history.append((refreshed, torch.nonzero(w.grad).squeeze(1).tolist()))
    assert [h[0] for h in history] == [True, False, False, True, False, False, True]
    assert history[0][1] == [8, 9]  # top 2 of 1..10
    assert history[1][1] == [8, 9]  # stale mask applied to the new gradient
    assert history[3][1] == [0, 1]  # refreshed on the reversed gradient (batch 3)
    assert history[4][1] == [0, 1]
    assert dgm.refreshes == 3 and dgm.densities()["w"] == pytest.approx(0.2)


# ---- DDR -----------------------------------------------------------------------------------


def test_forgetting_events_and_never_learned():
    tr = ForgettingTracker()
    seq = {10: [1, 0, 1, 0], 11: [1, 1, 1, 1], 12: [0, 0, 0, 0], 13: [0, 1, 1, 1]}
    for step in range(4):
        tr.record(list(seq), [bool(seq[i][step]) for i in seq])
    idx, scores = tr.scores()
    got = dict(zip(idx.tolist(), scores.tolist(), strict=True))
    assert got == {10: 2.0, 11: 0.0, 12: math.inf, 13: 0.0}
    gen = torch.Generator().manual_seed(0)
    assert sorted(least_forgotten(idx, scores, 2, gen).tolist()) == [11, 13]
    assert least_forgotten(idx, scores, 3, gen)[-1] == 10


def test_staged_removal_counts_30_percent_by_epoch_20_in_4_steps():
    sched = RemovalSchedule((5, 10, 15, 20), 0.30)
    assert [sched.count_at(e, 10_000) for e in (5, 10, 15, 20)] == [750] * 4
    assert sched.count_at(0, 10_000) == sched.count_at(7, 10_000) == sched.count_at(25, 10) == 0
    counts = [sched.count_at(e, 100) for e in (5, 10, 15, 20)]
    assert counts == [8, 7, 7, 8] and sum(counts) == 30
    assert sched.scaled(0.2).epochs == (1, 2, 3, 4)


def test_dynamic_data_removal_drops_least_forgotten_and_resets():
    ddr = DynamicDataRemoval(RemovalSchedule((1, 2), 0.5), torch.Generator().manual_seed(0))
    ddr.begin_task()
    indices = np.arange(100, 108)
    assert ddr.begin_epoch(0, indices).tolist() == indices.tolist()
    # 100-103 always right, 104-105 forgotten once, 106-107 never learned
    for ok in ([1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]):
        ddr.record(indices, np.array(ok, dtype=bool))
    kept = ddr.begin_epoch(1, indices)  # stage 1: 2 of 8
    assert len(kept) == 6 and set(indices) - set(kept) <= {100, 101, 102, 103}
    assert len(ddr.tracker) == 0  # statistics reset after a removal
    ddr.record(kept, np.ones(len(kept), dtype=bool))
    kept2 = ddr.begin_epoch(2, indices)
    assert len(kept2) == 4 and set(kept2) <= set(kept)
    assert ddr.begin_epoch(3, indices).tolist() == kept2.tolist()
    ddr.end_task()
    assert ddr.removed_per_task == [4]


# ---- sparse FLOPs ----------------------------------------------------------------------------


def test_sparse_flops_formula_by_hand():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = conv(x)
    flops = conv2d_layer_flops(x, conv.weight, out)
    dense = 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)  # 2 FLOPs per MAC, out elements x (Cin k k)
    assert (flops.forward, flops.input_grad, flops.weight_grad) == (dense, dense, dense)
    assert sparse_layer_flops(flops, 0.25, 0.1) == pytest.approx(2 * dense * 0.25 + dense * 0.1)
    with torch.no_grad():
        assert conv2d_layer_flops(x, conv.weight, conv(x)) == LayerFlops(forward=dense)
    counter = SparseFlopCounter({"c": conv})
    with counter.recording():
        conv(x)
    conv(x)  # outside a recorded step: not counted
    counter.end_step({"c": 0.25}, {"c": 0.1}, optimizer_flops_per_element=2, updated={"c": True})
    t = counter.totals
    assert (t.dense_forward, t.dense_backward) == (dense, 2 * dense)
    assert t.sparse_forward == pytest.approx(0.25 * dense)
    assert t.sparse_backward == pytest.approx(0.25 * dense + 0.1 * dense)
    assert t.sparse_optimizer == pytest.approx(2 * 108 * 0.1) and t.dense_optimizer == 216
    meter_train = {
        "forward": dense + 100,
        "backward": 2 * dense + 50,
        "optimizer": 300,
        "total": 3 * dense + 450,
    }
    s = counter.summary(meter_train)
    assert s["train"]["forward"] == pytest.approx(100 + 0.25 * dense)
    assert s["train"]["backward"] == pytest.approx(50 + 0.35 * dense)
    assert s["train"]["optimizer"] == pytest.approx(300 - 216 + 21.6)
    assert s["train"]["total"] == pytest.approx(
        sum(s["train"][k] for k in ("forward", "backward", "optimizer"))
    )


# ---- the method ------------------------------------------------------------------------------


class TinyConvNet(nn.Module):
    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.stem(x)).mean((2, 3))


def tiny_info(seed: int = 0) -> BenchmarkInfo:
    return BenchmarkInfo(
        num_classes=4,
        n_tasks=2,
        task_classes=[torch.tensor([0, 1]), torch.tensor([2, 3])],
        train_transform=eval_transform(8, (0.5,) * 3, (0.5,) * 3),
        device=torch.device("cpu"),
        meter=CostMeter(),
        seed=seed,
        steps_per_task=[4, 4],
        input_size=8,
    )


def make_batches(n: int, task: int, seed: int = 0) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    tf = eval_transform(8, (0.5,) * 3, (0.5,) * 3)
    batches = []
    for b in range(n):
        raw = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8, generator=gen)
        y = torch.randint(2 * task, 2 * task + 2, (4,), generator=gen)
        batches.append(Batch(tf(raw), y, raw, torch.arange(4 * b, 4 * b + 4), task))
    return batches


def make_sparcl(**overrides) -> SparCL:
    params = SparCLParams(
        **{
            "buffer_size": 8,
            "replay_batch_size": 4,
            "sparsity": 0.5,
            "schedule_scale": 0.2,
            "dgm_refresh_every": 2,
            **overrides,
        }
    )
    torch.manual_seed(0)
    method = SparCL(params, OptimConfig(name="sgd", lr=0.1))
    method.setup(TinyConvNet(), tiny_info())
    return method


def run_epoch(method: SparCL, task: int, epoch: int, batches: list[Batch]) -> None:
    info = TaskInfo(task, torch.tensor([2 * task, 2 * task + 1]), 4 * len(batches), 99)
    method.begin_epoch(info, epoch, np.arange(4 * len(batches)))
    for b in batches:
        b.epoch = epoch
        method.observe(b)
        for name, w in method.sparse_params.items():
            assert (w.detach()[~method.masking.masks[name]] == 0).all()  # after every step


def test_only_the_residual_3x3_convs_are_sparse():
    method = make_sparcl()
    assert list(method.sparse_params) == ["layer1.0"]
    assert select_sparse_convs(TinyConvNet(), prefixes=("stem",)).keys() == {"stem"}
    assert method.masking.overall_sparsity() == pytest.approx(0.5)


def test_mask_applied_after_every_step_and_flops_below_dense():
    method = make_sparcl()
    method.begin_task(TaskInfo(0, torch.tensor([0, 1]), 8, 4))
    with method.meter.active():
        for epoch in range(3):
            run_epoch(method, 0, epoch, make_batches(2, 0, seed=epoch))
    res = method.extra_results()["sparse_flops"]
    dense = method.meter.train_flops()["total"]
    assert res["dense_executed"]["total"] == dense
    assert 0 < res["train"]["total"] < dense
    assert res["mask_updates"] == 3 and res["gradient_mask_refreshes"] == 3
    assert res["steps"] == 6


def test_sparcl_resume_is_exact():
    batches = make_batches(2, 0)
    later = make_batches(2, 0, seed=5)
    a = make_sparcl()
    task = TaskInfo(0, torch.tensor([0, 1]), 8, 4)
    a.begin_task(task)
    run_epoch(a, 0, 0, batches)
    state = copy.deepcopy(a.state_dict())
    run_epoch(a, 0, 1, copy.deepcopy(later))
    b = make_sparcl()
    b.begin_task(task)
    b.load_state_dict(state)
    run_epoch(b, 0, 1, copy.deepcopy(later))
    for (name, pa), pb in zip(a.net.named_parameters(), b.net.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.flop_counter.totals == b.flop_counter.totals  # the meter is the runner's to restore
    assert a.masking.masks.keys() == b.masking.masks.keys()
    assert all(torch.equal(m, b.masking.masks[n]) for n, m in a.masking.masks.items())
    assert torch.equal(a.buffer.images, b.buffer.images)


def test_sparcl_er_variant_and_switches():
    er = make_sparcl(replay="er", dgm=False, ddr=False, tdm=False)
    assert er.params.alpha == 0 and er.params.beta == 1.0 and not er.stores_logits
    assert er.grad_masking is None and er.data_removal is None
    er.begin_task(TaskInfo(0, torch.tensor([0, 1]), 8, 4))
    before = {n: m.clone() for n, m in er.masking.masks.items()}
    run_epoch(er, 0, 0, make_batches(2, 0))
    assert all(torch.equal(before[n], m) for n, m in er.masking.masks.items())  # static mask
    assert er.buffer.logits is None
    with pytest.raises(ValueError):
        SparCLParams(lower_bounds=[0.8])


# ---- real data: the runner drops removed examples as steps -----------------------------------


def test_sparcl_on_real_data_removes_steps(cifar100_root, tmp_path):
    from edgecl.config import RunConfig
    from edgecl.runner import run

    cfg = RunConfig(
        **{
            "name": "sparcl-smoke",
            "seed": 3,
            "threads": 1,
            "data": {
                "dataset": "cifar100",
                "root": str(cifar100_root),
                "n_tasks": 2,
                "class_order": [3, 1, 4, 5],
                "train_per_class": 8,
                "test_per_class": 2,
            },
            "backbone": {"name": "resnet18_cifar", "weights": "random", "img_size": 8},
            "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 16},
            "optim": {"name": "sgd", "lr": 0.03},
            "methods": [
                {
                    "name": "sparcl",
                    "buffer_size": 8,
                    "replay_batch_size": 4,
                    "sparsity": 0.9,
                    "ddr_fraction": 0.5,
                    "ddr_epochs": [1, 2],
                    "tdm_update_every": 1,
                    "tdm_change_epochs": [1, 2],
                }
            ],
        }
    )
    threads = torch.get_num_threads()
    try:
        (res,) = run(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)  # the run sets 1 thread; leave the session as it was
    # 16 examples per task, batch 8: 2 + (12 left) 2 + (8 left) 1 steps instead of 6
    assert [p.train_steps for p in res.per_task] == [5, 5]
    # the RigL-style count lands in results.json, below the FLOPs the dense kernels executed
    sparse = res.cost.flops.sparse
    assert sparse is not None and sparse["accounting"] == "rigl" and sparse["steps"] == 10
    assert 0 < sparse["train"]["total"] < res.cost.flops.train.total
    assert (
        json.loads((Path(tmp_path) / "run" / "sparcl" / "results.json").read_text())["status"]
        == "completed"
    )
