"""Python client of sd-serving's KServe v2 gRPC API, synchronous and asynchronous.

    from serving.client_grpc import GrpcClient
    with GrpcClient("127.0.0.1:9000") as client:
        result = client.generate("a red apple on a wooden table", steps=20, seed=7)
        result.images[0].save("apple.png")

Errors come back as `ClientError` (status = the gRPC code's name, field when the server named
one). The answer carries the encoded images in `raw_output_contents`."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from serving.client import ClientError, Generation, Image
from serving.rpc.errors import FIELD_METADATA
from serving.rpc.protos import parameter_value, pb, pb_grpc

TEXT_FIELDS = ("negative_prompt", "scheduler")
INT_FIELDS = ("num_images", "width", "height", "steps", "seed")


def infer_request(model: str, prompt: str, fields: dict[str, Any]) -> pb.ModelInferRequest:
    values = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
    output_format = values.pop("output_format", "png")
    inputs = []
    for name, value in values.items():
        if name in ("prompt", *TEXT_FIELDS):
            tensor = InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([value], dtype=np.object_))
        elif name in INT_FIELDS:
            tensor = InferInput(name, [1], "INT64")
            tensor.set_data_from_numpy(np.array([value], dtype=np.int64))
        elif name == "guidance_scale":
            tensor = InferInput(name, [1], "FP32")
            tensor.set_data_from_numpy(np.array([value], dtype=np.float32))
        else:
            raise TypeError(f"unknown field {name!r}")
        inputs.append(tensor)
    request = InferRequest(
        model_name=model,
        infer_inputs=inputs,
        parameters={"output_format": output_format},
        request_outputs=[RequestedOutput("image_bytes"), RequestedOutput("seed")],
    )
    return request.to_grpc()


def generation(response: pb.ModelInferResponse) -> Generation:
    answer = InferResponse.from_grpc(response)
    image_bytes = answer.get_output_by_name("image_bytes")
    seeds = answer.get_output_by_name("seed")
    if image_bytes is None or seeds is None:
        raise ClientError("INTERNAL", "bad_response", "the answer lacks image_bytes or seed", None)
    media_type = str(parameter_value(image_bytes.parameters, "content_type") or "image/png")
    images = [
        Image(bytes(data), int(seed), media_type, "")
        for data, seed in zip(image_bytes.as_numpy(), seeds.as_numpy(), strict=True)
    ]
    return Generation(images, bool(parameter_value(answer.parameters, "cached")), {}, [], {})


def client_error(error: grpc.RpcError) -> ClientError:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    trailing = dict(error.trailing_metadata() or ()) if isinstance(error, grpc.Call) else {}
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    field = trailing.get(FIELD_METADATA)
    return ClientError(code.name, code.name.lower(), details or "", field)


def _metadata(api_key: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")] if api_key else []


class GrpcClient:
    def __init__(
        self,
        target: str = "127.0.0.1:9000",
        *,
        model: str = "sd-embedded",
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._model, self._api_key, self._timeout_s = model, api_key, timeout_s

    def generate(self, prompt: str, **fields: Any) -> Generation:
        request = infer_request(self._model, prompt, fields)
        try:
            response = self._stub.ModelInfer(
                request, timeout=self._timeout_s, metadata=_metadata(self._api_key)
            )
        except grpc.RpcError as error:
            raise client_error(error) from None
        return generation(response)

    def ready(self) -> bool:
        try:
            return bool(self._stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready)
        except grpc.RpcError:
            return False

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncGrpcClient:
    def __init__(
        self,
        target: str = "127.0.0.1:9000",
        *,
        model: str = "sd-embedded",
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._model, self._api_key, self._timeout_s = model, api_key, timeout_s

    async def generate(self, prompt: str, **fields: Any) -> Generation:
        request = infer_request(self._model, prompt, fields)
        try:
            response = await self._stub.ModelInfer(
                request, timeout=self._timeout_s, metadata=_metadata(self._api_key)
            )
        except grpc.RpcError as error:
            raise client_error(error) from None
        return generation(response)

    async def aclose(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
