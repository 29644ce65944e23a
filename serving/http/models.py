"""The pydantic models of the REST protocols: the same classes parse, validate and document the
request bodies (in /openapi.json) and build the answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.dataplane.jobs import JobView
from serving.dataplane.request import GenerateParams, GenerationRequest, LoraParam
from serving.errors import ErrorDetail

# -- /v1/generate


class ImageOut(BaseModel):
    b64_data: str
    url: str
    digest: str = Field(
        description="the image's name (sha256, content-addressed): feedback names it"
    )
    seed: int
    format: str
    media_type: str
    width: int
    height: int


class GenerateResponse(BaseModel):
    model: str
    model_version: str | None = Field(
        None, description="the model version that made the images (None: unversioned model)"
    )
    created: int
    images: list[ImageOut]
    seeds: list[int]
    cached: bool
    parameters: GenerationRequest
    timings_ms: dict[str, float]
    warnings: list[str]


class ErrorResponse(BaseModel):
    error: ErrorDetail


class V2ErrorResponse(BaseModel):
    """The v2 protocol's error: `error` is the message; our code and field beside it."""

    error: str
    code: str
    message: str
    field: str | None = None


# -- OpenAI images


class OpenAIImageRequest(BaseModel):
    """OpenAI's fields, and Stable Diffusion's own parameters as extra fields."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    n: int = 1
    size: str | None = Field(None, description="WIDTHxHEIGHT, e.g. 512x512, or auto")
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
    priority: str | None = Field(
        None, description="interactive (the default: served first) or batch"
    )
    loras: list[LoraParam] | None = Field(
        None, description="LoRA adapters, each {name, scale}; GET /v1/loras lists them"
    )


class OpenAIImage(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    model_version: str | None = None  # ours: the model version that made them


# -- KServe v1


class V1PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[GenerateParams] = Field(min_length=1)


class V1Prediction(BaseModel):
    images: list[str]
    seeds: list[int]
    format: str
    model_version: str | None = None


class V1PredictResponse(BaseModel):
    predictions: list[V1Prediction]


class V1Models(BaseModel):
    models: list[str]


class V1ModelStatus(BaseModel):
    name: str
    ready: bool
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="family, request defaults and limits, samplers"
    )


# -- jobs


class JobRequest(GenerateParams):
    webhook_url: str | None = Field(
        None,
        description="http(s) URL that receives the finished job, signed with "
        "X-SD-Signature-256: sha256=HMAC(SD_WEBHOOK_SECRET, body)",
    )
    preview: bool = Field(
        False,
        strict=True,
        description="progress events carry a low-resolution preview (PNG data URL)",
    )

    def params(self) -> GenerateParams:
        return GenerateParams.model_validate(self.model_dump(exclude={"webhook_url", "preview"}))


class JobResponse(JobView):
    links: dict[str, str]


# -- health


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool
    stages: dict[str, bool]


ERROR_STATUSES = {
    400: "malformed body",
    401: "missing or wrong API key",
    404: "unknown model, image or job",
    413: "body over the size limit",
    422: "a field out of its limits (the message names field and limit)",
    429: "rate limited (Retry-After)",
    503: "queue full or not ready (Retry-After)",
    504: "deadline exceeded",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in ERROR_STATUSES.items()
}
V2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2ErrorResponse, "description": text}
    for status, text in ERROR_STATUSES.items()
}
IMAGE_CONTENT: dict[str, dict[str, Any]] = {
    media: {} for media in ("image/png", "image/jpeg", "image/webp")
}
