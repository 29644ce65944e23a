"""KServe v2 requests built with kserve's own client types, as a kserve user would."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from serving.client.v2 import DECLARED_INPUTS

MODEL = "sd-embedded"
PROMPT = "a lighthouse at dusk"
PARAMS: dict[str, Any] = {"seed": 12, "steps": 4, "scheduler": "ddim", "guidance_scale": 6.0}
NUMPY_TYPES = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}
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
    values = {"prompt": prompt, **PARAMS, **overrides}  # an override of None leaves it out
    inputs = []
    for name, value in values.items():
        if value is None:
            continue
        datatype = DECLARED_INPUTS[name]
        tensor = InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(
            np.array([value], dtype=NUMPY_TYPES[datatype]), binary_data=binary
        )
        inputs.append(tensor)
    parameters: dict[str, Any] = {} if output_format is None else {"output_format": output_format}
    if binary:
        parameters["binary_data_output"] = True
    requested = [RequestedOutput(n, {"binary_data": binary}) for n in outputs] if outputs else None
    return InferRequest(
        model_name=model, infer_inputs=inputs, parameters=parameters, request_outputs=requested
    )


async def rest_infer(url: str, request: InferRequest) -> InferResponse:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    try:
        return await client.infer(url, request, model_name=request.model_name)
    finally:
        await client.close()


async def grpc_infer(target: str, request: InferRequest) -> InferResponse:
    client = InferenceGRPCClient(target, timeout=120, retries=0)
    try:
        return await client.infer(request)
    finally:
        await client._channel.close()


def reference_png(url: str, **fields: Any) -> bytes:
    """The same request through /v1/generate, as a raw PNG."""
    answer = httpx.post(
        url + "/v1/generate",
        json={"prompt": PROMPT, **PARAMS, **fields},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return answer.content
