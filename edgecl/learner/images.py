"""Checking and decoding what clients send: image bytes and labels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgecl.errors import InputError

FORMATS = ("PNG", "JPEG")
MAX_LABEL_CHARS = 256
MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded


def check_label(label: object, index: int) -> str:
    if not isinstance(label, str):
        raise InputError(f"label {index}: must be text, got {type(label).__name__}")
    if not label.strip():
        raise InputError(f"label {index}: is empty")
    if len(label) > MAX_LABEL_CHARS:
        raise InputError(f"label {index}: is {len(label)} characters, at most "
                         f"{MAX_LABEL_CHARS} are allowed")
    if any(ord(c) < 32 for c in label):
        raise InputError(f"label {index}: contains control characters")
    return label


def open_image(data: bytes, index: int) -> Image.Image:
    """The image in ``data`` (PNG or JPEG), fully read; InputError names what is wrong."""
    if not data:
        raise InputError(f"image {index}: is empty")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            raise InputError(f"image {index}: format {image.format} is not supported; send "
                             "PNG or JPEG")
        if image.width * image.height > MAX_PIXELS:
            raise InputError(f"image {index}: {image.width}x{image.height} pixels is too large")
        image.load()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"image {index}: not a readable PNG or JPEG") from None
    return image


def decode(data: bytes, size: int, index: int = 0) -> np.ndarray:
    """``data`` as a (size, size, 3) uint8 RGB array, resized bilinearly."""
    image = open_image(data, index).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 array as PNG bytes (clients, tests and the benchmark stream)."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(out, format="PNG")
    return out.getvalue()
