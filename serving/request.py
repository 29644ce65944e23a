"""The one request type every protocol maps onto, and its validation against the limits."""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import InvalidArgument, MalformedRequest
from serving.settings import Defaults, Limits, OutputFormat, SchedulerName

SCHEDULER_NAMES: tuple[str, ...] = SchedulerName.__args__  # type: ignore[attr-defined]
OUTPUT_FORMATS: tuple[str, ...] = OutputFormat.__args__  # type: ignore[attr-defined]
MAX_SEED = 2**32 - 1
BodyT = TypeVar("BodyT", bound=BaseModel)


class GenerateParams(BaseModel):
    """What a client may send. Types are checked here; ranges in `resolve` against the limits."""

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str
    negative_prompt: str = ""
    num_images: int = 1
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    output_format: str | None = None


class GenerationRequest(BaseModel):
    """A fully resolved, validated request: every field has its final value."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    negative_prompt: str
    num_images: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int = Field(description="seed of the first image; image i uses seed + i")
    scheduler: SchedulerName
    output_format: OutputFormat

    def seeds(self) -> list[int]:
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.num_images)]


def validate_body(model: type[BodyT], data: Any) -> BodyT:
    """A decoded JSON body as `model`, naming the first bad field (every protocol's bodies)."""
    if not isinstance(data, dict):
        raise MalformedRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise InvalidArgument(field, "unknown field") from None
        if first["type"] == "missing":
            raise InvalidArgument(field, "is required") from None
        raise InvalidArgument(field, first["msg"]) from None


def parse_params(data: Any) -> GenerateParams:
    return validate_body(GenerateParams, data)


def resolve(
    params: GenerateParams, limits: Limits, defaults: Defaults, native_size: int
) -> GenerationRequest:
    """Apply defaults and check every field against the limits."""
    if not params.prompt.strip():
        raise InvalidArgument("prompt", "must not be empty")
    for field in ("prompt", "negative_prompt"):
        length = len(getattr(params, field))
        if length > limits.max_prompt_chars:
            raise InvalidArgument(
                field, f"is {length} characters; the limit is {limits.max_prompt_chars}"
            )
    _check_range("num_images", params.num_images, 1, limits.max_num_images)
    width = params.width if params.width is not None else native_size
    height = params.height if params.height is not None else native_size
    _check_size("width", width, limits.min_size, limits.max_width)
    _check_size("height", height, limits.min_size, limits.max_height)
    steps = params.steps if params.steps is not None else defaults.steps
    _check_range("steps", steps, limits.min_steps, limits.max_steps)
    guidance = (
        params.guidance_scale if params.guidance_scale is not None else defaults.guidance_scale
    )
    if not 0.0 <= guidance <= limits.max_guidance_scale:
        raise InvalidArgument(
            "guidance_scale", f"must be between 0 and {limits.max_guidance_scale} (got {guidance})"
        )
    scheduler = params.scheduler or defaults.scheduler
    if scheduler not in SCHEDULER_NAMES:
        raise InvalidArgument(
            "scheduler",
            f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}",
        )
    output_format = (params.output_format or defaults.output_format).lower()
    if output_format == "jpg":
        output_format = "jpeg"
    if output_format not in OUTPUT_FORMATS:
        raise InvalidArgument(
            "output_format",
            f"unknown format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}",
        )
    seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
    _check_range("seed", seed, 0, MAX_SEED)
    return GenerationRequest(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        num_images=params.num_images,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        scheduler=scheduler,  # checked against SCHEDULER_NAMES above
        output_format=output_format,  # checked against OUTPUT_FORMATS
    )


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high} (got {value})")


def _check_size(field: str, value: int, low: int, high: int) -> None:
    if value % 8:
        raise InvalidArgument(field, f"must be a multiple of 8 (got {value})")
    _check_range(field, value, low, high)
