"""Batched image transforms on whole uint8 NHWC batches (no per-sample PIL work).

A :class:`BatchTransform` maps ``(B, H, W, C)`` uint8 tensors (C = 1 or 3) to normalized
``(B, 3, S, S)`` float32 tensors. The training transform draws all its randomness from the
``torch.Generator`` passed in, so a batch's augmentation is reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgecl.errors import DataError

# Random-resized-crop draws this many candidate boxes per image and keeps the first that fits,
# as the usual sequential rejection loop does; images with no fitting candidate use the
# largest box whose aspect ratio is in range (the whole image if its own ratio is).
CROP_ATTEMPTS = 10


class BatchTransform:
    """Resize to ``size`` x ``size`` and normalize; subclasses add random augmentation."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        if size < 1:
            raise DataError(f"Transform size must be a positive number of pixels, got {size}.")
        self.size = int(size)
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
        height, width = batch.shape[-2:]
        if (height, width) == (self.size, self.size):
            return batch
        downsampling = self.size < height or self.size < width
        return F.interpolate(
            batch,
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
            antialias=downsampling,
        )

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std folded into one multiply-add per element.
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=batch.dtype)
        shift = torch.tensor(
            [-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=batch.dtype
        )
        scale, shift = scale.to(batch.device), shift.to(batch.device)
        return torch.addcmul(shift.view(1, 3, 1, 1), batch, scale.view(1, 3, 1, 1)).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mean={self.mean}, std={self.std})"


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


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> BatchTransform:
    """Bilinear resize to ``size`` (antialiased when shrinking) and normalize; grey -> RGB."""
    return BatchTransform(size, mean, std)


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
