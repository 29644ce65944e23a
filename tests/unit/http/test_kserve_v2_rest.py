"""KServe Open Inference Protocol v2 over REST, with kserve's own client, on the real HTTP app."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers.images import pixels
from tests.helpers.local_service import LocalService
from tests.helpers.v2 import MODEL, PARAMS, PROMPT, infer_request, reference_png, rest_infer, run


def test_v2_rest_server_and_model_metadata(local: LocalService) -> None:
    with local.client() as client:
        assert client.get("/v2").json()["name"]
        assert client.get("/v2/models").json()["models"] == [MODEL]
        assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
        metadata = client.get(f"/v2/models/{MODEL}").json()
    inputs = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
    outputs = {
        tensor["name"]: (tensor["datatype"], tensor["shape"]) for tensor in metadata["outputs"]
    }
    assert inputs["prompt"] == "BYTES" and inputs["steps"].startswith("INT")
    assert outputs["image"] == ("UINT8", [-1, -1, -1, 3])
    assert outputs["image_bytes"][0] == "BYTES"


def test_kserve_rest_client_gets_encoded_image_bytes(uncached: LocalService) -> None:
    response = run(rest_infer(uncached.url, infer_request()))
    image_bytes = response.get_output_by_name("image_bytes")
    assert image_bytes.parameters["content_transfer_encoding"] == "base64"
    assert base64.b64decode(image_bytes.as_numpy()[0]) == reference_png(uncached.url)
    assert response.get_output_by_name("seed").as_numpy().tolist() == [PARAMS["seed"]]
    assert response.parameters["cached"] is False


def test_kserve_rest_client_gets_uint8_tensor_with_binary_extension(
    uncached: LocalService,
) -> None:
    request = infer_request(output_format=None, outputs=["image", "seed"], binary=True)
    image = run(rest_infer(uncached.url, request)).get_output_by_name("image").as_numpy()
    assert image.dtype == np.uint8 and image.shape == (1, 128, 128, 3)
    assert np.array_equal(image[0], pixels(reference_png(uncached.url)))


def test_the_uint8_tensor_of_a_cached_result_is_the_same(local: LocalService) -> None:
    request = infer_request(output_format=None, outputs=["image", "seed"], seed=404)
    first = run(rest_infer(local.url, request))
    second = run(rest_infer(local.url, request))
    assert (first.parameters["cached"], second.parameters["cached"]) == (False, True)
    assert np.array_equal(
        first.get_output_by_name("image").as_numpy(), second.get_output_by_name("image").as_numpy()
    )


def test_binary_extension_carries_raw_png_after_the_json_header(uncached: LocalService) -> None:
    body = {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [PROMPT]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [PARAMS["seed"]]},
            {"name": "steps", "datatype": "INT32", "shape": [1], "data": [PARAMS["steps"]]},
            {"name": "scheduler", "datatype": "BYTES", "shape": [1], "data": ["ddim"]},
            {"name": "guidance_scale", "datatype": "FP32", "shape": [1], "data": [6.0]},
        ],
        "parameters": {"output_format": "png", "binary_data_output": True},
    }
    answer = httpx.post(f"{uncached.url}/v2/models/{MODEL}/infer", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    header_length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.content[:header_length])
    first = header["outputs"][0]
    assert first["name"] == "image_bytes"
    size = first["parameters"]["binary_data_size"]
    raw = answer.content[header_length : header_length + size]
    # BYTES tensors are length-prefixed (4 bytes little-endian) elements.
    length = int.from_bytes(raw[:4], "little")
    assert raw[4 : 4 + length] == reference_png(uncached.url)


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"inputs[0].datatype": "FP32"}, 422, "inputs[prompt].datatype"),
        ({"steps": 100000}, 422, "inputs[steps]"),
        ({"shape": [2]}, 422, "inputs[prompt].shape"),
        ({"extra_input": True}, 422, "inputs[colour]"),
        ({"output_format": "gif"}, 422, "parameters.output_format"),
        ({"long_prompt": True}, 422, "inputs[prompt]"),
    ],
)
def test_v2_rest_bad_input_names_the_field(
    local: LocalService, change: dict[str, Any], status: int, field: str
) -> None:
    prompt: dict[str, Any] = {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}
    body: dict[str, Any] = {"inputs": [prompt]}
    if "inputs[0].datatype" in change:
        prompt["datatype"] = change["inputs[0].datatype"]
        prompt["data"] = [1.0]
    if "steps" in change:
        body["inputs"].append(
            {"name": "steps", "datatype": "INT32", "shape": [1], "data": [change["steps"]]}
        )
    if "shape" in change:
        prompt["shape"], prompt["data"] = change["shape"], ["a", "b"]
    if "extra_input" in change:
        body["inputs"].append({"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["x"]})
    if "output_format" in change:
        body["parameters"] = {"output_format": change["output_format"]}
    if "long_prompt" in change:
        prompt["data"] = ["mountains " * 100]
    answer = httpx.post(f"{local.url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["field"] == field
    assert isinstance(error["error"], str) and field in error["error"]


def test_v2_rest_unknown_model_and_malformed_json(local: LocalService) -> None:
    with local.client() as client:
        unknown = client.post("/v2/models/nope/infer", json={"inputs": []})
        malformed = client.post(
            f"/v2/models/{MODEL}/infer",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        versions = client.post(f"/v2/models/{MODEL}/versions/7/infer", json={"inputs": []})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert malformed.status_code == 400
    assert versions.status_code == 404
