"""The first HTTP API: /v1/generate and the v2 health endpoints. Translation only."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serving.codecs import MEDIA_TYPES, encode_image
from serving.errors import InvalidArgument, MalformedRequest
from serving.http.auth import install_api_key_auth, load_api_keys
from serving.http.errors import install_error_handlers
from serving.http.observability import install_request_metrics
from serving.metrics import IngressMetrics
from serving.request import parse_params
from serving.service import GenerationResult, GenerationService

_FORMAT_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}


def create_http_app(service: GenerationService, metrics: IngressMetrics | None = None) -> FastAPI:
    app = FastAPI(title="sd-serving", version="0.1.0")
    record = None if metrics is None else metrics.record_rejection
    install_error_handlers(app, record)
    if service.settings.api_keys_file is not None:
        install_api_key_auth(app, load_api_keys(service.settings.api_keys_file), record)
    if metrics is not None:
        install_request_metrics(app, metrics)

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        params = parse_params(await _json_body(request))
        raw_format = _requested_image_format(request.headers.get("accept", ""))
        if raw_format is not None:
            if params.num_images != 1:
                raise InvalidArgument(
                    "num_images",
                    f"a raw image response (Accept: {MEDIA_TYPES[raw_format]}) carries exactly one"
                    f" image (got {params.num_images}); ask for application/json for several",
                )
            params = params.model_copy(update={"output_format": raw_format})
        resolved = service.resolve(params)
        started = time.perf_counter()
        result = await service.generate(resolved)
        encoded, timings = _encode_all(result, started)
        if metrics is not None:
            metrics.record_result(timings, len(encoded))
        if raw_format is not None:
            return _raw_image_response(result, encoded, timings)
        return JSONResponse(_json_result(result, service.settings.model_name, encoded, timings))

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

    return app


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise MalformedRequest("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedRequest(f"malformed JSON: {error}") from None


def _requested_image_format(accept: str) -> str | None:
    """The image format named first in Accept, if the client asked for raw image bytes."""
    for part in accept.split(","):
        media_type = part.split(";")[0].strip().lower()
        if media_type in _FORMAT_BY_MEDIA_TYPE:
            return _FORMAT_BY_MEDIA_TYPE[media_type]
        if media_type in ("application/json", "*/*"):
            return None
    return None


def _encode_all(result: GenerationResult, started: float) -> tuple[list[bytes], dict[str, float]]:
    fmt = result.request.output_format
    before = time.perf_counter()
    encoded = [encode_image(image, fmt) for image in result.images]
    timings = dict(result.timings_ms)
    timings["encode"] = (time.perf_counter() - before) * 1000
    timings["total"] = (time.perf_counter() - started) * 1000
    return encoded, timings


def _raw_image_response(
    result: GenerationResult, encoded: list[bytes], timings: dict[str, float]
) -> Response:
    server_timing = ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items())
    headers = {"X-Seed": str(result.seeds[0]), "Server-Timing": server_timing}
    if result.warnings:
        headers["Warning"] = '199 sd-serving "' + "; ".join(result.warnings) + '"'
    return Response(
        encoded[0], media_type=MEDIA_TYPES[result.request.output_format], headers=headers
    )


def _json_result(
    result: GenerationResult, model_name: str, encoded: list[bytes], timings: dict[str, float]
) -> dict[str, Any]:
    request = result.request
    return {
        "model": model_name,
        "created": int(time.time()),
        "images": [
            {
                "b64_data": base64.b64encode(data).decode("ascii"),
                "seed": seed,
                "format": request.output_format,
                "media_type": MEDIA_TYPES[request.output_format],
                "width": request.width,
                "height": request.height,
            }
            for data, seed in zip(encoded, result.seeds, strict=True)
        ],
        "seeds": result.seeds,
        "parameters": request.model_dump(),
        "timings_ms": {name: round(value, 2) for name, value in timings.items()},
        "warnings": result.warnings,
    }
