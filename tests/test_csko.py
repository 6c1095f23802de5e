"""CsKO as a method: phases, what trains, the projection, prototypes, ablations, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecl.backbones.resnet_cifar import CifarResNet
from edgecl.data.transforms import eval_transform
from edgecl.efficiency.bn_folding import fold_batchnorms
from edgecl.efficiency.center_kernel import CenterDecoupledConv
from edgecl.errors import ConfigError
from edgecl.methods import method_class
from edgecl.methods.base import Batch, BenchmarkInfo, OptimConfig, TaskInfo
from edgecl.methods.csko import CsKO, CsKOParams
from edgecl.methods.finetune import Finetune, FinetuneParams
from edgecl.metrics.cost import CostMeter

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = [torch.tensor([0, 1]), torch.tensor([2, 3])]
N_TRAIN, BATCH, STEPS = 16, 8, 8  # 2 steps per epoch, 4 epochs per task
SIZE = 8  # small maps keep the test fast; the CIFAR ResNet is fully convolutional
ADAM = OptimConfig(name="adam", lr=1e-3)


def make_info() -> BenchmarkInfo:
    return BenchmarkInfo(
        num_classes=4, n_tasks=2, task_classes=CLASSES,
        train_transform=eval_transform(32, (0.5,) * 3, (0.5,) * 3),
        device=torch.device("cpu"), meter=CostMeter(), seed=0,
        steps_per_task=[STEPS, STEPS], input_size=32,
    )


def task_info(t: int) -> TaskInfo:
    return TaskInfo(t, CLASSES[t], N_TRAIN, STEPS)


def make_batch(t: int, step: int) -> Batch:
    g = torch.Generator().manual_seed(100 * t + step % 2)
    y = CLASSES[t][torch.randint(0, 2, (BATCH,), generator=g)]
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g) + y.view(-1, 1, 1, 1).float()
    return Batch(x, y, torch.zeros(BATCH, 32, 32, 3, dtype=torch.uint8),
                 torch.arange(BATCH), t, step // 2)


def backbone() -> CifarResNet:
    torch.manual_seed(0)
    net = CifarResNet(20)
    for m in net.modules():  # non-trivial BatchNorm statistics to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def build(**params) -> CsKO:
    torch.manual_seed(0)
    m = CsKO(CsKOParams(**params), ADAM)
    m.setup(backbone(), make_info())
    return m


def run(m: CsKO, t: int, start: int = 0, stop: int = STEPS, end: bool = True) -> list:
    if start == 0:
        m.begin_task(task_info(t))
    out = [m.observe(make_batch(t, s)) for s in range(start, stop)]
    if end:
        m.end_task(task_info(t))
    return out


def test_registered_and_bn_folded_exactly_at_the_first_session() -> None:
    assert method_class("csko") is CsKO
    m = build()
    assert m.layer_names == ["layer3.2.conv1", "layer3.2.conv2"]  # the last residual block
    run(m, 0)  # the base session trains with BatchNorm
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.net.modules())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        m.net.eval()
        expected = m.net(x)
        m.begin_task(task_info(1))  # folded, then decoupled: the same function
        assert not any(isinstance(x, nn.BatchNorm2d) for x in m.net.modules())
        torch.testing.assert_close(m.net(x), expected, atol=1e-4, rtol=1e-4)


def test_phases_what_trains_and_merge_back() -> None:
    m = build()
    kinds = [set(s.extra) for s in run(m, 0)]
    assert kinds[-2:] == [{"stats"}, {"stats"}] and all("ce" in k for k in kinds[:-2])
    assert len(m.bank) == 2 and set(m.covariance) == set(m.layer_names)
    folded = copy.deepcopy(m.net.backbone)
    fold_batchnorms(folded, folded.conv_bn_pairs())
    before = folded.state_dict()
    m.begin_task(task_info(1))
    assert m.optimizer is None  # DCES pass first, then the optimizer
    layer = m.layer("layer3.2.conv1")
    assert isinstance(layer, CenterDecoupledConv)
    stats = [m.observe(make_batch(1, s)) for s in range(STEPS)]
    assert [set(s.extra) for s in stats[:2]] == [{"selection"}, {"selection"}]
    assert "proto" in stats[2].extra
    assert layer.adapter.weight.shape == (64, 48, 1, 1)  # int(0.75 * 64) input channels
    trainable = {n for n, p in m.modules.named_parameters() if p.requires_grad}
    assert trainable == {"net.head.weight", "net.head.bias",
                         "net.backbone.layer3.2.conv1.adapter.weight",
                         "net.backbone.layer3.2.conv2.adapter.weight"}
    sel = layer.selected.clone()
    m.end_task(task_info(1))
    after = m.net.backbone.state_dict()
    assert set(after) == set(before)  # merged back into plain convs
    for key, value in before.items():
        delta = after[key] - value
        if key == "layer3.2.conv1.weight":
            moved = delta[:, :, 1, 1]
            assert moved[:, sel].abs().sum() > 0
            rest = torch.ones(64, dtype=torch.bool)
            rest[sel] = False
            assert torch.all(moved[:, rest] == 0)  # unselected input channels never move
            delta[:, :, 1, 1] = 0
        if key not in ("layer3.2.conv2.weight",):
            assert torch.all(delta.abs() < 1e-6), key  # only the centers change


def test_update_lies_in_the_null_space_of_old_inputs() -> None:
    m = build()
    run(m, 0)
    m.begin_task(task_info(1))
    for s in range(2):
        m.observe(make_batch(1, s))
    m.observe(make_batch(1, 2))  # first training step: selection done, projector built
    layer = m.layer("layer3.2.conv2")
    w0 = layer.adapter.weight.detach().clone()
    m.observe(make_batch(1, 3))
    delta = (layer.adapter.weight.detach() - w0).flatten(1).double()
    idx = layer.selected
    cov = m.covariance["layer3.2.conv2"][idx][:, idx].double()
    vectors, values, _ = torch.linalg.svd(cov)
    principal = vectors[:, values > values[-1] * m.params.null_space_ratio]
    assert principal.shape[1] > 0 and delta.abs().sum() > 0
    # zero up to the float32 rounding of w + delta; an unprojected update is far from it
    assert (delta @ principal).norm() < 1e-2 * delta.norm()
    raw = torch.randn_like(delta)
    assert (raw @ principal).norm() > 0.1 * raw.norm()


def test_ablations_and_errors() -> None:
    m = build(center_decoupling=False, dces=False, projection=False, gradient_filter=False)
    run(m, 0)
    m.begin_task(task_info(1))
    trainable = {n for n, p in m.modules.named_parameters() if p.requires_grad}
    assert "net.backbone.layer3.2.conv1.weight" in trainable
    with pytest.raises(ConfigError, match="center_decoupling"):
        build(center_decoupling=False)
    with pytest.raises(ConfigError, match="adam"):
        CsKO(CsKOParams(), OptimConfig()).setup(backbone(), make_info())
    short = build()
    short.begin_task(TaskInfo(0, CLASSES[0], N_TRAIN, 1))
    with pytest.raises(ConfigError, match="train.epochs"):
        short.observe(make_batch(0, 0))


@pytest.mark.parametrize("stop", [1, 4, 8])  # mid-DCES pass, mid-training, task end
def test_resume_is_exact(stop: int) -> None:
    a = build()
    run(a, 0)
    run(a, 1, stop=stop, end=stop == STEPS)
    state = copy.deepcopy(a.state_dict())
    b = build()
    b.begin_task(task_info(state["task_index"]))
    b.load_state_dict(state)
    if stop < STEPS:
        la = run(a, 1, start=stop, end=True)
        lb = run(b, 1, start=stop, end=True)
        assert [s.loss for s in la] == [s.loss for s in lb]
    for (na, pa), (nb, pb) in zip(a.modules.state_dict().items(),
                                  b.modules.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    xa = make_batch(1, 0).x
    assert torch.equal(a.predict(xa), b.predict(xa))


@pytest.mark.parametrize(("mode", "expected"), [
    ("head", {"net.head.weight", "net.head.bias"}),
    ("bias", {"net.head.weight", "net.head.bias", "net.backbone.stem.1.bias"}),
])
def test_finetune_trainable_parts(mode: str, expected: set) -> None:
    f = Finetune(FinetuneParams(trainable=mode), OptimConfig(lr=0.01))
    f.setup(backbone(), make_info())
    trainable = {n for n, p in f.modules.named_parameters() if p.requires_grad}
    assert expected <= trainable
    assert all(n.startswith("net.head") or n.endswith(".bias") for n in trainable)
    assert (mode == "head") == (trainable == expected)
    f.begin_task(task_info(0))
    w = f.net.backbone.stem[0].weight.clone()
    var = f.net.backbone.stem[1].running_var.clone()
    f.observe(make_batch(0, 0))
    assert torch.equal(w, f.net.backbone.stem[0].weight)
    assert torch.equal(var, f.net.backbone.stem[1].running_var) == (mode == "head")
