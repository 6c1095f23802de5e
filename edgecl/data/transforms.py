"""Batched image transforms on whole uint8 NHWC batches (no per-sample PIL work).

A :class:`BatchTransform` maps ``(B, H, W, C)`` uint8 tensors (C = 1 or 3) to normalized
``(B, 3, S, S)`` float32 tensors. The training transform draws all its randomness from the
``torch.Generator`` passed in, so a batch's augmentation is reproducible from its seed.

Named pipelines (:func:`make_transforms`, set by ``train.augment``, ``train.crop_scale`` and
``eval.test_resize``):

- ``random_resized_crop``: RandomResizedCrop(S, scale, ratio 3/4-4/3) + horizontal flip, the
  prompt references' training pipeline (l2p-pytorch / dualprompt-pytorch: scale 0.05-1;
  torchvision's default and CODA-Prompt: 0.08-1).
- ``random_crop_pad4``: RandomCrop(32, padding=4) + horizontal flip, then a resize to S if S
  differs from the image size: CNNs trained from scratch on 32-px CIFAR (SparCL, Mammoth's
  DER++, LightCL).
- ``none``: the deterministic test-time pipeline.
- test time ``direct``: bilinear straight to S (antialiased when shrinking); ``resize_crop``:
  Resize(int(256 / 224 * S), bicubic) + CenterCrop(S), the references' test pipeline. Bicubic
  here is ``F.interpolate``'s (a = -0.75) where the references resize PIL images (a = -0.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from edgecl.errors import DataError

# Random-resized-crop draws this many candidate boxes per image and keeps the first that fits,
# as the usual sequential rejection loop does; images with no fitting candidate use the
# largest box whose aspect ratio is in range (the whole image if its own ratio is).
CROP_ATTEMPTS = 10
AugmentPolicy = Literal["random_resized_crop", "random_crop_pad4", "none"]
TestResize = Literal["direct", "resize_crop"]
RESIZE_CROP_RATIO = 256 / 224  # Resize(int(256 / 224 * S)) then CenterCrop(S)


class BatchTransform:
    """Resize to ``size`` x ``size`` and normalize; subclasses add random augmentation.

    ``resize``: ``direct`` (bilinear straight to ``size``) or ``resize_crop`` (bicubic to
    ``int(256 / 224 * size)``, then the centre ``size`` x ``size`` crop). Both are
    deterministic, so either is an un-augmented transform.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 resize: TestResize = "direct") -> None:
        if size < 1:
            raise DataError(f"Transform size must be a positive number of pixels, got {size}.")
        if resize not in ("direct", "resize_crop"):
            raise DataError(f"Test-time resize must be direct or resize_crop, got {resize!r}.")
        self.size = int(size)
        self.resize = resize
        self.mean = _three_channels(mean, "mean")
        self.std = _three_channels(std, "std")
        if any(s <= 0 for s in self.std):
            raise DataError(f"Normalization std values must be positive, got {tuple(std)}.")

    def __call__(
        self, images: torch.Tensor | np.ndarray, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        batch = _as_float_nchw(images)
        resized = self._resize(batch, generator)
        return self._normalize(_to_three_channels(resized))

    def _resize(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        del generator  # deterministic
        if self.resize == "resize_crop":
            return resize_center_crop(batch, self.size)
        return resize_direct(batch, self.size)

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std folded into one multiply-add per element.
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=batch.dtype)
        shift = torch.tensor(
            [-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=batch.dtype
        )
        scale, shift = scale.to(batch.device), shift.to(batch.device)
        return torch.addcmul(shift.view(1, 3, 1, 1), batch, scale.view(1, 3, 1, 1)).contiguous()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, resize={self.resize}, "
                f"mean={self.mean}, std={self.std})")


def resize_direct(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear to ``size`` x ``size`` (antialiased when shrinking)."""
    height, width = batch.shape[-2:]
    if (height, width) == (size, size):
        return batch
    downsampling = size < height or size < width
    return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=downsampling)


def resize_center_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's Resize(int(256 / 224 * size), bicubic) + CenterCrop(size): the shorter
    side to that length (aspect kept), then the centre crop (offsets ``round((h - size) / 2)``);
    values clamped to the pixel range as an 8-bit resize would."""
    height, width = batch.shape[-2:]
    short = int(RESIZE_CROP_RATIO * size)
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    if (new_h, new_w) != (height, width):
        downsampling = new_h < height or new_w < width
        batch = F.interpolate(batch, size=(new_h, new_w), mode="bicubic", align_corners=False,
                              antialias=downsampling).clamp_(0.0, 255.0)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return batch[..., top:top + size, left:left + size]


class RandomResizedCropFlip(BatchTransform):
    """Random-resized crop plus horizontal flip for a whole batch in one ``grid_sample``.

    Each image gets a crop box covering a fraction of its area drawn from ``scale`` with an
    aspect ratio drawn log-uniformly from ``ratio``; the box is sampled bilinearly straight to
    the output size, mirrored with probability ``hflip``. Crops are not antialiased, so boxes
    much larger than the output alias somewhat; typical use (crops upsampled to the model
    resolution) is unaffected.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
    ) -> None:
        super().__init__(size, mean, std)
        if not (0 < scale[0] <= scale[1] <= 1):
            raise DataError(f"Crop scale must satisfy 0 < low <= high <= 1, got {scale}.")
        if not (0 < ratio[0] <= ratio[1]):
            raise DataError(f"Crop ratio must satisfy 0 < low <= high, got {ratio}.")
        if not (0 <= hflip <= 1):
            raise DataError(f"hflip is a probability in [0, 1], got {hflip}.")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)

    def _resize(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, height, width = batch.shape
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator)
        flips = _uniform(n, generator) < self.hflip
        theta = crop_affine(boxes, height, width, flips).to(batch.device)
        grid = F.affine_grid(theta, [n, batch.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(
            batch, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip={self.hflip}, mean={self.mean}, std={self.std})"
        )


class RandomCropPadFlip(BatchTransform):
    """RandomCrop(crop, padding=pad) + horizontal flip (torchvision's zero fill), then a
    bilinear resize to ``size`` when the crop is another size; ``crop`` None: the image size.

    Offsets are uniform in ``[0, 2 * pad]`` on each axis, as torchvision's ``randint(0,
    h + 2 * pad - crop + 1)``.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], pad: int = 4,
                 crop: int | None = None, hflip: float = 0.5) -> None:
        super().__init__(size, mean, std)
        if pad < 0:
            raise DataError(f"Crop padding must be >= 0 pixels, got {pad}.")
        if not (0 <= hflip <= 1):
            raise DataError(f"hflip is a probability in [0, 1], got {hflip}.")
        self.pad, self.crop, self.hflip = int(pad), crop, float(hflip)

    def _resize(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, height, width = batch.shape
        crop_h, crop_w = (self.crop, self.crop) if self.crop else (height, width)
        padded = F.pad(batch, (self.pad,) * 4)
        span_h, span_w = height + 2 * self.pad - crop_h, width + 2 * self.pad - crop_w
        if span_h < 0 or span_w < 0:
            raise DataError(f"Crop {crop_h}x{crop_w} exceeds the padded image "
                            f"{height + 2 * self.pad}x{width + 2 * self.pad}.")
        top = (_uniform(n, generator) * (span_h + 1)).long().clamp_(max=span_h)
        left = (_uniform(n, generator) * (span_w + 1)).long().clamp_(max=span_w)
        flips = _uniform(n, generator) < self.hflip
        rows = (top.view(n, 1) + torch.arange(crop_h)).to(batch.device)
        cols = left.view(n, 1) + torch.arange(crop_w)
        cols = torch.where(flips.view(n, 1), cols.flip(1), cols).to(batch.device)
        index = torch.arange(n, device=batch.device).view(n, 1, 1)
        crops = padded.permute(0, 2, 3, 1)[index, rows.view(n, -1, 1), cols.view(n, 1, -1)]
        return resize_direct(crops.permute(0, 3, 1, 2), self.size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, pad={self.pad}, crop={self.crop}, "
                f"hflip={self.hflip}, mean={self.mean}, std={self.std})")


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float],
                   resize: TestResize = "direct") -> BatchTransform:
    """The test-time pipeline (``resize``: see :class:`BatchTransform`); grey -> RGB."""
    return BatchTransform(size, mean, std, resize)


