"""OpenAI-compatible `POST /v1/images/generations`, so the official SDKs work unchanged.

Standard fields: prompt, n, size ("WIDTHxHEIGHT"), response_format (b64_json | url; default
b64_json), model. Stable Diffusion's own parameters ride along as extra fields
(negative_prompt, steps, guidance_scale, seed, scheduler, output_format). Errors use OpenAI's shape
(see serving/http/errors.py).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict

from serving.errors import InvalidArgument, NotFound
from serving.http.bodies import json_body, requested_timeout
from serving.http.schemas import ERRORS, OpenAIImagesResponse, request_body
from serving.request import GenerateParams, validate_body
from serving.service import EncodedResult, GenerationService

OPENAI_PATH = "/v1/images/generations"


class OpenAIImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    n: int = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = None
    # Accepted for compatibility, without effect on a Stable Diffusion model.
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    # Stable Diffusion's own parameters, as extra fields.
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    output_format: str | None = None


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    width, separator, height = size.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise InvalidArgument("size", f"must be WIDTHxHEIGHT, e.g. 512x512 (got {size!r})")
    return int(width), int(height)


def to_params(body: Any, model_name: str) -> tuple[GenerateParams, OpenAIImageRequest]:
    request = validate_body(OpenAIImageRequest, body)
    if request.model not in (None, model_name):
        raise NotFound(
            f"model {request.model!r} is not served here; this service serves {model_name!r}"
        )
    width, height = parse_size(request.size)
    params = GenerateParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_images=request.n,
        width=width,
        height=height,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        scheduler=request.scheduler,
        output_format=request.output_format,
    )
    return params, request


def install_openai_routes(
    app: FastAPI,
    service: GenerationService,
    observe: Callable[[EncodedResult], None],
    image_url: Callable[[GenerationService, EncodedResult, int], str],
) -> None:
    @app.post(
        OPENAI_PATH,
        openapi_extra=request_body(OpenAIImageRequest.model_json_schema()),
        responses={200: {"model": OpenAIImagesResponse}, **ERRORS},
    )
    async def generations(request: Request) -> dict[str, Any]:
        params, openai_request = to_params(await json_body(request), service.settings.model_name)
        try:
            resolved = service.resolve(params)
        except InvalidArgument as error:
            if error.field == "num_images":  # speak the client's field names
                raise error.renamed("n") from None
            if error.field in ("width", "height"):
                raise InvalidArgument("size", error.message) from None
            raise
        result = await service.produce(
            resolved, determined=params.seed is not None, timeout_s=requested_timeout(request)
        )
        observe(result)
        data = []
        for index, image in enumerate(result.images):
            if openai_request.response_format == "url":
                data.append({"url": image_url(service, result, index)})
            else:
                data.append(
                    {
                        "b64_json": base64.b64encode(image.data).decode("ascii"),
                        "revised_prompt": resolved.prompt,
                    }
                )
        return {"created": int(time.time()), "data": data}
