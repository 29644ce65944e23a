"""uint8 image arrays ↔ PNG / JPEG / WebP bytes: the only image encoding in the service."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}
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
    """Bytes of any supported format → [H, W, 3] uint8."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def png_data_url(pixels: np.ndarray) -> str:
    """A small image inline, e.g. a progress preview in an event."""
    encoded = base64.b64encode(encode_image(pixels, "png")).decode("ascii")
    return "data:image/png;base64," + encoded
