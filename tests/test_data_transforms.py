from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecl.data import DataError, eval_transform, train_transform
from edgecl.data.transforms import sample_crop_boxes

MEAN = (0.1, 0.2, 0.3)
STD = (0.5, 0.25, 0.2)


def random_batch(b: int = 4, h: int = 32, w: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, c), dtype=torch.uint8, generator=generator)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def identity_crop(size: int, hflip: float = 0.0):
    return train_transform(size, MEAN, STD, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=hflip)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_identity_crop_equals_plain_resize(size: int) -> None:
    images = random_batch()
    cropped = identity_crop(size)(images, seeded(1))
    resized = eval_transform(size, MEAN, STD)(images)
    assert torch.allclose(cropped, resized, atol=1e-4)


def test_identity_crop_at_native_size_is_exact() -> None:
    images = random_batch()
    expected = eval_transform(32, MEAN, STD)(images)
    assert torch.allclose(identity_crop(32)(images, seeded(3)), expected, atol=1e-6, rtol=0)


def test_flip_reverses_columns_exactly() -> None:
    images = random_batch()
    flipped = identity_crop(32, hflip=1.0)(images, seeded(0))
    expected = eval_transform(32, MEAN, STD)(images).flip(-1)
    assert torch.allclose(flipped, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "make", [lambda: eval_transform(8, MEAN, STD), lambda: train_transform(8, MEAN, STD)]
)
def test_normalization_of_constant_image(make) -> None:
    images = torch.full((2, 16, 16, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    out = make()(images, seeded(0))
    expected = torch.tensor([(0.2 - 0.1) / 0.5, 0.0, (0.2 - 0.3) / 0.2]).view(1, 3, 1, 1)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(32, 32), (28, 40)])
def test_output_shape_and_dtype(channels: int, hw: tuple[int, int]) -> None:
    images = random_batch(5, *hw, c=channels)
    for transform in (eval_transform(24, MEAN, STD), train_transform(24, MEAN, STD)):
        out = transform(images, seeded(0))
        assert out.shape == (5, 3, 24, 24)
        assert out.dtype == torch.float32
        assert out.is_contiguous()


def test_grey_images_are_replicated_to_three_channels() -> None:
    grey = random_batch(3, 28, 28, c=1)
    out = eval_transform(28, (0.5,), (0.25,))(grey)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    expected = (grey[..., 0].float() / 255 - 0.5) / 0.25
    assert torch.allclose(out[:, 0], expected, atol=1e-5)


def test_numpy_batches_are_accepted() -> None:
    images = random_batch()
    transform = eval_transform(32, MEAN, STD)
    assert torch.equal(transform(images.numpy()), transform(images))


def test_same_generator_seed_same_output() -> None:
    images = random_batch(8)
    transform = train_transform(32, MEAN, STD)
    first = transform(images, seeded(123))
    assert torch.equal(first, transform(images, seeded(123)))
    assert not torch.equal(first, transform(images, seeded(124)))


def test_random_crop_is_a_crop_and_flip_mirrors_it() -> None:
    # Pixel value = column index, so a crop must be increasing along columns (decreasing if
    # flipped) and stay inside the value range of the image.
    columns = torch.arange(64, dtype=torch.uint8).view(1, 1, 64, 1).expand(6, 64, 64, 3)
    unit = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)
    for hflip, sign in ((0.0, 1), (1.0, -1)):
        out = train_transform(16, *unit, scale=(0.2, 0.5), hflip=hflip)(columns, seeded(7))
        steps = sign * out[:, 0, 0].diff(dim=-1)
        assert (steps > 0).all()
        assert out.min() >= 0 and out.max() <= 63


def test_crop_boxes_respect_bounds_scale_and_ratio() -> None:
    boxes = sample_crop_boxes(2000, 30, 50, (0.08, 1.0), (3 / 4, 4 / 3), seeded(5))
    left, top, width, height = boxes.unbind(dim=1)
    eps = 1e-9
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + width <= 50 + eps).all() and (top + height <= 30 + eps).all()
    fraction = width * height / (30 * 50)
    assert (fraction >= 0.08 - eps).all() and (fraction <= 1 + eps).all()
    aspect = width / height
    assert (aspect >= 3 / 4 - 1e-6).all() and (aspect <= 4 / 3 + 1e-6).all()


def test_crop_fallback_when_no_candidate_fits() -> None:
    # A 10x100 strip cannot hold any box with area >= 90% and aspect <= 4/3: the whole-image
    # fallback clamps the aspect ratio to 4/3 instead.
    boxes = sample_crop_boxes(50, 10, 100, (0.9, 1.0), (3 / 4, 4 / 3), seeded(0))
    assert torch.allclose(boxes[:, 2], torch.full((50,), 10 * 4 / 3, dtype=boxes.dtype))
    assert torch.allclose(boxes[:, 3], torch.full((50,), 10.0, dtype=boxes.dtype))


def test_bad_arguments_raise_data_error() -> None:
    with pytest.raises(DataError, match="uint8"):
        eval_transform(8, MEAN, STD)(torch.zeros(1, 8, 8, 3))
    with pytest.raises(DataError, match="1 or 3 values"):
        eval_transform(8, (0.1, 0.2), STD)
    with pytest.raises(DataError, match="positive"):
        eval_transform(8, MEAN, (0.1, 0.0, 0.2))
    with pytest.raises(DataError, match="scale"):
        train_transform(8, MEAN, STD, scale=(0.5, 0.1))
    with pytest.raises(DataError, match="hflip"):
        train_transform(8, MEAN, STD, hflip=1.5)


def test_downsampling_keeps_constant_images_constant() -> None:
    images = torch.full((1, 64, 64, 3), 200, dtype=torch.uint8)
    out = eval_transform(16, (0.0,), (1.0,))(images)
    assert np.allclose(out.numpy(), 200 / 255, atol=1e-6)
