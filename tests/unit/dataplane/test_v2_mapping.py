"""How v2 inference requests map onto the one request type (REST and gRPC shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from serving.dataplane.v2 import params_from_infer_request, requested_outputs, v2_field_name
from serving.errors import InvalidArgument


def tensor(name: str, datatype: str, value: object) -> InferInput:
    numpy_type = {"BYTES": np.object_, "INT64": np.int64, "FP32": np.float32}[datatype]
    item = InferInput(name, [1], datatype)
    item.set_data_from_numpy(np.array([value], dtype=numpy_type), binary_data=False)
    return item


def request(*inputs: InferInput, **parameters: object) -> InferRequest:
    return InferRequest("m", list(inputs), parameters=parameters or None)


def test_rest_and_grpc_requests_give_the_same_parameters() -> None:
    rest = request(
        tensor("prompt", "BYTES", "a cat"),
        tensor("steps", "INT64", 12),
        tensor("guidance_scale", "FP32", 5.5),
        tensor("scheduler", "BYTES", "euler"),
        output_format="webp",
    )
    grpc_request = InferRequest.from_grpc(rest.to_grpc())
    for payload in (rest, grpc_request):
        params = params_from_infer_request(payload)
        assert (params.prompt, params.steps, params.guidance_scale) == ("a cat", 12, 5.5)
        assert (params.scheduler, params.output_format) == ("euler", "webp")


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ((tensor("steps", "INT64", 3),), "inputs"),
        ((tensor("prompt", "INT64", 3),), "inputs[prompt].datatype"),
        ((tensor("prompt", "BYTES", "x"), tensor("steps", "FP32", 2.5)), "inputs[steps].datatype"),
        ((tensor("prompt", "BYTES", "x"), tensor("colour", "BYTES", "red")), "inputs[colour]"),
    ],
)
def test_bad_tensors_name_the_field(inputs: tuple[InferInput, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        params_from_infer_request(request(*inputs))
    assert raised.value.field == field


def test_outputs_follow_the_request() -> None:
    plain = request(tensor("prompt", "BYTES", "x"))
    assert requested_outputs(plain, None) == {"image", "seed"}
    assert requested_outputs(plain, "jpeg") == {"image_bytes", "seed"}
    named = InferRequest("m", plain.inputs, request_outputs=[RequestedOutput("image_bytes")])
    assert requested_outputs(named, None) == {"image_bytes"}
    lossy = InferRequest("m", plain.inputs, request_outputs=[RequestedOutput("image")])
    with pytest.raises(InvalidArgument) as raised:
        requested_outputs(lossy, "jpeg")
    assert raised.value.field == "parameters.output_format"
    unknown = InferRequest("m", plain.inputs, request_outputs=[RequestedOutput("mask")])
    with pytest.raises(InvalidArgument, match="mask"):
        requested_outputs(unknown, None)


def test_errors_name_fields_where_a_v2_client_put_them() -> None:
    assert v2_field_name("steps") == "inputs[steps]"
    assert v2_field_name("output_format") == "parameters.output_format"
    assert v2_field_name("inputs[prompt].datatype") == "inputs[prompt].datatype"
    assert v2_field_name("X-Timeout-S") == "X-Timeout-S"
