"""The one request type every protocol maps onto, its validation against the limits, and the
context each transport builds for a call (deadline, who is calling)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from serving.dataplane.codecs import base64_image, image_size, input_image
from serving.errors import InvalidArgument
from serving.settings import Limits, OutputFormat, SchedulerName

SCHEDULER_NAMES: tuple[str, ...] = SchedulerName.__args__  # type: ignore[attr-defined]
OUTPUT_FORMATS: tuple[str, ...] = OutputFormat.__args__  # type: ignore[attr-defined]
MAX_SEED = 2**32 - 1
# The client's own deadline in seconds: an HTTP header, or gRPC metadata of the same name.
TIMEOUT_HEADER = "x-timeout-s"
# When the request reached the service (wall clock), stamped by the HTTP proxy
# (serving/http/proxy.py): the deadline counts from there.
RECEIVED_AT_HEADER = "x-sd-received-at"
# The model version that made an image, on HTTP answers that carry no JSON body.
VERSION_HEADER = "X-Model-Version"


Pair = tuple[int, int]
SIZE_CONDITIONING = ("original_size", "crops_coords_top_left", "target_size")


DEFAULT_STRENGTH = 0.8  # the diffusers image-to-image pipelines' default
DEFAULT_INPAINT_STRENGTH = 1.0  # the inpainting pipelines' default
# A request's LoRA adapters: (name, scale) pairs in the order given.
Loras = tuple[tuple[str, float], ...]


class LoraParam(BaseModel):
    """One adapter a request applies."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="an adapter's name, as GET /v1/loras lists it")
    scale: float = Field(1.0, description="how strongly it applies (default 1; negative inverts)")


_LORA_LIST = TypeAdapter(list[LoraParam])


def lora_list(text: str | None, field: str) -> list[LoraParam] | None:
    """Adapters sent as JSON text (a form field, a v2 parameter)."""
    if text is None:
        return None
    try:
        return _LORA_LIST.validate_json(text)
    except ValidationError as error:  # pydantic's, for bad JSON as for a wrong field
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        raise InvalidArgument(
            field, f'must be JSON: [{{"name": ..., "scale": ...}}] ({problem})'
        ) from None


