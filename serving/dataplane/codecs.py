"""uint8 image arrays ↔ PNG / JPEG / WebP bytes: the only image encoding in the service."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from serving.errors import InvalidArgument

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


def input_image(data: bytes, field: str, max_side: int) -> Image.Image:
    """An input image's file bytes, checked (a PNG, JPEG or WebP, no side over `max_side`,
    read from its header before any pixel is decoded) and decoded to RGB; InvalidArgument
    naming `field` otherwise."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # its header claims hundreds of megapixels
        raise InvalidArgument(
            field, f"declares too many pixels to decode ({error}); the limit is {max_side} a side"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # PIL's words for a broken file
        raise InvalidArgument(field, "is not a readable PNG, JPEG or WebP image") from error
    with image:
        if image.format not in _PIL_FORMATS.values():
            raise InvalidArgument(field, f"must be a PNG, JPEG or WebP (got {image.format})")
        width, height = image.size
        if max(width, height) > max_side:
            raise InvalidArgument(
                field, f"is {width}x{height}; the limit is {max_side} pixels a side"
            )
        try:
            return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:  # truncated pixel data
            raise InvalidArgument(field, "is not a readable PNG, JPEG or WebP image") from error


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image file already checked by `input_image`, from its header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def mask_input(data: bytes, height: int, width: int, vae_scale_factor: int) -> np.ndarray:
    """An inpainting mask as the pipelines prepare it: grey, resized to height x width and
    binarised (white: 1, repaint) by diffusers' own VaeImageProcessor; [1, H, W] float32."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(
        vae_scale_factor=vae_scale_factor,
        do_normalize=False,
        do_binarize=True,
        do_convert_grayscale=True,
    )
    with Image.open(io.BytesIO(data)) as image:
        tensor = processor.preprocess(image, height=height, width=width)
    return np.ascontiguousarray(tensor[0].float().numpy())


def latent_size_mask(mask: np.ndarray, vae_scale_factor: int) -> np.ndarray:
    """The [1, H, W] mask at latent resolution, [1, h, w], as the inpainting pipelines'
    prepare_mask_latents resizes it (torch's default nearest interpolation)."""
    import torch

    height, width = mask.shape[-2] // vae_scale_factor, mask.shape[-1] // vae_scale_factor
    resized = torch.nn.functional.interpolate(torch.from_numpy(mask)[None], size=(height, width))
    return np.ascontiguousarray(resized[0].numpy())


def vae_input(data: bytes, height: int, width: int, vae_scale_factor: int) -> np.ndarray:
    """An input image as the VAE encoder takes it: resized to height x width and scaled to
    [-1, 1] by diffusers' own VaeImageProcessor, as the image-to-image pipelines do; [3, H, W]
    float32."""
    from diffusers.image_processor import VaeImageProcessor  # the ingress needs it only here

    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor)
    with Image.open(io.BytesIO(data)) as image:
        tensor = processor.preprocess(image.convert("RGB"), height=height, width=width)
    return np.ascontiguousarray(tensor[0].float().numpy())


def base64_image(text: str, field: str) -> bytes:
    """The bytes of base64 text or of a `data:image/...;base64,` URL; InvalidArgument naming
    `field` when it is neither."""
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as error:
        raise InvalidArgument(field, "must be base64 (or a data: URL) of an image") from error


def png_data_url(pixels: np.ndarray) -> str:
    """A small image inline, e.g. a progress preview in an event."""
    encoded = base64.b64encode(encode_image(pixels, "png")).decode("ascii")
    return "data:image/png;base64," + encoded
