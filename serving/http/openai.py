"""OpenAI-compatible `POST /v1/images/generations` and `POST /v1/images/edits`, so the official
SDKs work unchanged.

Standard fields: prompt, n, size ("WIDTHxHEIGHT"), response_format (b64_json | url; default
b64_json), model; an edit sends its picture as the multipart file `image`. Stable Diffusion's own
parameters ride along as extra fields (negative_prompt, steps, guidance_scale, seed, scheduler,
output_format; `strength` for an edit). Errors use OpenAI's shape (serving/http/errors.py).
"""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from PIL import Image

from serving.dataplane.request import GenerateParams, RequestContext, lora_list
from serving.dataplane.service import DataPlane
from serving.errors import InvalidArgument
from serving.http.dependencies import ContextDep, DataPlaneDep
from serving.http.models import ERRORS, OpenAIImage, OpenAIImageRequest, OpenAIImagesResponse

OPENAI_PATH = "/v1/images/generations"
OPENAI_EDITS_PATH = "/v1/images/edits"
router = APIRouter(tags=["OpenAI"])


def in_openai_terms(error: InvalidArgument) -> InvalidArgument:
    """The complaint under OpenAI's field names: `n` for the count, `size` for either side."""
    if error.field == "num_images":
        return error.renamed("n")
    if error.field in ("width", "height"):
        return InvalidArgument("size", error.message)  # keeps which side was wrong
    return error


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    width, separator, height = size.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise InvalidArgument("size", f"must be WIDTHxHEIGHT, e.g. 512x512 (got {size!r})")
    return int(width), int(height)


def to_params(body: OpenAIImageRequest) -> GenerateParams:
    width, height = parse_size(body.size)
    return GenerateParams(
        model=body.model,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        num_images=body.n,
        width=width,
        height=height,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        seed=body.seed,
        scheduler=body.scheduler,
        output_format=body.output_format,
        priority=body.priority,
        loras=body.loras,
    )


@router.post(
    OPENAI_PATH,
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
)
async def generations(
    body: OpenAIImageRequest, data_plane: DataPlaneDep, context: ContextDep
) -> OpenAIImagesResponse:
    return await answer(data_plane, context, to_params(body), body.response_format)


@router.post(
    OPENAI_EDITS_PATH,
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
)
async def edits(
    data_plane: DataPlaneDep,
    context: ContextDep,
    image: Annotated[UploadFile, File(description="the picture to edit: PNG, JPEG or WebP")],
    prompt: Annotated[str, Form()],
    n: Annotated[int, Form()] = 1,
    size: Annotated[str | None, Form(description="WIDTHxHEIGHT (default: the picture's)")] = None,
    response_format: Annotated[Literal["b64_json", "url"], Form()] = "b64_json",
    model: Annotated[str | None, Form()] = None,
    mask: Annotated[
        UploadFile | None,
        File(
            description="inpainting: a PNG the image's size whose transparent pixels mark the "
            "area to edit (OpenAI's meaning)"
        ),
    ] = None,
    user: Annotated[str | None, Form(description="accepted, without effect")] = None,
    negative_prompt: Annotated[str, Form()] = "",
    strength: Annotated[float | None, Form(description="0 < strength <= 1 (default 0.8)")] = None,
    steps: Annotated[int | None, Form()] = None,
    guidance_scale: Annotated[float | None, Form()] = None,
    seed: Annotated[int | None, Form()] = None,
    scheduler: Annotated[str | None, Form()] = None,
    output_format: Annotated[str | None, Form()] = None,
    priority: Annotated[str | None, Form()] = None,
    loras: Annotated[
        str | None, Form(description='LoRA adapters as JSON: [{"name": ..., "scale": ...}]')
    ] = None,
) -> OpenAIImagesResponse:
    """Image-to-image from the picture in `image`; with a `mask`, inpainting of its transparent
    area."""
    width, height = parse_size(size)
    mask_text = None
    if mask is not None:
        limit = data_plane.settings.limits.max_input_side
        mask_text = base64.b64encode(repaint_mask(await mask.read(), limit)).decode("ascii")
    params = GenerateParams(
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        num_images=n,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        scheduler=scheduler,
        output_format=output_format,
        priority=priority,
        image=base64.b64encode(await image.read()).decode("ascii"),
        strength=strength,
        mask=mask_text,
        loras=lora_list(loras, "loras"),
    )
    return await answer(data_plane, context, params, response_format)


def repaint_mask(data: bytes, max_side: int) -> bytes:
    """OpenAI's mask (transparent pixels mark the area to edit) as diffusers' (white repaints,
    black keeps), a PNG; InvalidArgument naming `mask` for a file without transparency, or one
    over `max_side` pixels a side (read from its header, before decoding)."""
    try:
        image = Image.open(io.BytesIO(data))
        if max(image.size) > max_side:
            width, height = image.size
            raise InvalidArgument(
                "mask", f"is {width}x{height}; the limit is {max_side} pixels a side"
            )
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidArgument("mask", "is not a readable PNG image") from None
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        raise InvalidArgument(
            "mask", "must have transparency (an alpha channel): transparent pixels mark the edit"
        )
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    buffer = io.BytesIO()
    Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


async def answer(
    data_plane: DataPlane, context: RequestContext, params: GenerateParams, response_format: str
) -> OpenAIImagesResponse:
    """The generation, answered as OpenAI's images API answers (its field names in errors)."""
    try:
        result = await data_plane.generate(params, context)
    except InvalidArgument as error:
        raise in_openai_terms(error) from None
    output_format = result.request.output_format
    data = []
    for image in result.images:
        if response_format == "url":
            data.append(OpenAIImage(url=data_plane.image_url(image.digest, output_format)))
        else:
            data.append(
                OpenAIImage(
                    b64_json=base64.b64encode(image.data).decode("ascii"),
                    revised_prompt=result.request.prompt,
                )
            )
    return OpenAIImagesResponse(
        created=int(time.time()), data=data, model_version=result.request.model_version
    )
