"""CsKO's mechanisms, each against a small hand-checked case."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecl.efficiency.bn_folding import fold_batchnorms, fold_conv_bn
from edgecl.efficiency.center_kernel import CenterDecoupledConv
from edgecl.efficiency.channel_selection import GradientSum, top_channels
from edgecl.efficiency.gradient_filter import FilteredConv2d
from edgecl.efficiency.null_space import ProjectedAdam, input_covariance, null_space_projector
from edgecl.efficiency.prototypes import PrototypeBank


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 3)
    return bn.eval()


def test_bn_folding_by_hand_and_on_random_conv():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(1.0)
        bn.running_mean.fill_(4.0)
        bn.running_var.fill_(9.0)
    folded = fold_conv_bn(conv, bn)  # 3 * (2x - 4) / 3 + 1 = 2x - 3
    assert folded.weight.item() == pytest.approx(2.0) and folded.bias.item() == pytest.approx(-3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), _bn(4))
    x = torch.randn(2, 3, 5, 5)
    expected = net(x)
    assert fold_batchnorms(net, [("0", "1")]) == 1
    assert isinstance(net[1], nn.Identity)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_center_decoupling_is_exact_before_split_after_split_and_after_merge(stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=stride, padding=1, bias=True)
    x = torch.randn(2, 6, 8, 8)
    before = conv(x)
    split = CenterDecoupledConv(conv, filter_patch=2)
    assert torch.all(split.conv.weight[:, :, 1, 1] == 0)
    assert [n for n, p in split.named_parameters() if p.requires_grad] == ["adapter.weight"]
    torch.testing.assert_close(split(x), before, atol=1e-5, rtol=1e-5)
    split.select(torch.tensor([4, 0, 2]))
    assert split.adapter.weight.shape == (5, 3, 1, 1)
    assert split.adapter_frozen is not None and not split.adapter_frozen.weight.requires_grad
    torch.testing.assert_close(split(x), before, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        split.adapter.weight.add_(0.5)  # train the selected channels
    trained = split(x)
    merged = split.merge()
    torch.testing.assert_close(merged(x), trained, atol=1e-5, rtol=1e-5)
    delta = merged.weight - conv.weight
    assert torch.allclose(delta[:, [0, 2, 4], 1, 1], torch.full((5, 3), 0.5))
    delta[:, [0, 2, 4], 1, 1] = 0
    assert torch.all(delta.abs() < 1e-7)  # nothing else moved


def test_gradient_filter_is_exact_for_patch_constant_maps():
    torch.manual_seed(0)
    base = torch.randn(2, 3, 2, 2)
    x = base.repeat_interleave(2, 2).repeat_interleave(2, 3).requires_grad_(True)
    gy = torch.randn(2, 4, 2, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    exact = nn.Conv2d(3, 4, 1, bias=False)
    filtered = FilteredConv2d(3, 4, 1, bias=False, patch=2)
    filtered.weight = exact.weight
    (exact(x) * gy).sum().backward()
    gw, gx = exact.weight.grad.clone(), x.grad.clone()
    exact.weight.grad, x.grad = None, None
    y = filtered(x)
    torch.testing.assert_close(y, exact(x))
    (y * gy).sum().backward()
    torch.testing.assert_close(exact.weight.grad, gw)
    torch.testing.assert_close(x.grad, gx)
    # a non-constant input: the filtered gradient differs (it is an approximation)
    gy2 = torch.randn(2, 4, 4, 4)
    x = torch.randn(2, 3, 4, 4)
    exact.weight.grad = None
    (filtered(x) * gy2).sum().backward()
    approx = exact.weight.grad.clone()
    exact.weight.grad = None
    (nn.functional.conv2d(x, exact.weight) * gy2).sum().backward()
    assert not torch.allclose(approx, exact.weight.grad)


def test_dces_scores_abs_of_summed_gradient_and_keeps_top_fraction():
    acc = GradientSum()
    acc.add(torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 2.0, 0.5, -1.0]]).reshape(2, 4, 1, 1))
    acc.add(torch.tensor([[-1.0, -2.0, 0.5, 0.0], [0.0, 2.0, 0.5, 0.0]]).reshape(2, 4, 1, 1))
    # sums: [[0,-4,1,3],[1,4,1,-1]] -> |.| mean over outputs: [0.5, 4, 1, 2]
    scores = acc.channel_scores()
    torch.testing.assert_close(scores, torch.tensor([0.5, 4.0, 1.0, 2.0]))
    assert top_channels(scores, 0.75).tolist() == [1, 2, 3]  # int(0.75 * 4) = 3 kept
    assert top_channels(scores, 0.25).tolist() == [1]
    with pytest.raises(ValueError):
        top_channels(scores, 0.0)


def test_null_space_projection_is_orthogonal_to_the_stored_subspace():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([10.0, 4.0, 0.02, 0.01], dtype=torch.float64)) @ q.T
    proj = null_space_projector(cov, ratio=5.0, normalize=False)  # eigenvalues <= 0.05
    stored = q[:, :2]  # the old tasks' principal input directions
    null = q[:, 2:]
    torch.testing.assert_close(proj, null @ null.T)
    update = torch.randn(3, 4, dtype=torch.float64)
    projected = update @ proj
    torch.testing.assert_close(projected @ stored, torch.zeros(3, 2, dtype=torch.float64))
    # the reference divides by the Frobenius norm: sqrt(rank) = sqrt(2) here
    torch.testing.assert_close(null_space_projector(cov, 5.0), proj / 2**0.5)
    x = torch.ones(3, 2, 1, 1)  # batch mean (1, 1) at one position -> [[1, 1], [1, 1]]
    torch.testing.assert_close(input_covariance(x), torch.ones(2, 2))


def test_projected_adam_first_step_by_hand():
    w = nn.Parameter(torch.zeros(1, 2, 1, 1))
    opt = ProjectedAdam([w], lr=0.1, eps=0.0)
    proj = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # keep input channel 0 only
    opt.set_projector(w, proj)
    w.grad = torch.tensor([3.0, -2.0]).reshape(1, 2, 1, 1)
    opt.step()  # first Adam step: -lr * sign(g), then projected
    torch.testing.assert_close(w.detach().flatten(), torch.tensor([-0.1, 0.0]))
    assert opt.projection_flops() == 2 * 1 * 2**2
    b = nn.Parameter(torch.zeros(2))
    plain = ProjectedAdam([b], lr=0.1, eps=0.0, weight_decay=0.5)
    b.grad = torch.tensor([1.0, -1.0])
    plain.step()
    torch.testing.assert_close(b.detach(), torch.tensor([-0.1, 0.1]))


def test_prototype_bank_means_and_uniform_draws():
    bank = PrototypeBank()
    bank.accumulate(torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]), torch.tensor([0, 0, 1]))
    bank.accumulate(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))
    bank.commit()
    torch.testing.assert_close(bank.features, torch.tensor([[2.0, 1.0], [5.0, 5.0]]))
    feats, labels = bank.sample(200, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == {0, 1}
    assert torch.all(feats[labels == 1] == torch.tensor([5.0, 5.0]))
    restored = PrototypeBank()
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.labels, bank.labels)


def test_adjacent_conv_bn_pairs_cover_resnet18_shortcuts_and_fold_exactly():
    from edgecl.backbones.cnn import CifarResNet18
    from edgecl.efficiency.bn_folding import adjacent_conv_bn_pairs

    torch.manual_seed(0)
    net = CifarResNet18().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    pairs = adjacent_conv_bn_pairs(net)
    assert pairs[:2] == [("stem.0", "stem.1"), ("layer1.0.conv1", "layer1.0.bn1")]
    assert ("layer2.0.shortcut.0", "layer2.0.shortcut.1") in pairs and len(pairs) == 20
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        fold_batchnorms(net, pairs)
        torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
