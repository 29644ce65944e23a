"""KServe Open Inference Protocol v2 over REST and gRPC, with kserve's own clients, and the same
image bytes through every protocol the service speaks."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
import openai
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from PIL import Image

from serving.rpc.protos import pb, pb_grpc
from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration

MODEL = "sd-embedded"
PROMPT = "a lighthouse at dusk"
PARAMS: dict[str, Any] = {"seed": 12, "steps": 4, "scheduler": "ddim", "guidance_scale": 6.0}
DTYPES = {
    "seed": ("INT64", np.int64),
    "steps": ("INT32", np.int32),
    "width": ("INT32", np.int32),
    "height": ("INT32", np.int32),
    "num_images": ("INT32", np.int32),
}
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def infer_request(
    prompt: str = PROMPT,
    *,
    output_format: str | None = "png",
    outputs: list[str] | None = None,
    binary: bool = False,
    model: str = MODEL,
    **overrides: Any,
) -> InferRequest:
    values = {**PARAMS, **overrides}
    prompt_input = InferInput("prompt", [1], "BYTES")
    prompt_input.set_data_from_numpy(np.array([prompt], dtype=np.object_), binary_data=binary)
    inputs = [prompt_input]
    for name, value in values.items():
        datatype, numpy_type = DTYPES.get(name, ("FP32", np.float32))
        if name == "scheduler":
            datatype, numpy_type = "BYTES", np.object_
        tensor = InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=numpy_type), binary_data=binary)
        inputs.append(tensor)
    parameters: dict[str, Any] = {} if output_format is None else {"output_format": output_format}
    if binary:
        parameters["binary_data_output"] = True
    requested = [RequestedOutput(n, {"binary_data": binary}) for n in outputs] if outputs else None
    return InferRequest(
        model_name=model, infer_inputs=inputs, parameters=parameters, request_outputs=requested
    )


def reference_png(service: RunningService, **fields: Any) -> bytes:
    answer = httpx.post(
        service.url + "/v1/generate",
        json={"prompt": PROMPT, **PARAMS, **fields},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def rest_infer(service: RunningService, request: InferRequest) -> Any:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    try:
        return await client.infer(service.url, request, model_name=request.model_name)
    finally:
        await client.close()


async def grpc_infer(service: RunningService, request: InferRequest) -> Any:
    client = InferenceGRPCClient(service.grpc_target, timeout=120, retries=0)
    try:
        return await client.infer(request)
    finally:
        await client._channel.close()


def grpc_stub(service: RunningService) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.grpc_target))


# -- REST


def test_v2_rest_server_and_model_metadata(service: RunningService) -> None:
    with service.client() as client:
        assert client.get("/v2").json()["name"]
        assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
        metadata = client.get(f"/v2/models/{MODEL}").json()
    inputs = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
    outputs = {
        tensor["name"]: (tensor["datatype"], tensor["shape"]) for tensor in metadata["outputs"]
    }
    assert inputs["prompt"] == "BYTES" and inputs["steps"].startswith("INT")
    assert outputs["image"] == ("UINT8", [-1, -1, -1, 3])
    assert outputs["image_bytes"][0] == "BYTES"


def test_kserve_rest_client_gets_encoded_image_bytes(service: RunningService) -> None:
    response = run(rest_infer(service, infer_request()))
    image_bytes = response.get_output_by_name("image_bytes")
    assert image_bytes.parameters["content_transfer_encoding"] == "base64"
    assert base64.b64decode(image_bytes.as_numpy()[0]) == reference_png(service)
    assert response.get_output_by_name("seed").as_numpy().tolist() == [PARAMS["seed"]]


def test_kserve_rest_client_gets_uint8_tensor_with_binary_extension(
    service: RunningService,
) -> None:
    request = infer_request(output_format=None, outputs=["image", "seed"], binary=True)
    image = run(rest_infer(service, request)).get_output_by_name("image").as_numpy()
    assert image.dtype == np.uint8 and image.shape == (1, 128, 128, 3)
    assert np.array_equal(image[0], pixels(reference_png(service)))


def test_binary_extension_carries_raw_png_after_the_json_header(service: RunningService) -> None:
    body = {
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}]
        + [
            {"name": k, "datatype": DTYPES.get(k, ("BYTES",))[0], "shape": [1], "data": [v]}
            for k, v in PARAMS.items()
            if k != "guidance_scale"
        ]
        + [{"name": "guidance_scale", "datatype": "FP32", "shape": [1], "data": [6.0]}],
        "parameters": {"output_format": "png", "binary_data_output": True},
    }
    answer = httpx.post(f"{service.url}/v2/models/{MODEL}/infer", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    header_length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.content[:header_length])
    first = header["outputs"][0]
    assert first["name"] == "image_bytes"
    size = first["parameters"]["binary_data_size"]
    raw = answer.content[header_length : header_length + size]
    # BYTES tensors are length-prefixed (4 bytes little-endian) elements.
    length = int.from_bytes(raw[:4], "little")
    assert raw[4 : 4 + length] == reference_png(service)


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"inputs[0].datatype": "FP32"}, 422, "inputs[prompt].datatype"),
        ({"steps": 100000}, 422, "inputs[steps]"),
        ({"shape": [2]}, 422, "inputs[prompt].shape"),
        ({"extra_input": True}, 422, "inputs[colour]"),
        ({"output_format": "gif"}, 422, "parameters.output_format"),
    ],
)
def test_v2_rest_bad_input_names_the_field(
    service: RunningService, change: dict[str, Any], status: int, field: str
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
    answer = httpx.post(f"{service.url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["field"] == field
    assert isinstance(error["error"], str) and field in error["error"]


def test_v2_rest_unknown_model_and_malformed_json(service: RunningService) -> None:
    with service.client() as client:
        unknown = client.post("/v2/models/nope/infer", json={"inputs": []})
        malformed = client.post(
            f"/v2/models/{MODEL}/infer",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert malformed.status_code == 400


# -- gRPC


def test_kserve_grpc_client_gets_raw_output_contents(service: RunningService) -> None:
    response = run(grpc_infer(service, infer_request()))
    assert response.get_output_by_name("image_bytes").as_numpy()[0] == reference_png(service)
    image = run(grpc_infer(service, infer_request(output_format=None))).get_output_by_name("image")
    assert np.array_equal(image.as_numpy()[0], pixels(reference_png(service)))


def test_grpc_raw_response_uses_raw_output_contents(service: RunningService) -> None:
    request = infer_request().to_grpc()
    response = grpc_stub(service).ModelInfer(request, timeout=120)
    assert len(response.raw_output_contents) == len(response.outputs)
    assert not response.outputs[0].HasField("contents")


def test_grpc_health_metadata_and_reflection(service: RunningService) -> None:
    stub = grpc_stub(service)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert {t.name for t in metadata.outputs} == {"image", "image_bytes", "seed"}

    channel = grpc.insecure_channel(service.grpc_target)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(reflection.ServerReflectionInfo(iter([request])))
    names = {item.name for item in answer.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


@pytest.mark.parametrize(
    ("request_factory", "code", "detail"),
    [
        (lambda: infer_request(model="nope").to_grpc(), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: infer_request(steps=0).to_grpc(), grpc.StatusCode.INVALID_ARGUMENT, "steps"),
        (
            lambda: infer_request(width=4096).to_grpc(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[width]",
        ),
    ],
)
def test_grpc_errors_are_status_codes_naming_the_field(
    service: RunningService, request_factory: Any, code: grpc.StatusCode, detail: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_stub(service).ModelInfer(request_factory(), timeout=60)
    assert raised.value.code() == code
    assert detail in (raised.value.details() or "")


def test_grpc_non_utf8_prompt_is_invalid_argument(service: RunningService) -> None:
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(b"\xff\xfe").to_bytes(4, "little") + b"\xff\xfe"],
    )
    with pytest.raises(grpc.RpcError) as raised:
        grpc_stub(service).ModelInfer(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[prompt]" in (raised.value.details() or "")
    # ... and the server carries on.
    assert grpc_stub(service).ServerLive(pb.ServerLiveRequest()).live


# -- every protocol, one image


def test_the_same_request_gives_the_same_bytes_on_every_protocol(service: RunningService) -> None:
    """Each protocol must map its fields onto the same resolved request: a protocol that
    dropped a field or applied another default would land on another result-cache key and
    render another image."""
    expected = reference_png(service)
    answers: dict[str, bytes] = {}

    v2_rest = run(rest_infer(service, infer_request())).get_output_by_name("image_bytes")
    answers["v2 REST"] = base64.b64decode(v2_rest.as_numpy()[0])
    v2_grpc = run(grpc_infer(service, infer_request())).get_output_by_name("image_bytes")
    answers["v2 gRPC"] = v2_grpc.as_numpy()[0]

    v1 = httpx.post(
        f"{service.url}/v1/models/{MODEL}:predict",
        json={"instances": [{"prompt": PROMPT, **PARAMS}]},
        timeout=120,
    )
    answers["v1"] = base64.b64decode(v1.json()["predictions"][0]["images"][0])

    sdk = openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)
    image = sdk.images.generate(
        prompt=PROMPT, n=1, size="128x128", response_format="b64_json", extra_body=PARAMS
    )
    answers["OpenAI"] = base64.b64decode(image.data[0].b64_json or "")

    generate = httpx.post(
        f"{service.url}/v1/generate", json={"prompt": PROMPT, **PARAMS}, timeout=120
    )
    answers["/v1/generate JSON"] = base64.b64decode(generate.json()["images"][0]["b64_data"])

    different = {name for name, data in answers.items() if data != expected}
    assert not different, f"these protocols gave other bytes: {sorted(different)}"