def make_transforms(
    size: int, mean: Sequence[float], std: Sequence[float], *,
    augment: AugmentPolicy = "random_resized_crop",
    crop_scale: tuple[float, float] = (0.08, 1.0),
    test_resize: TestResize = "direct",
) -> tuple[BatchTransform, BatchTransform]:
    """(training, test) transforms of a named pipeline (see the module docstring). With
    ``augment: none`` training uses the test pipeline itself."""
    evaluation = eval_transform(size, mean, std, test_resize)
    if augment == "none":
        return evaluation, evaluation
    if augment == "random_resized_crop":
        return RandomResizedCropFlip(size, mean, std, scale=crop_scale), evaluation
    if augment == "random_crop_pad4":
        return RandomCropPadFlip(size, mean, std, pad=4), evaluation
    raise DataError(f"Unknown augmentation {augment!r}; use random_resized_crop, "
                    "random_crop_pad4 or none.")


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> BatchTransform:
    """Random-resized crop + horizontal flip + normalize, vectorized over the batch."""
    return RandomResizedCropFlip(size, mean, std, scale=scale, ratio=ratio, hflip=hflip)


def _three_channels(values: Sequence[float], what: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) != 3:
        raise DataError(f"Normalization {what} needs 1 or 3 values, got {len(values)}.")
    return values  # type: ignore[return-value]


