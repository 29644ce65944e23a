"""KServe's Open Inference Protocol v2, transport-neutral: the kserve `Model` that maps a v2
InferRequest onto GenerateParams and DataPlane.generate, and the kserve DataPlane that kserve's
own REST endpoints and gRPC servicer share.

Inputs are named scalars (`prompt` BYTES, `steps` INT…); outputs are `image` (UINT8
[N, H, W, 3]), `image_bytes` (BYTES, PNG/JPEG/WebP chosen by parameter `output_format`) and
`seed` (INT64 [N]). The tables live with the client (serving/client/v2.py), which speaks the
same protocol."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import numpy as np
from kserve import Model, ModelRepository
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotReady,
)
from kserve.model import BaseKServeModel
from kserve.protocol.dataplane import DataPlane as KServeDataPlane
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from PIL import Image

from serving.client.v2 import DECLARED_INPUTS, OUTPUTS, PAIR_INPUTS, accepted_datatypes, input_shape
from serving.dataplane.model import ServedModel
from serving.dataplane.request import (
    GenerateParams,
    RequestContext,
    lora_list,
    normalize_format,
)
from serving.dataplane.service import DataPlane, GenerationResult
from serving.errors import (
    InvalidArgument,
    MalformedRequest,
    NotFound,
    NotReady,
    ServingError,
    fields_renamed,
)

# The version a REST call named in its path (/v2/models/{name}/versions/{version}/infer): kserve's
# endpoint decodes the body without it, so the route hands it to `predict` here. gRPC requests
# carry theirs in `model_version`.
REST_MODEL_VERSION: ContextVar[str | None] = ContextVar("rest_model_version", default=None)


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


OUTPUT_METADATA = [_tensor(name, datatype, shape) for name, (datatype, shape) in OUTPUTS.items()]


def input_metadata(model: ServedModel) -> list[dict[str, Any]]:
    """The model's inputs: every declared one, SDXL's size conditioning only for SDXL."""
    return [
        _tensor(name, datatype, input_shape(name))
        for name, datatype in DECLARED_INPUTS.items()
        if name not in PAIR_INPUTS or model.profile.size_conditioning
    ]


class StableDiffusionModel(Model):
    """A served model as kserve sees it. Every inference goes through DataPlane.generate."""

    def __init__(self, data_plane: DataPlane, model: ServedModel) -> None:
        super().__init__(model.name)
        self._data_plane = data_plane
        self._inputs = input_metadata(model)
        self.ready = True

    async def healthy(self) -> bool:
        return await self._data_plane.ready()

    def load(self) -> bool:  # the stages load themselves; kserve calls this when not ready
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return self._inputs

    def get_output_types(self) -> list[dict[str, Any]]:
        return OUTPUT_METADATA

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        if not isinstance(payload, InferRequest):
            raise MalformedRequest("expected a v2 inference request with `inputs`")
        context = RequestContext.from_headers(headers or {}, address=None)
        with fields_renamed(v2_field_name):
            version = payload.model_version or REST_MODEL_VERSION.get()
            model = self.name if not version else f"{self.name}@{version}"
            params = params_from_infer_request(payload).model_copy(update={"model": model})
            wanted = requested_outputs(payload, params.output_format)
            if "image" in wanted:
                params = params.model_copy(update={"output_format": "png"})
            result = await self._data_plane.generate(params, context, pixels="image" in wanted)
        return infer_response(payload, result, wanted)


def v2_field_name(field: str) -> str:
    """Where a v2 client put the field: `steps` → `inputs[steps]`."""
    if field.startswith(("inputs", "outputs", "parameters")) or field == "X-Timeout-S":
        return field
    if field in ("output_format", "priority") or field.startswith("loras"):
        return f"parameters.{field}"
    if field in ("image", "mask"):
        return f"inputs[input_{field}]"
    return f"inputs[{field}]"


def params_from_infer_request(payload: InferRequest) -> GenerateParams:
    values: dict[str, Any] = {tensor.name: _value(tensor) for tensor in payload.inputs}
    for name in ("image", "mask"):
        if f"input_{name}" in values:
            values[name] = values.pop(f"input_{name}")
    if "prompt" not in values:
        raise InvalidArgument("inputs", "a BYTES input named `prompt` is required")
    output_format = parameter_value(payload.parameters, "output_format")
    if output_format is not None:
        if not isinstance(output_format, str):
            raise InvalidArgument(
                "parameters.output_format", f"must be a string (got {output_format!r})"
            )
        values["output_format"] = normalize_format(output_format, "parameters.output_format")
    priority = parameter_value(payload.parameters, "priority")
    if priority is not None:
        if not isinstance(priority, str):
            raise InvalidArgument("parameters.priority", f"must be a string (got {priority!r})")
        values["priority"] = priority
    loras = parameter_value(payload.parameters, "loras")
    if loras is not None:
        if not isinstance(loras, str):
            raise InvalidArgument("parameters.loras", f"must be JSON text (got {loras!r})")
        values["loras"] = lora_list(loras, "parameters.loras")
    try:
        return GenerateParams.model_validate(values)
    except ValueError as error:  # types were checked per tensor; this is a safety net
        raise InvalidArgument("inputs", str(error)) from None


def _value(tensor: InferInput) -> Any:
    name, datatype = tensor.name, tensor.datatype
    field = f"inputs[{name}]"
    if name not in DECLARED_INPUTS:
        known = ", ".join(DECLARED_INPUTS)
        raise InvalidArgument(field, f"unknown input; this model takes {known}")
    expected = accepted_datatypes(DECLARED_INPUTS[name])
    if name in PICTURE_INPUTS:
        if datatype == "UINT8":  # the pixels themselves: [H, W, 3] (a mask also [H, W])
            return picture_from_pixels(tensor, field)
        expected = expected | {"UINT8"}
    if datatype not in expected:
        raise InvalidArgument(
            f"{field}.datatype", f"must be {' or '.join(sorted(expected))} (got {datatype})"
        )
    count = input_shape(name)[0]
    if int(np.prod(tensor.shape)) != count:
        elements = "exactly one element, e.g. [1]" if count == 1 else "two elements, [2]"
        raise InvalidArgument(f"{field}.shape", f"must hold {elements} (got {tensor.shape})")
    try:
        values = tensor.as_numpy().reshape(-1)
        value = values[0]
    except (ValueError, TypeError, IndexError) as error:
        detail = f"does not match its shape and datatype: {error}"
        raise InvalidArgument(f"{field}.data", detail) from None
    declared = DECLARED_INPUTS[name]
    if count == 2:
        return (int(values[0]), int(values[1]))
    if name in ("input_image", "input_mask"):
        return image_text(value)
    if declared == "BYTES":
        if isinstance(value, bytes | np.bytes_):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(field, "must be UTF-8 text") from None
        return str(value)
    if declared.startswith("FP"):
        return float(value)
    return int(value)


PICTURE_INPUTS = ("input_image", "input_mask")


def picture_from_pixels(tensor: InferInput, field: str) -> str:
    """A UINT8 picture tensor ([H, W, 3], or [H, W] grey) as base64 PNG, as GenerateParams
    takes pictures."""
    shape = [int(side) for side in tensor.shape]
    if not (len(shape) == 3 and shape[2] == 3) and len(shape) != 2:
        raise InvalidArgument(
            f"{field}.shape", f"must be [height, width, 3] or [height, width] (got {shape})"
        )
    if max(shape[:2]) > MAX_PIXEL_TENSOR_SIDE or min(shape[:2]) < 1:
        raise InvalidArgument(
            f"{field}.shape", f"sides must be 1 to {MAX_PIXEL_TENSOR_SIDE} (got {shape})"
        )
    try:
        pixels = np.asarray(tensor.as_numpy(), dtype=np.uint8).reshape(shape)
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"{field}.data", f"does not match its shape: {error}") from None
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB" if len(shape) == 3 else "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# A pixel tensor's bound, before the data plane's own (SD_LIMITS__MAX_INPUT_SIDE) on its PNG.
MAX_PIXEL_TENSOR_SIDE = 8192


# How a picture's file starts (PNG, JPEG, WebP's RIFF, GIF): raw bytes rather than base64 text.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"RIFF", b"GIF8")


def image_text(value: Any) -> str:
    """The `image` input as GenerateParams takes it (base64 text): a file's raw bytes (gRPC's
    bytes_contents, REST's binary extension) are encoded; base64 text passes as it is."""
    if isinstance(value, bytes | np.bytes_):
        data = bytes(value)
        if data.startswith(IMAGE_MAGIC):
            return base64.b64encode(data).decode("ascii")
        return data.decode("ascii", errors="replace")
    return str(value)