class GenerateParams(BaseModel):
    """What a client may send. Types are checked here; ranges in `resolve` against the limits."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="a served model's name (default: the default), or `name@version` for one "
        "of its versions (default: its champion, or its challenger on canary)",
    )
    prompt: str = Field(description="what to draw (at most 77 CLIP tokens)")
    negative_prompt: str = Field("", description="what to steer away from")
    num_images: int = Field(1, description="images to make; image i uses seed + i")
    width: int | None = Field(
        None, description="pixels, a multiple of the model's VAE factor, 8 (default: the model's)"
    )
    height: int | None = Field(
        None, description="pixels, a multiple of the model's VAE factor, 8 (default: the model's)"
    )
    steps: int | None = Field(None, description="denoising steps")
    guidance_scale: float | None = Field(None, description="classifier-free guidance (≤ 1: off)")
    seed: int | None = Field(None, description="0 to 2**32 - 1; random when left out")
    scheduler: str | None = Field(
        None, description="a sampler the model takes (`default`: the one it ships with)"
    )
    output_format: str | None = Field(None, description=f"one of {', '.join(OUTPUT_FORMATS)}")
    guidance_rescale: float | None = Field(
        None, description="0 to 1: rescales guided noise (zero-terminal-SNR models); 0 is off"
    )
    original_size: Pair | None = Field(
        None, description="SDXL: [height, width] the image seems to come from (default: its size)"
    )
    crops_coords_top_left: Pair | None = Field(
        None, description="SDXL: [top, left] of the seeming crop (default: [0, 0])"
    )
    target_size: Pair | None = Field(None, description="SDXL: [height, width] (default: its size)")
    priority: str | None = Field(
        None,
        description="interactive (the default: served first) or batch, at most what the API "
        "key allows",
    )
    image: str | None = Field(
        None,
        description="image-to-image: the picture to start from, base64 (or a data: URL) of a "
        "PNG, JPEG or WebP, or the URL of an image this server made (/v1/images/<digest>.<ext>); "
        "resized to width x height (default: its own size, rounded down to the VAE factor)",
    )
    strength: float | None = Field(
        None,
        description=f"with `image`: above 0, at most 1: how much of the schedule runs over it "
        f"(1: all of it, keeping little of the picture; default {DEFAULT_STRENGTH})",
    )
    mask: str | None = Field(
        None,
        description="inpainting, with `image`: base64 (or a data: URL) of a PNG, JPEG or WebP "
        "the image's size; white repaints, black keeps (as diffusers' inpainting pipelines)",
    )
    loras: list[LoraParam] | None = Field(
        None,
        description="LoRA adapters to apply, each {name, scale}: at most 4, scale -2 to 2 "
        "(the server's limits); GET /v1/loras lists the adapters",
    )


class GenerationRequest(BaseModel):
    """A fully resolved, validated request: every field has its final value."""

    model_config = ConfigDict(frozen=True)

    model: str
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
    guidance_rescale: float = 0.0
    # SDXL's size conditioning; None for models without it.
    original_size: Pair | None = None
    crops_coords_top_left: Pair | None = None
    target_size: Pair | None = None
    # Image-to-image: the input image's file (left out of the request's JSON: its digest stands
    # for it there and in the result cache's key) and the strength.
    image: bytes | None = Field(None, exclude=True)
    image_digest: str | None = None
    strength: float | None = None
    # Inpainting: the mask's file (left out of the JSON like the image) and its digest.
    mask: bytes | None = Field(None, exclude=True)
    mask_digest: str | None = None
    loras: Loras = ()
    # The model version that serves it (None: an unversioned model) and that version's adapter.
    model_version: str | None = None
    version_loras: Loras = ()

    def seeds(self) -> list[int]:
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.num_images)]

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def adapters(self) -> Loras:
        """Every adapter the stages apply: the version's, then the request's own."""
        return self.version_loras + self.loras


@dataclass(frozen=True)
class ModelProfile:
    """What requests to one served model default to, and may ask for."""

    name: str
    kind: str  # sd, sd-v, sd-turbo, lcm, sdxl, sdxl-turbo
    size: int
    steps: int
    guidance_scale: float
    scheduler: str
    max_steps: int
    samplers: tuple[str, ...]
    size_conditioning: bool  # SDXL: original_size, crops_coords_top_left, target_size
    output_format: str
    size_multiple: int = 8  # the VAE's downsampling factor: sizes are multiples of it
    inpainting: bool = False  # a 9-channel UNet: every request brings an image and a mask


def resolve(params: GenerateParams, limits: Limits, model: ModelProfile) -> GenerationRequest:
    """Apply the model's defaults and check every field against the limits."""
    if not params.prompt.strip():
        raise InvalidArgument("prompt", "must not be empty")
    for field in ("prompt", "negative_prompt"):
        length = len(getattr(params, field))
        if length > limits.max_prompt_chars:
            raise InvalidArgument(
                field, f"is {length} characters; the limit is {limits.max_prompt_chars}"
            )
    _check_range("num_images", params.num_images, 1, limits.max_num_images)
    image, strength, own = image_input(params, limits, model)
    mask = mask_input(params, limits, model, own)
    width = params.width if params.width is not None else own[1] if own else model.size
    height = params.height if params.height is not None else own[0] if own else model.size
    _check_size("width", width, limits.min_size, limits.max_width, model.size_multiple)
    _check_size("height", height, limits.min_size, limits.max_height, model.size_multiple)
    steps = params.steps if params.steps is not None else model.steps
    _check_range("steps", steps, limits.min_steps, min(limits.max_steps, model.max_steps))
    if strength is not None and int(steps * strength) < 1:
        raise InvalidArgument(
            "strength", f"{strength} of {steps} steps leaves none to run; raise steps or strength"
        )
    guidance = params.guidance_scale if params.guidance_scale is not None else model.guidance_scale
    if not 0.0 <= guidance <= limits.max_guidance_scale:
        raise InvalidArgument(
            "guidance_scale", f"must be between 0 and {limits.max_guidance_scale} (got {guidance})"
        )
    rescale = params.guidance_rescale or 0.0
    if not 0.0 <= rescale <= 1.0:
        raise InvalidArgument("guidance_rescale", f"must be between 0 and 1 (got {rescale})")
    scheduler = params.scheduler or model.scheduler
    if scheduler not in model.samplers:
        raise InvalidArgument(
            "scheduler",
            f"unknown scheduler {scheduler!r} for {model.name} ({model.kind}); choose one of "
            f"{', '.join(model.samplers)}",
        )
    output_format = normalize_format(params.output_format or model.output_format)
    seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
    _check_range("seed", seed, 0, MAX_SEED)
    sizes = size_conditioning(params, model, height, width)
    loras = lora_choices(params.loras or [], limits)
    return GenerationRequest(
        model=model.name,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        num_images=params.num_images,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seed=seed,
        scheduler=scheduler,  # checked against the model's samplers above
        output_format=output_format,  # checked against OUTPUT_FORMATS
        guidance_rescale=rescale,
        **sizes,
        image=image,
        image_digest=None if image is None else hashlib.sha256(image).hexdigest(),
        strength=strength,
        mask=mask,
        mask_digest=None if mask is None else hashlib.sha256(mask).hexdigest(),
        loras=loras,
    )


