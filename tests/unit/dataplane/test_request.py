"""Every bad field is refused with a message naming the field and the limit; the context a
transport builds from its headers."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from serving.dataplane.model import GENERAL_SAMPLERS
from serving.dataplane.request import (
    MAX_SEED,
    GenerateParams,
    GenerationRequest,
    ModelProfile,
    RequestContext,
    resolve,
)
from serving.errors import InvalidArgument
from serving.settings import Limits

LIMITS = Limits()
SD = ModelProfile(
    name="sd-embedded",
    kind="sd",
    size=128,
    steps=20,
    guidance_scale=7.5,
    scheduler="default",
    max_steps=10**6,
    samplers=(*GENERAL_SAMPLERS, "default"),
    size_conditioning=False,
    output_format="png",
)
SDXL = ModelProfile(**{**SD.__dict__, "name": "xl", "kind": "sdxl", "size_conditioning": True})
LCM = ModelProfile(
    **{
        **SD.__dict__,
        "name": "lcm",
        "kind": "lcm",
        "steps": 4,
        "max_steps": 8,
        "samplers": ("lcm", "default"),
    }
)


def resolved(profile: ModelProfile = SD, **fields: Any) -> GenerationRequest:
    return resolve(GenerateParams(prompt="a red apple", **fields), LIMITS, profile)


def test_defaults_fill_every_field() -> None:
    request = resolved()
    assert (request.width, request.height) == (128, 128)
    assert (request.steps, request.guidance_scale) == (20, 7.5)
    assert request.scheduler == "default" and request.model == "sd-embedded"
    assert request.output_format == "png" and request.guidance_rescale == 0.0
    assert request.original_size is None  # no size conditioning on SD 1.x
    assert 0 <= request.seed <= MAX_SEED


def test_sdxl_size_conditioning_defaults_as_its_pipeline() -> None:
    request = resolved(SDXL, width=192, height=64)
    assert request.original_size == (64, 192) and request.target_size == (64, 192)
    assert request.crops_coords_top_left == (0, 0)
    given = resolved(SDXL, original_size=(1024, 1024), crops_coords_top_left=(8, 16))
    assert given.original_size == (1024, 1024) and given.crops_coords_top_left == (8, 16)
    assert given.target_size == (128, 128)


def test_seeds_of_several_images_are_consecutive() -> None:
    assert resolved(seed=41, num_images=3).seeds() == [41, 42, 43]


def test_jpg_is_jpeg_and_formats_ignore_case() -> None:
    assert resolved(output_format="JPG").output_format == "jpeg"
    assert resolved(output_format="WebP").output_format == "webp"


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "x" * 5000}, "prompt", "limit is 4000"),
        ({"width": 130}, "width", "multiple of 8"),
        ({"height": 2048}, "height", "between 64 and 1024"),
        ({"width": 32}, "width", "between 64 and 1024"),
        ({"steps": 0}, "steps", "between 1 and 150"),
        ({"steps": 151}, "steps", "between 1 and 150"),
        ({"num_images": 5}, "num_images", "between 1 and 4"),
        ({"num_images": 0}, "num_images", "between 1 and 4"),
        ({"guidance_scale": -1}, "guidance_scale", "between 0 and 30"),
        ({"scheduler": "lms"}, "scheduler", "ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras"),
        ({"scheduler": "lcm"}, "scheduler", "for sd-embedded (sd); choose one of ddim"),
        ({"guidance_rescale": 1.5}, "guidance_rescale", "between 0 and 1"),
        ({"original_size": (512, 512)}, "original_size", "takes no size conditioning"),
        ({"target_size": (512, 512)}, "target_size", "takes no size conditioning"),
        ({"output_format": "gif"}, "output_format", "png, jpeg, webp"),
        ({"seed": -1}, "seed", f"between 0 and {MAX_SEED}"),
    ],
)
def test_bad_field_is_named_with_its_limit(
    fields: dict[str, Any], field: str, fragment: str
) -> None:
    params = {"prompt": "a red apple", **fields}
    with pytest.raises(InvalidArgument) as caught:
        resolve(GenerateParams(**params), LIMITS, SD)
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ")
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("profile", "fields", "field", "fragment"),
    [
        (LCM, {"steps": 9}, "steps", "between 1 and 8"),
        (LCM, {"scheduler": "euler"}, "scheduler", "choose one of lcm, default"),
        (SDXL, {"original_size": (0, 512)}, "original_size", "between 1 and 16384"),
        (SDXL, {"crops_coords_top_left": (-1, 0)}, "crops_coords_top_left", "between 0 and"),
    ],
)
def test_family_limits_are_named(
    profile: ModelProfile, fields: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        resolved(profile, **fields)
    assert caught.value.field == field and fragment in caught.value.message


def test_errors_survive_pickling_between_replicas() -> None:
    error = pickle.loads(pickle.dumps(InvalidArgument("steps", "must be between 1 and 150")))
    assert isinstance(error, InvalidArgument)
    assert error.field == "steps"
    assert error.message == "steps: must be between 1 and 150"


def test_the_context_reads_deadline_key_and_address() -> None:
    context = RequestContext.from_headers(
        {"x-timeout-s": "2.5", "authorization": "Bearer k"}, "10.0.0.7"
    )
    assert context.timeout_s == 2.5 and context.authorization == "Bearer k"
    assert context.client_id.startswith("key:") and "k" not in context.client_id[4:5]
    anonymous = RequestContext.from_headers({}, "10.0.0.7")
    assert anonymous.timeout_s is None and anonymous.client_id == "addr:10.0.0.7"


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_a_bad_deadline_is_named(value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RequestContext.from_headers({"x-timeout-s": value}, None)
    assert (
        caught.value.field == "X-Timeout-S" and "positive number of seconds" in caught.value.message
    )
