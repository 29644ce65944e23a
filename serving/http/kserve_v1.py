"""KServe's v1 protocol: `GET /v1/models`, `GET /v1/models/{model}` and
`POST /v1/models/{model}:predict` with `{"instances": [{"prompt": ...}]}`, a prediction each."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request

from serving.errors import InvalidArgument, MalformedRequest, NotFound
from serving.http.bodies import json_body, requested_timeout
from serving.http.schemas import (
    ERRORS,
    V1PredictResponse,
    request_body,
    v1_predict_schema,
)
from serving.request import parse_params
from serving.service import EncodedResult, GenerationService


def install_kserve_v1_routes(
    app: FastAPI, service: GenerationService, observe: Callable[[EncodedResult], None]
) -> None:
    name = service.settings.model_name

    def check_model(model: str) -> None:
        if model != name:
            raise NotFound(f"model {model!r} is not served here; this service serves {name!r}")

    @app.get("/v1/models")
    async def models() -> dict[str, list[str]]:
        return {"models": [name]}

    @app.get("/v1/models/{model}")
    async def model_status(model: str) -> dict[str, Any]:
        check_model(model)
        return {"name": name, "ready": all((await service.readiness()).values())}

    @app.post(
        "/v1/models/{model}:predict",
        openapi_extra=request_body(v1_predict_schema()),
        responses={200: {"model": V1PredictResponse}, **ERRORS},
    )
    async def predict(model: str, request: Request) -> dict[str, Any]:
        check_model(model)
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise MalformedRequest('the body must be {"instances": [{"prompt": ...}, ...]}')
        if not body["instances"]:
            raise InvalidArgument("instances", "must hold at least one instance")
        predictions = []
        for index, instance in enumerate(body["instances"]):
            try:
                params = parse_params(instance)
                resolved = service.resolve(params)
            except InvalidArgument as error:
                raise error.renamed(f"instances[{index}].{error.field}") from None
            result = await service.produce(
                resolved, determined=params.seed is not None, timeout_s=requested_timeout(request)
            )
            observe(result)
            predictions.append(
                {
                    "images": [base64.b64encode(i.data).decode("ascii") for i in result.images],
                    "seeds": [image.seed for image in result.images],
                    "format": resolved.output_format,
                }
            )
        return {"predictions": predictions}