def lora_choices(loras: list[LoraParam], limits: Limits) -> Loras:
    """The request's adapters, counted and their scales checked; names are checked against
    the adapter library by the data plane."""
    if len(loras) > limits.max_loras:
        raise InvalidArgument(
            "loras", f"has {len(loras)} adapters; the limit is {limits.max_loras} a request"
        )
    seen: set[str] = set()
    for index, lora in enumerate(loras):
        if not lora.name:
            raise InvalidArgument(f"loras[{index}].name", "must not be empty")
        if lora.name in seen:
            raise InvalidArgument(f"loras[{index}].name", f"{lora.name!r} is given twice")
        seen.add(lora.name)
        if not abs(lora.scale) <= limits.max_lora_scale:
            bound = limits.max_lora_scale
            raise InvalidArgument(
                f"loras[{index}].scale",
                f"must be between {-bound:g} and {bound:g} (got {lora.scale})",
            )
    return tuple((lora.name, float(lora.scale)) for lora in loras)


def image_input(
    params: GenerateParams, limits: Limits, model: ModelProfile
) -> tuple[bytes | None, float | None, tuple[int, int] | None]:
    """For an image-to-image request: the input image's file bytes (checked), the strength, and
    the (height, width) it gives the output when the request names none (its own, rounded down
    to the VAE factor, as the diffusers image processor does). Nones for text-to-image."""
    if params.image is None:
        if params.strength is not None:
            raise InvalidArgument("strength", "applies only with an `image`")
        return None, None, None
    data = base64_image(params.image, "image")
    width, height = input_image(data, "image", limits.max_input_side).size
    default = DEFAULT_INPAINT_STRENGTH if params.mask is not None else DEFAULT_STRENGTH
    strength = default if params.strength is None else params.strength
    if not 0.0 < strength <= 1.0:
        raise InvalidArgument("strength", f"must be above 0 and at most 1 (got {strength})")
    own = (height - height % model.size_multiple, width - width % model.size_multiple)
    if params.width is None or params.height is None:
        low, high = limits.min_size, min(limits.max_width, limits.max_height)
        if not all(low <= side <= high for side in own):
            raise InvalidArgument(
                "image",
                f"is {width}x{height}; the output takes its size unless width and height are "
                f"sent, and sides must be {low} to {high}: send width and height to resize it",
            )
    return data, strength, own


