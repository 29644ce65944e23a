"""Every bad field is refused with a message naming the field and the limit; the context a
transport builds from its headers."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from serving.dataplane.request import (
    MAX_SEED,
    GenerateParams,
    GenerationRequest,
    RequestContext,
    resolve,
)
from serving.errors import InvalidArgument
from serving.settings import Defaults, Limits

LIMITS = Limits()
DEFAULTS = Defaults()


def resolved(**fields: Any) -> GenerationRequest:
    return resolve(GenerateParams(prompt="a red apple", **fields), LIMITS, DEFAULTS, 128)


def test_defaults_fill_every_field() -> None:
    request = resolved()
    assert (request.width, request.height) == (128, 128)
    assert request.steps == DEFAULTS.steps
    assert request.scheduler == DEFAULTS.scheduler
    assert request.output_format == "png"
    assert 0 <= request.seed <= MAX_SEED


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
        ({"scheduler": "lms"}, "scheduler", "ddim, euler, euler_a, dpmpp_2m, pndm"),
        ({"output_format": "gif"}, "output_format", "png, jpeg, webp"),
        ({"seed": -1}, "seed", f"between 0 and {MAX_SEED}"),
    ],
)
def test_bad_field_is_named_with_its_limit(
    fields: dict[str, Any], field: str, fragment: str
) -> None:
    params = {"prompt": "a red apple", **fields}
    with pytest.raises(InvalidArgument) as caught:
        resolve(GenerateParams(**params), LIMITS, DEFAULTS, 128)
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ")
    assert fragment in caught.value.message


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
