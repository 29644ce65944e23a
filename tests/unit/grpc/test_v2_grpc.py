"""KServe v2 over gRPC: the ingress's methods on a real grpc.aio server, with kserve's client and
raw stubs; the same servicer Ray's gRPC proxy calls in the app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from serving.client.v2 import FIELD_METADATA
from serving.grpc.protos import pb
from tests.helpers.images import pixels
from tests.helpers.local_service import LocalService
from tests.helpers.v2 import MODEL, grpc_infer, infer_request, reference_png, run


def test_kserve_grpc_client_gets_raw_output_contents(uncached: LocalService) -> None:
    response = run(grpc_infer(uncached.grpc_target, infer_request()))
    assert response.get_output_by_name("image_bytes").as_numpy()[0] == reference_png(uncached.url)
    image = run(grpc_infer(uncached.grpc_target, infer_request(output_format=None)))
    assert np.array_equal(
        image.get_output_by_name("image").as_numpy()[0], pixels(reference_png(uncached.url))
    )


def test_grpc_raw_response_uses_raw_output_contents(local: LocalService) -> None:
    response = local.grpc_stub().ModelInfer(infer_request().to_grpc(), timeout=120)
    assert len(response.raw_output_contents) == len(response.outputs)
    assert not response.outputs[0].HasField("contents")


def test_grpc_health_and_metadata(local: LocalService) -> None:
    stub = local.grpc_stub()
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert {t.name for t in metadata.outputs} == {"image", "image_bytes", "seed"}
    assert {t.name: t.datatype for t in metadata.inputs}["prompt"] == "BYTES"


@pytest.mark.parametrize(
    ("request_factory", "code", "field"),
    [
        (lambda: infer_request(model="nope").to_grpc(), grpc.StatusCode.NOT_FOUND, None),
        (
            lambda: infer_request(steps=0).to_grpc(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[steps]",
        ),
        (
            lambda: infer_request(width=4096).to_grpc(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[width]",
        ),
        (
            lambda: infer_request(output_format="gif").to_grpc(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "parameters.output_format",
        ),
    ],
)
def test_grpc_errors_are_status_codes_naming_the_field(
    local: LocalService,
    request_factory: Callable[[], Any],
    code: grpc.StatusCode,
    field: str | None,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        local.grpc_stub().ModelInfer(request_factory(), timeout=60)
    assert raised.value.code() == code
    details = raised.value.details() or ""
    assert (field or "nope") in details
    assert dict(raised.value.trailing_metadata() or ()).get(FIELD_METADATA) == field


def test_grpc_non_utf8_prompt_is_invalid_argument(local: LocalService) -> None:
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(b"\xff\xfe").to_bytes(4, "little") + b"\xff\xfe"],
    )
    with pytest.raises(grpc.RpcError) as raised:
        local.grpc_stub().ModelInfer(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[prompt]" in (raised.value.details() or "")
    # ... and the server carries on.
    assert local.grpc_stub().ServerLive(pb.ServerLiveRequest()).live


def test_a_request_over_the_size_limit_is_resource_exhausted(local: LocalService) -> None:
    huge = infer_request(prompt="x" * (2 << 20)).to_grpc()
    with pytest.raises(grpc.RpcError) as raised:
        local.grpc_stub().ModelInfer(huge, timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 1048576 bytes" in (raised.value.details() or "")


def test_a_field_named_outside_ascii_comes_back_escaped_in_the_trailing_metadata(
    local: LocalService,
) -> None:
    """gRPC metadata is printable ASCII; an unknown input named "naïve\x19" must not turn the
    INVALID_ARGUMENT into an INTERNAL (found by `make fuzz`)."""
    request = infer_request().to_grpc()
    request.inputs.append(
        pb.ModelInferRequest.InferInputTensor(name="naïve\x19", datatype="BYTES", shape=[1])
    )
    with pytest.raises(grpc.RpcError) as raised:
        local.grpc_stub().ModelInfer(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailing = dict(raised.value.trailing_metadata())
    assert trailing[FIELD_METADATA] == "inputs[na\\xefve\\x19]"