def parameter_value(parameters: Mapping[str, Any] | None, key: str) -> Any:
    """A v2 request parameter, from REST (a plain dict) or gRPC (InferParameter messages, a
    oneof per type); None when absent."""
    if not parameters or key not in parameters:
        return None
    value = parameters[key]
    if hasattr(value, "WhichOneof"):
        kind = value.WhichOneof("parameter_choice")
        return None if kind is None else getattr(value, kind)
    return value


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
    fmt = output_format or "png"
    if "image" in named and fmt != "png":
        raise InvalidArgument(
            "parameters.output_format",
            f"the UINT8 `image` output is lossless, so it cannot come with {fmt}; "
            "ask for `image_bytes` alone",
        )
    return named


def infer_response(
    payload: InferRequest, result: GenerationResult, wanted: set[str]
) -> InferResponse:
    outputs = []
    count = len(result.images)
    if "image" in wanted:
        assert result.pixels is not None  # asked for with pixels=True
        pixels = np.stack(result.pixels)
        output = InferOutput("image", list(pixels.shape), "UINT8")
        output.set_data_from_numpy(pixels, binary_data=False)
        outputs.append(output)
    if "image_bytes" in wanted:
        output = InferOutput("image_bytes", [count], "BYTES")
        parameters: dict[str, Any] = {"content_type": result.media_type}
        binary = _sent_as_binary(payload, "image_bytes")
        if binary:
            data = np.array([image.data for image in result.images], dtype=np.object_)
        else:  # JSON carries text only: base64, and the parameter says so
            data = np.array([base64.b64encode(i.data) for i in result.images], dtype=np.object_)
            parameters["content_transfer_encoding"] = "base64"
        output.set_data_from_numpy(data, binary_data=binary)
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
        model_version=result.request.model_version,
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


