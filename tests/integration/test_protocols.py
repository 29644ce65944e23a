"""Every protocol through the real app (Ray's HTTP proxy, Ray's gRPC proxy, the stages behind
handles): the same request gives the same image bytes, each of them rendered."""

from __future__ import annotations

import base64

import grpc
import httpx
import openai
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.client import Client, GrpcClient
from serving.client.v2 import FIELD_METADATA
from serving.grpc.protos import pb, pb_grpc
from tests.helpers.live_service import SDXL_MODEL, RunningService
from tests.helpers.v2 import MODEL, PARAMS, PROMPT, grpc_infer, infer_request, rest_infer, run

pytestmark = pytest.mark.integration


def stub(service: RunningService) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.grpc_target))


def test_the_same_request_gives_the_same_bytes_on_every_protocol(service: RunningService) -> None:
    """Each protocol must map its fields onto the same resolved request, and the service has no
    result cache: every answer below was rendered through the stages, so equal bytes mean each
    protocol asked for exactly the same image."""
    generate = httpx.post(
        f"{service.url}/v1/generate", json={"prompt": PROMPT, **PARAMS}, timeout=120
    ).json()
    assert generate["cached"] is False
    expected = base64.b64decode(generate["images"][0]["b64_data"])
    answers: dict[str, bytes] = {}
    cached: dict[str, bool] = {}

    raw = httpx.post(
        f"{service.url}/v1/generate",
        json={"prompt": PROMPT, **PARAMS},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    answers["/v1/generate raw PNG"] = raw.content

    v2_rest = run(rest_infer(service.url, infer_request()))
    answers["v2 REST"] = base64.b64decode(v2_rest.get_output_by_name("image_bytes").as_numpy()[0])
    cached["v2 REST"] = v2_rest.parameters["cached"]
    v2_grpc = run(grpc_infer(service.grpc_target, infer_request()))
    answers["v2 gRPC"] = v2_grpc.get_output_by_name("image_bytes").as_numpy()[0]

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

    with Client(service.url) as client:
        http_result = client.generate(PROMPT, **PARAMS)
        job_result = client.generate_with_progress(PROMPT, **PARAMS)
    answers["HTTP client"], cached["HTTP client"] = http_result.images[0].data, http_result.cached
    answers["job"], cached["job"] = job_result.images[0].data, job_result.cached
    with GrpcClient(service.grpc_target) as grpc_client:
        grpc_result = grpc_client.generate(PROMPT, **PARAMS)
    answers["gRPC client"], cached["gRPC client"] = grpc_result.images[0].data, grpc_result.cached

    different = {name for name, data in answers.items() if data != expected}
    assert not different, f"these protocols gave other bytes: {sorted(different)}"
    assert not any(cached.values()), cached


def test_grpc_through_rays_proxy_answers_raw_contents_and_reflects(
    service: RunningService,
) -> None:
    response = stub(service).ModelInfer(infer_request().to_grpc(), timeout=120)
    assert len(response.raw_output_contents) == len(response.outputs)
    assert not response.outputs[0].HasField("contents")
    assert stub(service).ServerReady(pb.ServerReadyRequest()).ready
    assert stub(service).ModelReady(pb.ModelReadyRequest(name=MODEL)).ready

    channel = grpc.insecure_channel(service.grpc_target)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(reflection.ServerReflectionInfo(iter([request])))
    names = {item.name for item in answer.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


def test_grpc_errors_cross_rays_proxy_with_their_status_and_field(
    service: RunningService,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub(service).ModelInfer(infer_request(width=4096).to_grpc(), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[width]" in (raised.value.details() or "")
    assert dict(raised.value.trailing_metadata() or ())[FIELD_METADATA] == "inputs[width]"
    non_utf8 = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(b"\xff\xfe").to_bytes(4, "little") + b"\xff\xfe"],
    )
    with pytest.raises(grpc.RpcError) as bad_text:
        stub(service).ModelInfer(non_utf8, timeout=60)
    assert bad_text.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub(service).ServerLive(pb.ServerLiveRequest()).live  # ... and it carries on


def test_each_protocol_reaches_the_second_model(service: RunningService) -> None:
    """The SDXL model's own deployments answer on every protocol, routed by the model's name."""
    fields = {"prompt": PROMPT, "seed": 5, "steps": 4}
    generate = httpx.post(
        f"{service.url}/v1/generate", json={"model": SDXL_MODEL, **fields}, timeout=120
    ).json()
    assert generate["model"] == SDXL_MODEL and generate["cached"] is False
    expected = base64.b64decode(generate["images"][0]["b64_data"])
    request = infer_request(
        PROMPT, model=SDXL_MODEL, seed=5, steps=4, scheduler=None, guidance_scale=None
    )
    v2_rest = run(rest_infer(service.url, request)).get_output_by_name("image_bytes")
    v1 = httpx.post(
        f"{service.url}/v1/models/{SDXL_MODEL}:predict", json={"instances": [fields]}, timeout=120
    ).json()["predictions"][0]["images"][0]
    with GrpcClient(service.grpc_target, model=SDXL_MODEL) as client:
        over_grpc = client.generate(PROMPT, seed=5, steps=4).images[0].data
    answers = {
        "v2 REST": base64.b64decode(v2_rest.as_numpy()[0]),
        "v1": base64.b64decode(v1),
        "gRPC": over_grpc,
    }
    assert {name for name, data in answers.items() if data != expected} == set()
    unknown = httpx.post(f"{service.url}/v1/generate", json={"prompt": "x", "model": "nope"})
    assert unknown.status_code == 404 and SDXL_MODEL in unknown.text
