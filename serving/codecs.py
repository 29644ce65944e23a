"""uint8 image arrays → PNG / JPEG / WebP bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(pixels: np.ndarray, output_format: str, quality: int = 90) -> bytes:
    """Encode one [H, W, 3] uint8 array; the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if output_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=_PIL_FORMATS[output_format], quality=quality)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Bytes of any supported format → [H, W, 3] uint8 (used by clients and tests)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
