"""DER++, online EWC and LwF: their losses against hand computations on tiny models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecl.data.transforms import eval_transform
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo, mask_logits
from edgecl.methods.derpp import DERpp, DERppParams
from edgecl.methods.ewc import (
    OnlineEWC,
    OnlineEWCParams,
    ewc_penalty,
    online_fisher_update,
)
from edgecl.methods.lwf import LwF, LwFParams, soft_target_loss
from edgecl.metrics.cost import CostMeter

TF = eval_transform(1, (0.5,) * 3, (0.5,) * 3)  # 1x1 "images": x = (raw / 255 - 0.5) / 0.5


class Flat(nn.Module):
    """Backbone of the tiny models: (B, 3, 1, 1) -> (B, 3), no parameters."""

    feature_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def info(seed: int = 0) -> BenchmarkInfo:
    return BenchmarkInfo(
        num_classes=4,
        n_tasks=2,
        task_classes=[torch.tensor([0, 1]), torch.tensor([2, 3])],
        train_transform=TF,
        device=torch.device("cpu"),
        meter=CostMeter(),
        seed=seed,
        steps_per_task=[1, 1],
        input_size=1,
    )


def task(t: int, n_train: int = 2) -> TaskInfo:
    return TaskInfo(t, torch.tensor([2 * t, 2 * t + 1]), n_train, 1)


def batch(raw: list[list[int]], y: list[int], t: int, epoch: int = 0) -> Batch:
    r = torch.tensor(raw, dtype=torch.uint8).view(-1, 1, 1, 3)
    return Batch(TF(r), torch.tensor(y), r, torch.arange(len(y)), t, epoch)


def build(cls, params, lr: float = 0.1):
    torch.manual_seed(0)
    method = cls(params, OptimConfig(name="sgd", lr=lr))
    method.setup(Flat(), info())
    return method


# ---- EWC -----------------------------------------------------------------------------------


def test_ewc_penalty_on_a_three_parameter_model():
    theta = {"p": torch.tensor([1.0, 2.0, 3.0])}
    anchor = {"p": torch.tensor([0.0, 2.0, 1.0])}
    fisher = {"p": torch.tensor([0.5, 1.0, 2.0])}
    # sum F (theta - theta*)^2 = 0.5 * 1 + 1 * 0 + 2 * 4 = 8.5
    assert float(ewc_penalty(theta, anchor, fisher, 1.0)) == pytest.approx(8.5)
    reference = build(OnlineEWC, OnlineEWCParams(ewc_lambda=10.0))
    half = build(OnlineEWC, OnlineEWCParams(ewc_lambda=10.0, penalty_form="half"))
    assert reference.coefficient * 8.5 == pytest.approx(85.0)  # mammoth: lambda * sum
    assert half.coefficient * 8.5 == pytest.approx(42.5)  # EWC paper: lambda / 2 * sum


def test_online_fisher_update_with_gamma():
    f1 = {"p": torch.tensor([1.0, 2.0, 3.0])}
    f2 = {"p": torch.tensor([0.5, 0.5, 0.5])}
    first = online_fisher_update(None, f1, 0.9)
    assert first["p"].tolist() == [1.0, 2.0, 3.0] and first["p"] is not f1["p"]
    assert online_fisher_update(first, f2, 0.9)["p"].tolist() == pytest.approx([1.4, 2.3, 3.2])


def hand_fisher(head: nn.Linear, xs: torch.Tensor, ys: torch.Tensor, n_seen: int):
    """mean_i p(y_i|x_i) * g_i^2 with g = d log p(y|x) / d(W, b) of a linear head."""
    fw, fb = torch.zeros_like(head.weight), torch.zeros_like(head.bias)
    for x, y in zip(xs, ys, strict=True):
        logits = (head.weight @ x + head.bias)[:n_seen]
        p = torch.softmax(logits, 0)
        e = torch.zeros(n_seen)
        e[y] = 1.0
        delta = torch.zeros(head.out_features)
        delta[:n_seen] = e - p
        fw += p[y] * torch.outer(delta, x) ** 2
        fb += p[y] * delta**2
    return fw / len(xs), fb / len(xs)


def test_ewc_fisher_by_hand_and_online_decay():
    ewc = build(OnlineEWC, OnlineEWCParams(ewc_lambda=2.0, gamma=0.5))
    head = ewc.net.head
    b0 = batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0)
    ewc.begin_task(task(0))
    ewc.observe(b0)  # the examples are cached
    ewc.end_task(task(0))
    fw, fb = hand_fisher(head, b0.x.flatten(1), b0.y, 2)  # at the task's final weights
    assert torch.allclose(ewc.fisher["head.weight"], fw, atol=1e-6)
    assert torch.allclose(ewc.fisher["head.bias"], fb, atol=1e-6)
    assert ewc.fisher["head.weight"][2:].abs().sum() == 0  # unseen classes: no gradient
    b1 = batch([[0, 0, 255], [128, 64, 32]], [2, 3], 1)
    ewc.begin_task(task(1))
    ewc.observe(b1)
    ewc.end_task(task(1))
    fw1, fb1 = hand_fisher(head, b1.x.flatten(1), b1.y, 4)
    assert torch.allclose(ewc.fisher["head.weight"], 0.5 * fw + fw1, atol=1e-6)
    assert torch.allclose(ewc.fisher["head.bias"], 0.5 * fb + fb1, atol=1e-6)


def test_ewc_observe_adds_the_penalty():
    ewc = build(OnlineEWC, OnlineEWCParams(ewc_lambda=3.0), lr=0.5)
    ewc.begin_task(task(0))
    ewc.observe(batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0))
    ewc.end_task(task(0))
    ewc.begin_task(task(1))
    b1 = batch([[0, 0, 255], [128, 64, 32]], [2, 3], 1)
    ewc.observe(b1)  # moves the weights away from the anchor
    params = dict(ewc.net.named_parameters())
    expected_pen = 3.0 * sum(
        float((ewc.fisher[n] * (p.detach() - ewc.anchor[n]) ** 2).sum()) for n, p in params.items()
    )
    logits = ewc.net(b1.x).detach()
    expected_ce = float(F.cross_entropy(mask_logits(logits, 4), b1.y))
    stats = ewc.observe(b1)
    assert expected_pen > 0
    assert stats.extra["penalty"] == pytest.approx(expected_pen, rel=1e-5)
    assert stats.loss == pytest.approx(expected_ce + expected_pen, rel=1e-5)


def test_ewc_state_round_trip():
    ewc = build(OnlineEWC, OnlineEWCParams(fisher_samples=1))
    ewc.begin_task(task(0))
    ewc.observe(batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0))
    ewc.end_task(task(0))
    other = build(OnlineEWC, OnlineEWCParams(fisher_samples=1))
    other.begin_task(task(0))
    other.load_state_dict(copy.deepcopy(ewc.state_dict()))
    assert all(torch.equal(other.fisher[n], f) for n, f in ewc.fisher.items())
    assert torch.equal(other.cache.images, ewc.cache.images) and len(other.cache) == 1


# ---- LwF -----------------------------------------------------------------------------------


def test_lwf_soft_target_loss_with_t2_by_hand():
    old = torch.tensor([[2.0, 0.0]])
    # targets softmax([1, 0]) = [e, 1] / (e + 1); new logits equal: log softmax = log 1/2
    assert float(soft_target_loss(torch.tensor([[1.0, 1.0]]), old, 2.0)) == pytest.approx(
        math.log(2)
    )
    t = math.e / (math.e + 1)
    want = -(t * math.log(1 / (1 + math.e)) + (1 - t) * math.log(math.e / (1 + math.e)))
    got = float(soft_target_loss(torch.tensor([[0.0, 2.0]]), old, 2.0))
    assert got == pytest.approx(want)  # 1.0443

    # mammoth's form: smooth(softmax(z), T) = softmax(z) ** (1/T) normalised
    def smooth(p: torch.Tensor) -> torch.Tensor:
        q = p**0.5
        return q / q.sum(1, keepdim=True)

    z_new, z_old = torch.randn(5, 3), torch.randn(5, 3)
    mammoth = (
        -(smooth(torch.softmax(z_old, 1)) * torch.log(smooth(torch.softmax(z_new, 1))))
        .sum(1)
        .mean()
    )
    assert float(soft_target_loss(z_new, z_old, 2.0)) == pytest.approx(float(mammoth), rel=1e-5)


def test_lwf_distils_old_classes_from_a_frozen_copy():
    lwf = build(LwF, LwFParams(alpha=0.5, temperature=2.0), lr=0.5)
    lwf.begin_task(task(0))
    stats0 = lwf.observe(batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0))
    assert "distillation" not in stats0.extra
    lwf.end_task(task(0))
    assert lwf.old_classes == 2
    old = lwf.old_net
    frozen = [p.detach().clone() for p in old.parameters()]
    assert not any(p.requires_grad for p in old.parameters())
    lwf.begin_task(task(1))
    assert all(p.requires_grad for p in lwf.trainable_parameters())
    assert not any(p is q for p in lwf.trainable_parameters() for q in old.parameters())
    b1 = batch([[0, 0, 255], [128, 64, 32]], [2, 3], 1)
    for _ in range(2):
        logits = lwf.net(b1.x).detach()
        targets = old(b1.x).detach()[:, :2]
        want = soft_target_loss(logits[:, :2], targets, 2.0)
        ce = F.cross_entropy(mask_logits(logits, 4), b1.y)
        stats = lwf.observe(b1)
        assert stats.extra["distillation"] == pytest.approx(float(want), rel=1e-5)
        assert stats.loss == pytest.approx(float(ce + 0.5 * want), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(frozen, old.parameters(), strict=True))
    other = build(LwF, LwFParams())
    other.begin_task(task(1))
    other.load_state_dict(copy.deepcopy(lwf.state_dict()))
    assert other.old_classes == 2
    assert all(
        torch.equal(a, b) for a, b in zip(old.parameters(), other.old_net.parameters(), strict=True)
    )


# ---- DER++ ---------------------------------------------------------------------------------


def test_derpp_loss_terms_by_hand():
    der = build(DERpp, DERppParams(buffer_size=2, alpha=0.1, beta=0.5, replay_batch_size=2))
    der.begin_task(task(0))
    first = batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0)
    stats0 = der.observe(first)  # empty buffer: CE only
    assert set(stats0.extra) == {"ce"} and stats0.n_samples == 2
    stored_x, stored_y, stored_z = (
        TF(der.buffer.images),
        der.buffer.labels.clone(),
        (der.buffer.logits.clone()),
    )
    b = batch([[1, 2, 3], [40, 50, 60]], [1, 0], 0)
    logits = der.net(b.x).detach()
    buf_logits = der.net(stored_x).detach()
    ce = F.cross_entropy(mask_logits(logits, 2), b.y)
    mse = F.mse_loss(buf_logits, stored_z)  # over all 4 classes, as stored
    buf_ce = F.cross_entropy(mask_logits(buf_logits, 2), stored_y)
    stats = der.observe(b)  # both draws hold both stored examples
    assert stats.extra["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert stats.extra["mse"] == pytest.approx(float(mse), rel=1e-5)
    assert stats.extra["buffer_ce"] == pytest.approx(float(buf_ce), rel=1e-5)
    assert stats.loss == pytest.approx(float(ce + 0.1 * mse + 0.5 * buf_ce), rel=1e-5)
    assert stats.n_samples == 6


def test_derpp_stores_the_logits_of_insertion_time():
    der = build(DERpp, DERppParams(buffer_size=4, replay_batch_size=2), lr=1.0)
    der.begin_task(task(0))
    b = batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0)
    before = der.net(b.x).detach()
    der.observe(b)
    after = der.net(b.x).detach()
    assert not torch.allclose(before, after)  # the step changed the network
    assert torch.equal(der.buffer.logits[:2], before)  # ... but the buffer keeps the old view
    assert der.buffer.logits.shape == (4, 4)  # every class's logit
    assert der.buffer_bytes() == der.buffer.nbytes() > 0


def test_derpp_current_task_mask_and_first_task_replay_switch():
    der = build(
        DERpp,
        DERppParams(
            buffer_size=4,
            replay_batch_size=2,
            replay_in_first_task=False,
            current_task_logit_mask=True,
        ),
    )
    der.begin_task(task(0))
    der.observe(batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0))
    stats = der.observe(batch([[1, 2, 3], [40, 50, 60]], [1, 0], 0))
    assert set(stats.extra) == {"ce"}  # no replay during the first task
    der.begin_task(task(1))
    b1 = batch([[0, 0, 255], [128, 64, 32]], [2, 3], 1)
    logits = der.net(b1.x).detach()
    stats = der.observe(b1)
    want = F.cross_entropy(mask_logits(logits, torch.tensor([2, 3])), b1.y)  # current task only
    assert stats.extra["ce"] == pytest.approx(float(want), rel=1e-5)
    assert {"mse", "buffer_ce"} <= set(stats.extra)
