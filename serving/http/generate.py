"""`POST /v1/generate` (JSON, or the image itself with `Accept: image/*`) and the CDN-friendly
stored images at `GET /v1/images/{digest}.{format}`."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving.dataplane.codecs import FORMAT_BY_MEDIA_TYPE, MEDIA_TYPES
from serving.dataplane.request import VERSION_HEADER, GenerateParams
from serving.dataplane.service import DataPlane, GenerationResult
from serving.errors import InvalidArgument, NotFound
from serving.http.dependencies import ContextDep, DataPlaneDep
from serving.http.models import ERRORS, IMAGE_CONTENT, GenerateResponse, ImageOut

IMMUTABLE = "public, max-age=31536000, immutable"
router = APIRouter(tags=["generate"])


@router.post(
    "/v1/generate",
    responses={
        200: {
            "model": GenerateResponse,
            "content": IMAGE_CONTENT,
            "description": "JSON, or the image itself with Accept: image/*",
        },
        **ERRORS,
    },
)
async def generate(
    params: GenerateParams, request: Request, data_plane: DataPlaneDep, context: ContextDep
) -> Response:
    raw_format = requested_image_format(request.headers.get("accept", ""))
    if raw_format is not None:
        if params.num_images != 1:
            raise InvalidArgument(
                "num_images",
                f"a raw image response (Accept: {MEDIA_TYPES[raw_format]}) carries exactly one"
                f" image (got {params.num_images}); ask for application/json for several",
            )
        params = params.model_copy(update={"output_format": raw_format})
    result = await data_plane.generate(params, context)
    if raw_format is not None:
        return raw_image_response(data_plane, result)
    body = generate_response(data_plane, result)
    return Response(body.model_dump_json(), media_type="application/json")


@router.get(
    "/v1/images/{name}",
    responses={
        200: {"content": IMAGE_CONTENT, "description": "the stored image"},
        304: {"description": "not modified (If-None-Match)"},
        **ERRORS,
    },
)
async def stored_image(name: str, request: Request, data_plane: DataPlaneDep) -> Response:
    digest, _, extension = name.partition(".")
    image = await data_plane.image(digest)
    if image is None or extension != image.output_format:
        raise NotFound(f"no image {name}: unknown, or evicted from the image store")
    headers = {"ETag": f'"{digest}"', "Cache-Control": IMMUTABLE}
    if request.headers.get("if-none-match", "").strip() in (f'"{digest}"', f'W/"{digest}"'):
        return Response(status_code=304, headers=headers)
    return Response(image.data, media_type=image.media_type, headers=headers)


def requested_image_format(accept: str) -> str | None:
    """The image format named first in Accept, if the client asked for raw image bytes."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type in FORMAT_BY_MEDIA_TYPE:
            return FORMAT_BY_MEDIA_TYPE[media_type]
        if media_type in ("application/json", "*/*"):
            return None
    return None


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items())


def raw_image_response(data_plane: DataPlane, result: GenerationResult) -> Response:
    image = result.images[0]
    headers = {
        "X-Seed": str(image.seed),
        "Server-Timing": server_timing(result.timings_ms),
        "ETag": f'"{image.digest}"',
        "Content-Location": data_plane.image_url(image.digest, result.request.output_format),
    }
    if result.request.model_version is not None:
        headers[VERSION_HEADER] = result.request.model_version
    if result.warnings:
        headers["Warning"] = '199 sd-serving "' + "; ".join(result.warnings) + '"'
    return Response(image.data, media_type=result.media_type, headers=headers)


def generate_response(data_plane: DataPlane, result: GenerationResult) -> GenerateResponse:
    request = result.request
    return GenerateResponse(
        model=request.model,
        model_version=request.model_version,
        created=int(time.time()),
        images=[
            ImageOut(
                b64_data=base64.b64encode(image.data).decode("ascii"),
                url=data_plane.image_url(image.digest, request.output_format),
                digest=image.digest,
                seed=image.seed,
                format=request.output_format,
                media_type=result.media_type,
                width=request.width,
                height=request.height,
            )
            for image in result.images
        ],
        seeds=[image.seed for image in result.images],
        cached=result.cached,
        parameters=request,
        timings_ms={name: round(value, 2) for name, value in result.timings_ms.items()},
        warnings=result.warnings,
    )
