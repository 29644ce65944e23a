"""Python client of sd-serving's KServe v2 gRPC API, synchronous and asynchronous.

    from serving.client import GrpcClient
    with GrpcClient("127.0.0.1:9000") as client:
        result = client.generate("a red apple on a wooden table", steps=20, seed=7)
        result.images[0].save("apple.png")

Errors come back as `ClientError` (status = the gRPC code's name, field when the server named
one). Built on the client's own protocol messages (open_inference.proto), so importing it loads
neither kserve nor any server module; it speaks to any v2 server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from serving.client import open_inference_pb2 as pb
from serving.client.types import ClientError, Generation, Image, lora_field
from serving.client.v2 import DECLARED_INPUTS, FIELD_METADATA, input_shape

SERVICE = "/inference.GRPCInferenceService/"
MODEL_INFER = SERVICE + "ModelInfer"
SERVER_READY = SERVICE + "ServerReady"
Tensor = pb.ModelInferRequest.InferInputTensor


def _tensor(name: str, value: Any) -> Tensor:
    """An input tensor with its value in `contents`, typed and shaped as the model declares it."""
    datatype = DECLARED_INPUTS.get(name)
    if datatype is None:
        raise TypeError(f"unknown field {name!r}; the model takes {', '.join(DECLARED_INPUTS)}")
    shape = input_shape(name)
    values = list(value) if shape == [2] else [value]
    contents = pb.InferTensorContents()
    if datatype == "BYTES":
        contents.bytes_contents.extend(
            item if isinstance(item, bytes) else str(item).encode() for item in values
        )
    elif datatype == "INT64":
        contents.int64_contents.extend(int(item) for item in values)
    elif datatype.startswith("INT"):
        contents.int_contents.extend(int(item) for item in values)
    else:
        contents.fp32_contents.extend(float(item) for item in values)
    return Tensor(name=name, datatype=datatype, shape=shape, contents=contents)


def infer_request(model: str, prompt: str, fields: dict[str, Any]) -> pb.ModelInferRequest:
    """A ModelInfer request asking for the encoded images (`image_bytes`) and their seeds;
    `model` may name a version (`name@version`: `model_version`)."""
    values = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
    for name in ("image", "mask"):  # an edit's picture and mask: the files' raw bytes
        if name in values:
            picture = values.pop(name)
            values[f"input_{name}"] = picture.read_bytes() if isinstance(picture, Path) else picture
    output_format = str(values.pop("output_format", "png"))
    priority = values.pop("priority", None)
    loras = values.pop("loras", None)
    name, _, version = model.partition("@")
    request = pb.ModelInferRequest(
        model_name=name,
        model_version=version,
        inputs=[_tensor(name, value) for name, value in values.items()],
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=name)
            for name in ("image_bytes", "seed")
        ],
    )
    request.parameters["output_format"].string_param = output_format
    if priority is not None:
        request.parameters["priority"].string_param = str(priority)
    if loras is not None:  # v2 takes the adapters as JSON text in a request parameter
        request.parameters["loras"].string_param = json.dumps(lora_field(loras))
    return request


def _parameter(parameters: Any, key: str) -> Any:
    if key not in parameters:
        return None
    value = parameters[key]
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _bytes_elements(raw: bytes) -> list[bytes]:
    """A raw BYTES tensor: each element prefixed by its length (4 bytes, little-endian)."""
    elements, position = [], 0
    while position < len(raw):
        length = int.from_bytes(raw[position : position + 4], "little")
        elements.append(raw[position + 4 : position + 4 + length])
        position += 4 + length
    return elements


def generation(response: pb.ModelInferResponse) -> Generation:
    outputs = {output.name: index for index, output in enumerate(response.outputs)}
    if "image_bytes" not in outputs or "seed" not in outputs:
        raise ClientError("INTERNAL", "bad_response", "the answer lacks image_bytes or seed", None)
    image_tensor = response.outputs[outputs["image_bytes"]]
    seed_tensor = response.outputs[outputs["seed"]]
    if response.raw_output_contents:
        raw = response.raw_output_contents
        datas = _bytes_elements(raw[outputs["image_bytes"]])
        seeds = np.frombuffer(raw[outputs["seed"]], dtype="<i8").tolist()
    else:
        datas = list(image_tensor.contents.bytes_contents)
        seeds = list(seed_tensor.contents.int64_contents)
    media_type = str(_parameter(image_tensor.parameters, "content_type") or "image/png")
    images = [
        Image(bytes(data), int(seed), media_type, "")
        for data, seed in zip(datas, seeds, strict=True)
    ]
    cached = bool(_parameter(response.parameters, "cached"))
    return Generation(images, cached, {}, [], {}, response.model_version or None)


def model_infer(channel: Any) -> Any:
    """The ModelInfer call on a channel (grpc or grpc.aio, intercepted or not)."""
    return channel.unary_unary(
        MODEL_INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


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
        self._infer = model_infer(self._channel)
        self._ready = self._channel.unary_unary(
            SERVER_READY,
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        self._model, self._api_key, self._timeout_s = model, api_key, timeout_s

    def generate(self, prompt: str, **fields: Any) -> Generation:
        """Fields: negative_prompt, num_images, width, height, steps, guidance_scale, seed,
        scheduler, output_format, priority (interactive or batch); for an edit image (a Path
        or the file's bytes) and strength, to inpaint mask (as image; white repaints); loras
        (as the HTTP client's)."""
        request = infer_request(self._model, prompt, fields)
        try:
            response = self._infer(
                request, timeout=self._timeout_s, metadata=_metadata(self._api_key)
            )
        except grpc.RpcError as error:
            raise client_error(error) from None
        return generation(response)

    def ready(self) -> bool:
        try:
            return bool(self._ready(pb.ServerReadyRequest(), timeout=10).ready)
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
        self._infer = model_infer(self._channel)
        self._model, self._api_key, self._timeout_s = model, api_key, timeout_s

    async def generate(self, prompt: str, **fields: Any) -> Generation:
        request = infer_request(self._model, prompt, fields)
        try:
            response = await self._infer(
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
