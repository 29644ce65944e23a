"""The HTTP app: /v1/generate, CDN image URLs, health, and the OpenAI and KServe v1/v2 protocols.
Translation only: every route maps onto GenerationRequest and GenerationService.produce."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from kserve.protocol.dataplane import DataPlane

from serving.codecs import MEDIA_TYPES
from serving.errors import InvalidArgument, NotFound
from serving.http.auth import install_api_key_auth
from serving.http.bodies import json_body, requested_timeout
from serving.http.body_limit import BodyLimit
from serving.http.errors import install_error_handlers
from serving.http.jobs import install_job_routes
from serving.http.kserve_v1 import install_kserve_v1_routes
from serving.http.kserve_v2 import install_kserve_v2_routes
from serving.http.observability import install_request_metrics
from serving.http.openai_images import install_openai_routes
from serving.http.ratelimit import install_rate_limit
from serving.http.schemas import (
    ERRORS,
    IMAGE_CONTENT,
    GenerateResponse,
    generate_params_schema,
    request_body,
)
from serving.http.web import install_web_page
from serving.jobrunner import JobRunner
from serving.kserve_v2 import KSERVE_ERRORS, kserve_error
from serving.metrics import IngressMetrics
from serving.ratelimit import TokenBuckets
from serving.request import parse_params
from serving.service import EncodedResult, GenerationService

_FORMAT_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}
IMMUTABLE = "public, max-age=31536000, immutable"


def image_url(service: GenerationService, result: EncodedResult, index: int) -> str:
    image = result.images[index]
    base = service.settings.public_base_url.rstrip("/")
    return f"{base}/v1/images/{image.digest}.{result.request.output_format}"


def result_observer(metrics: IngressMetrics) -> Callable[[EncodedResult], None]:
    """What every protocol calls with its finished result: images produced, stage latencies."""

    def observe(result: EncodedResult) -> None:
        metrics.record_result(result.timings_ms, 0 if result.cached else len(result.images))

    return observe


def create_http_app(
    service: GenerationService,
    metrics: IngressMetrics,
    data_plane: DataPlane,
    api_keys: tuple[bytes, ...] | None,
    buckets: TokenBuckets | None,
) -> FastAPI:
    """The ingress app. kserve's `data_plane`, the API keys and the rate-limit `buckets` are the
    ones the gRPC methods use too (None: no keys, no limit)."""
    app = FastAPI(title="sd-serving", version="0.1.0")
    record = metrics.record_rejection
    install_error_handlers(app, record, KSERVE_ERRORS, kserve_error)
    settings = service.settings
    if buckets is not None:  # runs after auth: added before it
        install_rate_limit(app, buckets, record)
    if api_keys is not None:
        install_api_key_auth(app, api_keys, record)
    install_request_metrics(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, record=record)
    if settings.cors_allow_origins:  # outermost: preflights must not need an API key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Timeout-S", "Last-Event-ID"],
            expose_headers=["Retry-After", "X-Seed", "Server-Timing", "ETag", "Location"],
        )

    observe = result_observer(metrics)

    @app.post(
        "/v1/generate",
        openapi_extra=request_body(generate_params_schema()),
        responses={
            200: {
                "model": GenerateResponse,
                "content": IMAGE_CONTENT,
                "description": "JSON, or the image itself with Accept: image/*",
            },
            **ERRORS,
        },
    )
    async def generate(request: Request) -> Response:
        params = parse_params(await json_body(request))
        raw_format = _requested_image_format(request.headers.get("accept", ""))
        if raw_format is not None:
            if params.num_images != 1:
                raise InvalidArgument(
                    "num_images",
                    f"a raw image response (Accept: {MEDIA_TYPES[raw_format]}) carries exactly one"
                    f" image (got {params.num_images}); ask for application/json for several",
                )
            params = params.model_copy(update={"output_format": raw_format})
        result = await service.produce(
            service.resolve(params),
            determined=params.seed is not None,
            timeout_s=requested_timeout(request),
        )
        observe(result)
        if raw_format is not None:
            return _raw_image_response(service, result)
        return JSONResponse(_json_result(service, result))

    @app.get(
        "/v1/images/{name}",
        responses={
            200: {"content": IMAGE_CONTENT, "description": "the stored image"},
            304: {"description": "not modified (If-None-Match)"},
            **ERRORS,
        },
    )
    async def stored_image(name: str, request: Request) -> Response:
        digest, _, extension = name.partition(".")
        image = await service.image(digest)
        if image is None or extension != image.output_format:
            raise NotFound(f"no image {name}: unknown, or evicted from the image store")
        headers = {"ETag": f'"{digest}"', "Cache-Control": IMMUTABLE}
        if request.headers.get("if-none-match", "").strip() in (f'"{digest}"', f'W/"{digest}"'):
            return Response(status_code=304, headers=headers)
        return Response(image.data, media_type=image.media_type, headers=headers)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        stages = await service.readiness()
        is_ready = all(stages.values())
        return JSONResponse(
            {"ready": is_ready, "stages": stages}, status_code=200 if is_ready else 503
        )

    install_openai_routes(app, service, observe, image_url)
    install_kserve_v1_routes(app, service, observe)
    runner = JobRunner(
        service, service.stages.results, settings, partial(image_url, service), observe
    )
    install_job_routes(app, service, runner, service.stages.results)
    install_web_page(app)
    install_kserve_v2_routes(app, data_plane)
    return app


def _requested_image_format(accept: str) -> str | None:
    """The image format named first in Accept, if the client asked for raw image bytes."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type in _FORMAT_BY_MEDIA_TYPE:
            return _FORMAT_BY_MEDIA_TYPE[media_type]
        if media_type in ("application/json", "*/*"):
            return None
    return None


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items())


def _raw_image_response(service: GenerationService, result: EncodedResult) -> Response:
    headers = {
        "X-Seed": str(result.images[0].seed),
        "Server-Timing": _server_timing(result.timings_ms),
        "ETag": f'"{result.images[0].digest}"',
        "Content-Location": image_url(service, result, 0),
    }
    if result.warnings:
        headers["Warning"] = '199 sd-serving "' + "; ".join(result.warnings) + '"'
    return Response(result.images[0].data, media_type=result.media_type, headers=headers)


def _json_result(service: GenerationService, result: EncodedResult) -> dict[str, Any]:
    request = result.request
    return {
        "model": service.settings.model_name,
        "created": int(time.time()),
        "images": [
            {
                "b64_data": base64.b64encode(image.data).decode("ascii"),
                "url": image_url(service, result, index),
                "seed": image.seed,
                "format": request.output_format,
                "media_type": result.media_type,
                "width": request.width,
                "height": request.height,
            }
            for index, image in enumerate(result.images)
        ],
        "seeds": [image.seed for image in result.images],
        "cached": result.cached,
        "parameters": request.model_dump(),
        "timings_ms": {name: round(value, 2) for name, value in result.timings_ms.items()},
        "warnings": result.warnings,
    }
