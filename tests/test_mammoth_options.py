"""Options that let edgecl run mammoth's DER++ protocol side by side (benchmarks/fidelity_derpp.py):
DER++'s ``ce_classes`` (CE over every output, mammoth's convention) and ``backbone.width``
(mammoth's ``--num_filters`` of its ResNet-18)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from edgecl.backbones.cnn import CifarResNet18
from edgecl.backbones.registry import create_backbone
from edgecl.config.models import BackboneConfig
from edgecl.errors import ConfigError
from edgecl.methods.base import mask_logits
from edgecl.methods.derpp import DERpp, DERppParams
from tests.test_rehearsal import batch, build, task


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_resnet18_width_scales_every_stage():
    net = CifarResNet18(width=8)
    assert net.feature_dim == 64
    assert net.stem[0].out_channels == 8
    assert net.layer4[-1].conv2.out_channels == 64
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    # the default is the standard ResNet-18 (11,168,832 parameters without a head)
    assert CifarResNet18().feature_dim == 512
    assert n_params(CifarResNet18()) == 11_168_832


def test_width_through_the_registry_and_the_config():
    bundle = create_backbone("resnet18_cifar", weights="random", width=4)
    assert bundle.module.feature_dim == 32
    assert BackboneConfig(name="resnet18_cifar", width=20).width == 20
    with pytest.raises(ConfigError, match="fixed width"):
        create_backbone("resnet56_cifar10", weights="random", width=4)
    with pytest.raises(ValidationError, match="backbone.width"):
        BackboneConfig(name="vit_tiny_patch16_224", width=4)
    with pytest.raises(ValidationError):
        BackboneConfig(name="resnet18_cifar", width=0)


@pytest.mark.parametrize("ce_classes", ["seen", "all"])
def test_derpp_ce_classes(ce_classes: str):
    """Task 0 sees classes 0-1 of 4: "seen" masks classes 2-3 in both CEs, "all" does not."""
    der = build(DERpp, DERppParams(buffer_size=2, replay_batch_size=2, ce_classes=ce_classes))
    der.begin_task(task(0))
    der.observe(batch([[10, 200, 30], [250, 5, 90]], [0, 1], 0))  # fills the buffer
    stored_x, stored_y = der.info.train_transform(der.buffer.images), der.buffer.labels.clone()
    b = batch([[1, 2, 3], [40, 50, 60]], [1, 0], 0)
    logits, buf_logits = der.net(b.x).detach(), der.net(stored_x).detach()

    def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z if ce_classes == "all" else mask_logits(z, 2), y)

    stats = der.observe(b)
    assert stats.extra["ce"] == pytest.approx(float(ce(logits, b.y)), rel=1e-5)
    assert stats.extra["buffer_ce"] == pytest.approx(float(ce(buf_logits, stored_y)), rel=1e-5)
    masked, full = F.cross_entropy(mask_logits(logits, 2), b.y), F.cross_entropy(logits, b.y)
    assert float(masked) < float(full)  # the two conventions differ on this batch
