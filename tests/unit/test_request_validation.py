"""Every bad field is refused with a message naming the field and the limit."""

from __future__ import annotations

from typing import Any

import pytest

from serving.errors import InvalidArgument, MalformedRequest
from serving.request import MAX_SEED, parse_params, resolve
from serving.settings import Defaults, Limits

LIMITS = Limits()
DEFAULTS = Defaults()


def resolved(**fields: Any):  # type: ignore[no-untyped-def]
    return resolve(parse_params({"prompt": "a red apple", **fields}), LIMITS, DEFAULTS, 128)


def test_defaults_fill_every_field() -> None:
    request = resolved()
    assert (request.width, request.height) == (128, 128)
    assert request.steps == DEFAULTS.steps
    assert request.scheduler == DEFAULTS.scheduler
    assert request.output_format == "png"
    assert 0 <= request.seed <= MAX_SEED


def test_seeds_of_several_images_are_consecutive() -> None:
    assert resolved(seed=41, num_images=3).seeds() == [41, 42, 43]


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
        ({"steps": "many"}, "steps", "valid integer"),
        ({"stpes": 20}, "stpes", "unknown field"),
    ],
)
def test_bad_field_is_named_with_its_limit(
    fields: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        resolved(**fields)
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ")
    assert fragment in caught.value.message


def test_missing_prompt_is_named() -> None:
    with pytest.raises(InvalidArgument, match="prompt: is required"):
        parse_params({"steps": 3})


def test_body_that_is_not_an_object_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        parse_params(["a red apple"])


def test_errors_survive_pickling_between_replicas() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(InvalidArgument("steps", "must be between 1 and 150")))
    assert isinstance(error, InvalidArgument)
    assert error.field == "steps"
    assert error.message == "steps: must be between 1 and 150"


def test_overriding_one_stage_field_keeps_that_stages_other_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving.settings import Settings

    monkeypatch.setenv("SD_UNET__NUM_GPUS", "0.5")
    monkeypatch.setenv("SD_UNET__TORCH_THREADS", "2")
    settings = Settings()
    assert settings.unet.num_gpus == 0.5 and settings.unet.torch_threads == 2
    assert settings.unet.max_ongoing_requests == 72  # the UNet's own default, not the base one
    assert settings.unet.target_ongoing_requests == 6
    assert settings.vae.max_ongoing_requests == 32
