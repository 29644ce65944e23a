"""OpenAI-compatible `POST /v1/images/generations`, so the official SDKs work unchanged.

Standard fields: prompt, n, size ("WIDTHxHEIGHT"), response_format (b64_json | url; default
b64_json), model. Stable Diffusion's own parameters ride along as extra fields
(negative_prompt, steps, guidance_scale, seed, scheduler, output_format). Errors use OpenAI's shape
(serving/http/errors.py).
"""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter

from serving.dataplane.request import GenerateParams
from serving.errors import InvalidArgument
from serving.http.dependencies import ContextDep, DataPlaneDep
from serving.http.models import ERRORS, OpenAIImage, OpenAIImageRequest, OpenAIImagesResponse

OPENAI_PATH = "/v1/images/generations"
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
    params = to_params(body)
    try:
        result = await data_plane.generate(params, context)
    except InvalidArgument as error:
        raise in_openai_terms(error) from None
    output_format = result.request.output_format
    data = []
    for image in result.images:
        if body.response_format == "url":
            data.append(OpenAIImage(url=data_plane.image_url(image.digest, output_format)))
        else:
            data.append(
                OpenAIImage(
                    b64_json=base64.b64encode(image.data).decode("ascii"),
                    revised_prompt=result.request.prompt,
                )
            )
    return OpenAIImagesResponse(created=int(time.time()), data=data)
