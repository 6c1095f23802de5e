"""The CIFAR-10-pretrained CIFAR ResNets: layout, key mapping, checksum, safe loading."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from edgecl.backbones.registry import create_backbone
from edgecl.backbones.resnet_cifar import (
    CifarResNet,
    OptionAShortcut,
    akamaster_state_dict,
    read_checkpoint,
)
from edgecl.errors import WeightsError

DATA = Path(os.environ.get("EDGECL_DATA", "/work/shared/data"))
FOLDER = DATA / "resnet_cifar10_akamaster"
needs_weights = pytest.mark.skipif(not FOLDER.is_dir(), reason="no local akamaster weights")


def test_option_a_shortcut_subsamples_and_pads_channels():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = OptionAShortcut(pad=1)(x)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[0, 0], torch.zeros(2, 2)) and torch.equal(y[0, 3], torch.zeros(2, 2))
    assert torch.equal(y[0, 1], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))  # x[0, ::2, ::2]


def test_akamaster_keys_map_by_hand():
    t = torch.zeros(1)
    sd = {"conv1.weight": t, "bn1.running_mean": t, "layer2.0.conv1.weight": t,
          "layer3.2.bn2.bias": t, "linear.weight": t, "linear.bias": t}
    assert sorted(akamaster_state_dict(sd)) == sorted(
        ["stem.0.weight", "stem.1.running_mean", "layer2.0.conv1.weight", "layer3.2.bn2.bias"])


@pytest.mark.parametrize(("depth", "n_params"), [(20, 269_072), (56, 852_368)])
def test_structure(depth, n_params):
    net = CifarResNet(depth)
    assert sum(p.numel() for p in net.parameters()) == n_params  # 0.27 M / 0.85 M
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 1 and all(c.kernel_size == (3, 3) for c in convs)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    assert len(net.conv_bn_pairs()) == depth - 1


@needs_weights
@pytest.mark.parametrize(("depth", "file"),
                         [(20, "resnet20-12fca82f.th"), (56, "resnet56-4bfd9763.th")])
def test_pretrained_loads_strictly_and_matches_file(depth, file):
    net = create_backbone(f"resnet{depth}_cifar10", data_root=DATA).module
    raw = torch.load(FOLDER / file, map_location="cpu", weights_only=True)
    assert 0.9 < raw["best_prec1"] / 100 < 0.95  # CIFAR-10 test accuracy of the checkpoint
    sd = raw["state_dict"]
    assert torch.equal(net.stem[0].weight, sd["module.conv1.weight"])
    last = f"layer3.{(depth - 2) // 6 - 1}.bn2.running_var"
    assert torch.equal(net.state_dict()[last], sd[f"module.{last}"])
    # trained BatchNorm statistics, not an init's zeros/ones
    assert not torch.allclose(net.stem[1].running_var, torch.ones(16))
    net.eval()
    with torch.no_grad():
        features = net(torch.randn(4, 3, 32, 32))
    assert features.shape == (4, 64) and torch.isfinite(features).all()
    assert (features >= 0).all()  # pooled after a ReLU


@needs_weights
def test_corrupt_local_copy_fails_checksum(tmp_path):
    folder = tmp_path / "resnet_cifar10_akamaster"
    folder.mkdir()
    target = folder / "resnet20-12fca82f.th"
    shutil.copyfile(FOLDER / "resnet20-12fca82f.th", target)
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        create_backbone("resnet20_cifar10", data_root=tmp_path)


def test_edgecl_saved_weights_round_trip(tmp_path):
    net = CifarResNet(20)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    loaded = create_backbone("resnet20_cifar10", weights=str(path)).module
    assert torch.equal(loaded.layer1[0].conv1.weight, net.layer1[0].conv1.weight)
    with pytest.raises(WeightsError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.th")
