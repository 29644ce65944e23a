"""OpenAI-compatible images with the official SDK, on the real HTTP app."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.local_service import LocalService

PARAMS = {"prompt": "a paper boat on a puddle", "seed": 31, "steps": 5, "scheduler": "euler"}


def openai_client(service: LocalService) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)


def test_the_official_openai_sdk_gets_the_same_image(uncached: LocalService) -> None:
    extra = {k: v for k, v in PARAMS.items() if k != "prompt"}
    answer = openai_client(uncached).images.generate(
        prompt=PARAMS["prompt"],
        n=1,
        size="128x128",
        response_format="b64_json",
        model="sd-embedded",
        extra_body=extra,
    )
    assert len(answer.data) == 1 and answer.data[0].revised_prompt == PARAMS["prompt"]
    direct = httpx.post(
        uncached.url + "/v1/generate", json=PARAMS, headers={"Accept": "image/png"}, timeout=60
    )
    assert base64.b64decode(answer.data[0].b64_json or "") == direct.content


def test_openai_url_answers_point_at_cacheable_images(local: LocalService) -> None:
    answer = openai_client(local).images.generate(
        prompt="a kite over a beach",
        n=2,
        size="64x64",
        response_format="url",
        extra_body={"seed": 4, "steps": 3},
    )
    urls = [item.url or "" for item in answer.data]
    assert len(set(urls)) == 2 and all(u.startswith("/v1/images/") for u in urls)
    assert all(item.b64_json is None for item in answer.data)
    first = httpx.get(local.url + urls[0], timeout=30)
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("kwargs", "status_error", "param", "fragment"),
    [
        ({"size": "100x100"}, openai.UnprocessableEntityError, "size", "width: must be"),
        ({"size": "big"}, openai.UnprocessableEntityError, "size", "WIDTHxHEIGHT"),
        ({"n": 9}, openai.UnprocessableEntityError, "n", "n: must be between 1 and 4"),
        ({"model": "dall-e-3"}, openai.NotFoundError, None, "dall-e-3"),
        ({"extra_body": {"stepz": 3}}, openai.UnprocessableEntityError, "stepz", "unknown"),
    ],
)
def test_openai_errors_have_openai_shape(
    local: LocalService,
    kwargs: dict[str, Any],
    status_error: type,
    param: str | None,
    fragment: str,
) -> None:
    with pytest.raises(status_error) as caught:
        openai_client(local).images.generate(prompt="x", **kwargs)
    error = caught.value.body  # type: ignore[attr-defined]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fragment in error["message"]
