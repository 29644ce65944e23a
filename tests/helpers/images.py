"""Comparing images: what parity and 'same image' assertions measure."""

from __future__ import annotations

import numpy as np

from serving.dataplane.codecs import decode_image


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def pixels(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP) → [H, W, 3] uint8."""
    return decode_image(data)


def as_uint8(image: np.ndarray) -> np.ndarray:
    """A diffusers `output_type="np"` image (floats in [0, 1]) as the service's uint8."""
    return (image * 255).round().astype(np.uint8)