def _as_float_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"Batch transforms take uint8 tensors of shape (B, H, W, C) with C in {{1, 3}}; "
            f"got {images.dtype} {tuple(images.shape)}."
        )
    return images.permute(0, 3, 1, 2).to(torch.float32)


def _to_three_channels(batch: torch.Tensor) -> torch.Tensor:
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, dtype=torch.float64, device=device)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(n, 4) float64 boxes ``(left, top, box_width, box_height)`` in pixels, inside the image."""
    area = float(height * width)
    fractions = scale[0] + (scale[1] - scale[0]) * _uniform(n * CROP_ATTEMPTS, generator)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspects = torch.exp(log_low + (log_high - log_low) * _uniform(n * CROP_ATTEMPTS, generator))
    box_w = torch.sqrt(area * fractions * aspects).view(n, CROP_ATTEMPTS)
    box_h = torch.sqrt(area * fractions / aspects).view(n, CROP_ATTEMPTS)
    fits = (box_w <= width) & (box_h <= height)
    first_fit = torch.argmax(fits.to(torch.int8), dim=1, keepdim=True)
    chosen_w = box_w.gather(1, first_fit).squeeze(1)
    chosen_h = box_h.gather(1, first_fit).squeeze(1)
    fallback_w, fallback_h = _whole_image_box(height, width, ratio)
    any_fit = fits.any(dim=1)
    chosen_w = torch.where(any_fit, chosen_w, torch.full_like(chosen_w, fallback_w))
    chosen_h = torch.where(any_fit, chosen_h, torch.full_like(chosen_h, fallback_h))
    left = (width - chosen_w) * _uniform(n, generator)
    top = (height - chosen_h) * _uniform(n, generator)
    return torch.stack([left, top, chosen_w, chosen_h], dim=1)


def _whole_image_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """Size of the largest box inside the image whose aspect ratio lies within ``ratio``."""
    aspect = width / height
    if aspect < ratio[0]:
        return float(width), width / ratio[0]
    if aspect > ratio[1]:
        return height * ratio[1], float(height)
    return float(width), float(height)


def crop_affine(boxes: torch.Tensor, height: int, width: int, flips: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) float32 ``affine_grid`` matrices mapping the output square onto each box.

    With ``align_corners=False`` an output coordinate u in [-1, 1] must land on input pixel-edge
    coordinate ``left + (u + 1) / 2 * box_width``, i.e. normalized ``u * box_width / width +
    (2 * left + box_width) / width - 1``; a flip negates the u coefficient.
    """
    left, top, box_w, box_h = boxes.unbind(dim=1)
    sign = torch.where(flips, -1.0, 1.0).to(boxes.dtype)
    theta = torch.zeros(boxes.shape[0], 2, 3, dtype=boxes.dtype, device=boxes.device)
    theta[:, 0, 0] = sign * box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    return theta.to(torch.float32)
