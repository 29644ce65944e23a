"""KServe's Open Inference Protocol v2, transport-neutral: the kserve `Model` that maps a v2
InferRequest onto GenerateParams and GenerationService.produce, and the DataPlane that kserve's
own REST endpoints and our gRPC servicer share.

Inputs are named scalars (`prompt` BYTES, `steps` INT…); outputs are `image` (UINT8
[N, H, W, 3]), `image_bytes` (BYTES, PNG/JPEG/WebP chosen by parameter `output_format`) and
`seed` (INT64 [N])."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from kserve import Model, ModelRepository
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from PIL import Image

from serving.errors import InvalidArgument, MalformedRequest, NotFound, NotReady, ServingError
from serving.http.bodies import TIMEOUT_HEADER, parse_timeout
from serving.request import OUTPUT_FORMATS, GenerateParams
from serving.rpc.protos import parameter_value
from serving.service import EncodedResult, GenerationService

TEXT_INPUTS = ("prompt", "negative_prompt", "scheduler")
INT_INPUTS = ("steps", "width", "height", "seed", "num_images")
FLOAT_INPUTS = ("guidance_scale",)
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
OUTPUTS = ("image", "image_bytes", "seed")
READINESS_TTL_S = 2.0


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


INPUT_METADATA = [
    _tensor("prompt", "BYTES", [1]),
    _tensor("negative_prompt", "BYTES", [1]),
    _tensor("scheduler", "BYTES", [1]),
    _tensor("steps", "INT32", [1]),
    _tensor("width", "INT32", [1]),
    _tensor("height", "INT32", [1]),
    _tensor("num_images", "INT32", [1]),
    _tensor("seed", "INT64", [1]),
    _tensor("guidance_scale", "FP32", [1]),
]
OUTPUT_METADATA = [
    _tensor("image", "UINT8", [-1, -1, -1, 3]),
    _tensor("image_bytes", "BYTES", [-1]),
    _tensor("seed", "INT64", [-1]),
]


class StableDiffusionModel(Model):
    """The served model as kserve sees it. Every call goes through GenerationService.produce."""

    def __init__(
        self, service: GenerationService, observe: Callable[[EncodedResult], None]
    ) -> None:
        super().__init__(service.settings.model_name)
        self._service = service
        self._observe = observe
        self._ready_at = 0.0
        self._probe: asyncio.Task[None] | None = None
        self.ready = True

    async def healthy(self) -> bool:
        # Stage readiness costs a call per stage and kserve asks twice per inference: answer
        # from the last probe and refresh it in the background when it is stale.
        stale = time.monotonic() - self._ready_at > READINESS_TTL_S
        if stale and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._refresh_readiness())
        return bool(self.ready)

    async def _refresh_readiness(self) -> None:
        self.ready = all((await self._service.readiness()).values())
        self._ready_at = time.monotonic()

    def load(self) -> bool:  # the stages load themselves; kserve calls this when not ready
        return bool(self.ready)

    def get_input_types(self) -> list[dict[str, Any]]:
        return INPUT_METADATA

    def get_output_types(self) -> list[dict[str, Any]]:
        return OUTPUT_METADATA

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise MalformedRequest("expected a v2 inference request with `inputs`")
        params = params_from_infer_request(payload)
        wanted = requested_outputs(payload, params.output_format)
        if "image" in wanted:
            params = params.model_copy(update={"output_format": "png"})
        try:
            request = self._service.resolve(params)
        except InvalidArgument as error:
            raise error.renamed(v2_field_name(error.field)) from None
        result = await self._service.produce(
            request,
            determined=params.seed is not None,
            timeout_s=parse_timeout((headers or {}).get(TIMEOUT_HEADER)),
        )
        self._observe(result)
        return infer_response(payload, result, wanted)


def v2_field_name(field: str) -> str:
    """Where a v2 client put the field: `steps` → `inputs[steps]`."""
    if field == "output_format":
        return "parameters.output_format"
    return f"inputs[{field}]"


def params_from_infer_request(payload: InferRequest) -> GenerateParams:
    values: dict[str, Any] = {}
    for tensor in payload.inputs:
        values[tensor.name] = _scalar(tensor)
    if "prompt" not in values:
        raise InvalidArgument("inputs", "a BYTES input named `prompt` is required")
    output_format = parameter_value(payload.parameters, "output_format")
    if output_format is not None:
        if not isinstance(output_format, str) or output_format.lower() not in (
            *OUTPUT_FORMATS,
            "jpg",
        ):
            raise InvalidArgument(
                "parameters.output_format",
                f"must be one of {', '.join(OUTPUT_FORMATS)} (got {output_format!r})",
            )
        values["output_format"] = output_format
    try:
        return GenerateParams.model_validate(values)
    except ValueError as error:  # types were checked per tensor; this is a safety net
        raise InvalidArgument("inputs", str(error)) from None


def _scalar(tensor: InferInput) -> Any:
    name, datatype = tensor.name, tensor.datatype
    field = f"inputs[{name}]"
    if name in TEXT_INPUTS:
        expected: frozenset[str] = frozenset({"BYTES"})
    elif name in INT_INPUTS:
        expected = INT_TYPES
    elif name in FLOAT_INPUTS:
        expected = FLOAT_TYPES | INT_TYPES
    else:
        known = ", ".join((*TEXT_INPUTS, *INT_INPUTS, *FLOAT_INPUTS))
        raise InvalidArgument(field, f"unknown input; this model takes {known}")
    if datatype not in expected:
        raise InvalidArgument(
            f"{field}.datatype", f"must be {' or '.join(sorted(expected))} (got {datatype})"
        )
    if int(np.prod(tensor.shape)) != 1:
        raise InvalidArgument(
            f"{field}.shape", f"must hold exactly one element, e.g. [1] (got {tensor.shape})"
        )
    try:
        value = tensor.as_numpy().reshape(-1)[0]
    except (ValueError, TypeError, IndexError) as error:
        detail = f"does not match its shape and datatype: {error}"
        raise InvalidArgument(f"{field}.data", detail) from None
    if name in TEXT_INPUTS:
        if isinstance(value, bytes | np.bytes_):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(field, "must be UTF-8 text") from None
        return str(value)
    if name in INT_INPUTS:
        return int(value)
    return float(value)


def requested_outputs(payload: InferRequest, output_format: str | None) -> set[str]:
    """Which outputs to build: the ones the client named, else `image_bytes` when it chose an
    encoded format, else the raw `image` tensor; `seed` always."""
    named = {output.name for output in payload.request_outputs or []}
    unknown = named - set(OUTPUTS)
    if unknown:
        raise InvalidArgument(
            "outputs", f"unknown output {sorted(unknown)[0]!r}; choose from {', '.join(OUTPUTS)}"
        )
    if not named:
        named = {"image_bytes" if output_format else "image", "seed"}
    fmt = (output_format or "png").lower()
    if "image" in named and fmt != "png":
        raise InvalidArgument(
            "parameters.output_format",
            f"the UINT8 `image` output is lossless, so it cannot come with {fmt}; "
            "ask for `image_bytes` alone",
        )
    return named


def infer_response(payload: InferRequest, result: EncodedResult, wanted: set[str]) -> InferResponse:
    outputs = []
    count = len(result.images)
    if "image" in wanted:
        pixels = np.stack([_decode_png(image.data) for image in result.images])
        output = InferOutput("image", list(pixels.shape), "UINT8")
        output.set_data_from_numpy(pixels, binary_data=False)
        outputs.append(output)
    if "image_bytes" in wanted:
        output = InferOutput("image_bytes", [count], "BYTES")
        parameters: dict[str, Any] = {"content_type": result.media_type}
        if _sent_as_binary(payload, "image_bytes"):
            data = np.array([image.data for image in result.images], dtype=np.object_)
        else:  # JSON carries text only: base64, and the parameter says so
            data = np.array([base64.b64encode(i.data) for i in result.images], dtype=np.object_)
            parameters["content_transfer_encoding"] = "base64"
        output.set_data_from_numpy(data, binary_data=_sent_as_binary(payload, "image_bytes"))
        output.parameters = {**(output.parameters or {}), **parameters}
        outputs.append(output)
    if "seed" in wanted:
        seeds = np.array([image.seed for image in result.images], dtype=np.int64)
        output = InferOutput("seed", [count], "INT64")
        output.set_data_from_numpy(seeds, binary_data=False)
        outputs.append(output)
    return InferResponse(
        response_id=payload.id or uuid.uuid4().hex,
        model_name=payload.model_name,
        infer_outputs=outputs,
        parameters={"cached": result.cached},
        # gRPC answers in raw_output_contents; REST in JSON unless the client asked for binary.
        use_binary_outputs=payload.from_grpc or payload.use_binary_outputs,
        requested_outputs=payload.request_outputs or None,
    )


def _sent_as_binary(payload: InferRequest, name: str) -> bool:
    """Whether an output travels as raw bytes: always over gRPC (raw_output_contents), over REST
    with the binary tensor data extension (`binary_data_output`, or per output `binary_data`)."""
    if payload.from_grpc:
        return True
    for output in payload.request_outputs or []:
        if output.name == name and output.binary_data is not None:
            return bool(output.binary_data)
    return bool(payload.use_binary_outputs)


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def create_data_plane(model: StableDiffusionModel) -> DataPlane:
    repository = ModelRepository()
    repository.update(model)
    return DataPlane(model_registry=repository)


KSERVE_ERRORS: tuple[type[Exception], ...] = (
    ModelNotFound,
    ModelNotReady,
    ServerNotReady,
    InvalidInput,
    NotImplementedError,
)


def kserve_error(error: BaseException) -> ServingError | None:
    """kserve's own exceptions (raised inside its endpoints and DataPlane) as ours."""
    if isinstance(error, ModelNotFound):
        return NotFound(str(error))
    if isinstance(error, ModelNotReady | ServerNotReady):
        return NotReady(str(error))
    if isinstance(error, InvalidInput):
        return MalformedRequest(str(error))
    if isinstance(error, NotImplementedError):  # model versions
        return NotFound(str(error) or "model versions are not supported")
    return None
