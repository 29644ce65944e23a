"""Several models in one ingress: every protocol routes by model name, each model's requests run
on its own stages, and requests for different models in flight together each equal their solo
image."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest

from serving.client import Client, ClientError, GrpcClient
from serving.grpc.protos import pb
from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.requests import at_once, first_image, generate, job_events, submit
from tests.helpers.v2 import infer_request

MODELS = ("sd15", "xl", "fast")


@pytest.fixture(scope="module")
def several(embedded_model_dir: Path, family_dirs: dict[str, Path]) -> Iterator[LocalService]:
    models = {
        "sd15": {"source": str(embedded_model_dir)},
        "xl": {"source": str(family_dirs["sdxl"])},
        "fast": {"source": str(family_dirs["lcm"]), "defaults": {"steps": 2}},
    }
    with local_service(None, models=models, default_model="xl", result_cache_size=0) as service:
        yield service


def test_every_model_is_listed_the_default_first(several: LocalService) -> None:
    assert httpx.get(several.url + "/v1/models").json() == {"models": ["xl", "sd15", "fast"]}
    assert sorted(httpx.get(several.url + "/v2/models").json()["models"]) == sorted(MODELS)
    ready = httpx.get(several.url + "/v2/health/ready").json()
    assert ready["ready"] is True
    assert {"sd15/unet", "xl/unet", "fast/unet", "result_store"} <= set(ready["stages"])
    fast = httpx.get(several.url + "/v1/models/fast").json()["parameters"]
    assert fast["family"] == "lcm" and fast["defaults"]["steps"] == 2  # its own default


def test_each_protocol_reaches_each_model(several: LocalService) -> None:
    for model, (size, family_default_guidance) in {
        "sd15": (128, 7.5),
        "xl": (128, 5.0),
        "fast": (128, 8.5),
    }.items():
        fields = {"prompt": "a boat", "seed": 3, "steps": 2}
        body = generate(several.url, model=model, **fields)
        assert body["model"] == model and body["parameters"]["model"] == model
        assert body["parameters"]["guidance_scale"] == family_default_guidance
        expected = base64.b64decode(body["images"][0]["b64_data"])

        created = submit(several.url, model=model, **fields)
        final = list(job_events(several.url, created["id"]))[-1].data
        stored = httpx.get(several.url + final["result"]["images"][0]["url"]).content
        v1 = httpx.post(
            f"{several.url}/v1/models/{model}:predict", json={"instances": [fields]}, timeout=60
        ).json()["predictions"][0]["images"][0]
        sdk = openai.OpenAI(base_url=several.url + "/v1", api_key="unused", max_retries=0)
        openai_image = (
            sdk.images.generate(
                prompt="a boat",
                model=model,
                response_format="b64_json",
                extra_body={"seed": 3, "steps": 2},
            )
            .data[0]
            .b64_json
        )
        v2 = infer_request(
            "a boat", model=model, steps=2, seed=3, scheduler=None, guidance_scale=None
        )
        rest = httpx.post(
            f"{several.url}/v2/models/{model}/infer",
            json={
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.data}
                    for t in v2.inputs
                ],
                "parameters": {"output_format": "png"},
            },
            timeout=60,
        ).json()["outputs"][0]["data"][0]
        with GrpcClient(several.grpc_target, model=model) as client:
            over_grpc = client.generate("a boat", seed=3, steps=2).images[0].data
        answers = {
            "job": stored,
            "v1": base64.b64decode(v1),
            "OpenAI": base64.b64decode(openai_image or ""),
            "v2 REST": base64.b64decode(rest),
            "gRPC": over_grpc,
        }
        assert pixels(expected).shape == (size, size, 3)
        assert {name for name, data in answers.items() if data != expected} == set(), model


def test_requests_name_the_default_model_when_they_name_none(several: LocalService) -> None:
    unnamed = generate(several.url, prompt="a cat", seed=9, steps=2)
    named = generate(several.url, prompt="a cat", seed=9, steps=2, model="xl")
    assert unnamed["model"] == "xl"
    assert unnamed["images"][0]["b64_data"] == named["images"][0]["b64_data"]


def test_requests_for_several_models_in_flight_each_equal_their_solo_image_despite_bad_ones(
    several: LocalService,
) -> None:
    requests: list[dict[str, Any]] = [
        {"model": "sd15", "scheduler": "ddim", "steps": 12, "seed": 1},
        {"model": "xl", "scheduler": "euler", "steps": 10, "seed": 2},
        {"model": "fast", "steps": 4, "seed": 3},
        {"model": "sd15", "steps": 6, "seed": 4, "guidance_scale": 1.0},
        {"model": "xl", "steps": 8, "seed": 5, "negative_prompt": "fog"},
    ]
    # Bad requests, sent while the good ones are in flight: each refused naming its field.
    refused: list[tuple[dict[str, Any], int, str]] = [
        ({"model": "sd9"}, 404, "model"),
        ({"model": "fast", "scheduler": "euler"}, 422, "scheduler"),
        ({"model": "fast", "steps": 20}, 422, "steps"),
        ({"model": "sd15", "original_size": [512, 512]}, 422, "original_size"),
        ({"model": "xl", "width": 100}, 422, "width"),
    ]

    def render(fields: dict[str, Any]) -> np.ndarray:
        return first_image(generate(several.url, prompt="a harbour", **fields))

    def refuse(fields: dict[str, Any]) -> httpx.Response:
        body = {"prompt": "a harbour", **fields}
        return httpx.post(several.url + "/v1/generate", json=body, timeout=60)

    solo = [render(fields) for fields in requests]
    answered = at_once(
        [partial(render, fields) for fields in requests]
        + [partial(refuse, fields) for fields, _, _ in refused]
    )
    together = answered[: len(requests)]
    answers = answered[len(requests) :]
    for index, image in enumerate(solo):
        assert max_pixel_difference(together[index], image) <= 1, requests[index]
    for index, (fields, status, field) in enumerate(refused):
        answer = answers[index]
        assert answer.status_code == status, (fields, answer.text)
        if status == 422:
            assert answer.json()["error"]["field"] == field, answer.text
        else:
            assert "'sd9'" in answer.json()["error"]["message"]


def test_an_unknown_model_is_named_on_every_protocol(several: LocalService) -> None:
    generate_answer = httpx.post(
        several.url + "/v1/generate", json={"prompt": "x", "model": "nope"}
    )
    assert generate_answer.status_code == 404 and "'nope'" in generate_answer.text
    assert "'sd15'" in generate_answer.json()["error"]["message"]  # names what is served
    job_answer = httpx.post(several.url + "/v1/jobs", json={"prompt": "x", "model": "nope"})
    assert job_answer.status_code == 404
    assert (
        httpx.post(
            several.url + "/v1/models/nope:predict", json={"instances": [{"prompt": "x"}]}
        ).status_code
        == 404
    )
    assert httpx.get(several.url + "/v1/models/nope").status_code == 404
    assert httpx.post(several.url + "/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=several.url + "/v1", api_key="x", max_retries=0).images.generate(
            prompt="x", model="nope"
        )
    with (
        GrpcClient(several.grpc_target, model="nope") as client,
        pytest.raises(ClientError) as caught,
    ):
        client.generate("x")
    assert caught.value.status == "NOT_FOUND"
    stub = several.grpc_stub()
    assert stub.ModelReady(pb.ModelReadyRequest(name="xl")).ready is not False
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_http_client_chooses_a_model(several: LocalService) -> None:
    with Client(several.url) as client:
        fast = client.generate("a kite", model="fast", seed=2)
    assert fast.parameters["model"] == "fast" and fast.parameters["steps"] == 2
