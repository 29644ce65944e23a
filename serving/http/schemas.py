"""OpenAPI descriptions of the hand-parsed bodies and of the answers, for /openapi.json.

Bodies are parsed by hand (to name the bad field in our own error shape), so FastAPI cannot see
them: these declarations put them into the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from serving.request import GenerateParams


class ImageOut(BaseModel):
    b64_data: str
    url: str
    seed: int
    format: str
    media_type: str
    width: int
    height: int


class GenerateResponse(BaseModel):
    model: str
    created: int
    images: list[ImageOut]
    seeds: list[int]
    cached: bool
    parameters: dict[str, Any]
    timings_ms: dict[str, float]
    warnings: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class OpenAIImage(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]


class V1Prediction(BaseModel):
    images: list[str]
    seeds: list[int]
    format: str


class V1PredictResponse(BaseModel):
    predictions: list[V1Prediction]


class JobProgress(BaseModel):
    steps_done: int
    steps_total: int
    fraction: float


class JobImage(BaseModel):
    url: str
    digest: str
    seed: int
    media_type: str


class JobResult(BaseModel):
    images: list[JobImage]
    cached: bool
    timings_ms: dict[str, float]
    warnings: list[str]


class JobView(BaseModel):
    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: JobProgress
    parameters: dict[str, Any]
    result: JobResult | None
    error: ErrorDetail | None
    webhook: dict[str, Any] | None = Field(description="how the webhook delivery went")
    created_at: float
    updated_at: float
    links: dict[str, str]


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def generate_params_schema() -> dict[str, Any]:
    return GenerateParams.model_json_schema()


def v1_predict_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "minItems": 1, "items": generate_params_schema()}
        },
    }


def job_request_schema() -> dict[str, Any]:
    schema = generate_params_schema()
    schema["properties"] = {
        **schema["properties"],
        "webhook_url": {
            "type": "string",
            "format": "uri",
            "description": "http(s) URL that receives the finished job, signed with "
            "X-SD-Signature-256: sha256=HMAC(SD_WEBHOOK_SECRET, body)",
        },
        "preview": {
            "type": "boolean",
            "default": False,
            "description": "progress events carry a low-resolution preview (PNG data URL)",
        },
    }
    return schema


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "malformed body",
        401: "missing or wrong API key",
        404: "unknown model or image",
        422: "a field out of its limits (the message names field and limit)",
        429: "rate limited (Retry-After)",
        503: "queue full or not ready (Retry-After)",
        504: "deadline exceeded",
    }.items()
}
IMAGE_CONTENT: dict[str, dict[str, Any]] = {
    media: {} for media in ("image/png", "image/jpeg", "image/webp")
}