class ServingKServeDataPlane(KServeDataPlane):
    """kserve's DataPlane, with server readiness from our data plane (kserve's own answers True
    whenever it has no predictor to ask)."""

    def __init__(self, data_plane: DataPlane) -> None:
        repository = ModelRepository()
        for model in data_plane.models:
            repository.update(StableDiffusionModel(data_plane, model))
        super().__init__(model_registry=repository)
        self._serving = data_plane

    async def ready(self) -> bool:
        return await self._serving.ready()

    # kserve's own lookups raise a bare "Model with name x does not exist"; ours names the
    # served models, on REST and gRPC alike.
    def get_model_from_registry(self, name: str) -> BaseKServeModel:
        self._serving.model(name)
        return super().get_model_from_registry(name)

    async def get_model(self, name: str) -> BaseKServeModel:
        self._serving.model(name)
        return await super().get_model(name)

    async def model_ready(
        self, model_name: str, disable_predictor_health_check: bool = False
    ) -> bool:
        self._serving.model(model_name)
        return await super().model_ready(model_name, disable_predictor_health_check)

    def check_version(self, model_name: str, version: str) -> None:
        """NotFound unless the model is served and has that version."""
        self._serving.resolve_model(f"{model_name}@{version}")

    def describe(self, model_name: str) -> dict[str, Any]:
        """The model's family, request defaults and limits, samplers, LoRA adapters."""
        return self._serving.describe_model(model_name)

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        """kserve's metadata, with the platform naming the family (gRPC has no other field for
        it) and the model's versions; REST adds the model's defaults and limits
        (serving/http/kserve_v2.py)."""
        metadata: dict[str, Any] = await super().model_metadata(model_name)
        model = self._serving.model(model_name)
        metadata["platform"] = f"diffusers/{model.profile.kind}"
        metadata["versions"] = list(model.rollout.versions)
        return metadata


KSERVE_ERRORS: tuple[type[Exception], ...] = (
    InferenceError,
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
    if isinstance(error, InferenceError):  # kserve could not decode a tensor it was sent
        return MalformedRequest(
            "an input's data could not be decoded: binary BYTES over REST must be UTF-8 text "
            "(send input_image and input_mask as base64 text, or their raw bytes over gRPC)"
        )
    if isinstance(error, NotImplementedError):  # model versions
        return NotFound(str(error) or "model versions are not supported")
    return None