def mask_input(
    params: GenerateParams,
    limits: Limits,
    model: ModelProfile,
    own: tuple[int, int] | None,
) -> bytes | None:
    """An inpainting request's mask file, checked: with an image, and of the image's size; an
    inpainting model refuses a request without one."""
    if params.mask is None:
        if model.inpainting:
            raise InvalidArgument(
                "mask",
                f"{model.name} is an inpainting model: send an `image` and a `mask` (white "
                "repaints)",
            )
        return None
    if params.image is None:
        raise InvalidArgument("mask", "applies only with an `image` (the picture to repaint)")
    data = base64_image(params.mask, "mask")
    mask_width, mask_height = input_image(data, "mask", limits.max_input_side).size
    image_width, image_height = image_size(base64_image(params.image, "image"))
    if (mask_width, mask_height) != (image_width, image_height):
        raise InvalidArgument(
            "mask",
            f"is {mask_width}x{mask_height}; the image is {image_width}x{image_height}: they "
            "must be the same size",
        )
    return data


def size_conditioning(
    params: GenerateParams, model: ModelProfile, height: int, width: int
) -> dict[str, Pair]:
    """SDXL's original_size, crops_coords_top_left and target_size, with the defaults
    StableDiffusionXLPipeline uses; refused by models that take none."""
    given = {name: getattr(params, name) for name in SIZE_CONDITIONING}
    if not model.size_conditioning:
        for name, value in given.items():
            if value is not None:
                raise InvalidArgument(
                    name, f"{model.name} ({model.kind}) takes no size conditioning; it is SDXL's"
                )
        return {}
    defaults = {
        "original_size": (height, width),
        "crops_coords_top_left": (0, 0),
        "target_size": (height, width),
    }
    sizes = {name: value or defaults[name] for name, value in given.items()}
    for name, (first, second) in sizes.items():
        low = 0 if name == "crops_coords_top_left" else 1
        for value in (first, second):
            _check_range(name, value, low, 16384)
    return sizes


def normalize_format(value: str, field: str = "output_format") -> str:
    """`png`, `jpeg` (also `jpg`) or `webp`, any case; anything else is refused naming `field`."""
    output_format = value.lower()
    if output_format == "jpg":
        output_format = "jpeg"
    if output_format not in OUTPUT_FORMATS:
        raise InvalidArgument(
            field, f"unknown format {value!r}; choose one of {', '.join(OUTPUT_FORMATS)}"
        )
    return output_format


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high} (got {value})")


def _check_size(field: str, value: int, low: int, high: int, multiple: int) -> None:
    if value % multiple:
        raise InvalidArgument(
            field, f"must be a multiple of {multiple}, the model's VAE factor (got {value})"
        )
    _check_range(field, value, low, high)


def parse_timeout(raw: str | None) -> float | None:
    """An X-Timeout-S value (HTTP header or gRPC metadata) in seconds; None when absent."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidArgument("X-Timeout-S", f"must be a positive number of seconds (got {raw!r})")
    return value


@dataclass(frozen=True)
class RequestContext:
    """What a transport knows about a call besides its body: the client's own deadline, its
    `Authorization` value and its address. Built once per call by the transport."""

    timeout_s: float | None = None
    authorization: str | None = None
    address: str | None = None
    received_at: float | None = None  # wall clock; None: when the data plane starts on it

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], address: str | None) -> RequestContext:
        """From HTTP headers or gRPC metadata (lower-case names)."""
        return cls(
            timeout_s=parse_timeout(headers.get(TIMEOUT_HEADER)),
            authorization=headers.get("authorization"),
            address=address,
            received_at=_received_at(headers.get(RECEIVED_AT_HEADER)),
        )

    @property
    def client_id(self) -> str:
        return client_id(self.authorization, self.address)


def _received_at(raw: str | None) -> float | None:
    """The proxy's arrival stamp; never later than now (a stamp cannot extend a deadline)."""
    try:
        return None if raw is None else min(float(raw), time.time())
    except ValueError:
        return None


def client_id(authorization: str | None, address: str | None) -> str:
    """Who a rate-limit bucket belongs to: the key's hash (never the key), else the address."""
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return "addr:" + (address or "unknown")
