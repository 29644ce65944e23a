"""KServe v2 over REST: kserve's own endpoint handlers and response models over the kserve data
plane, mounted in the ingress app. Health is the app's own (one readiness source, with the stages
listed); loading and unloading models (kserve's repository extension) belong to Ray Serve
deployments here, so those routes are not mounted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from kserve.protocol.rest.v2_datamodels import (
    InferenceRequest,
    ListModelsResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerMetadataResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from pydantic import BaseModel

from serving.dataplane.v2 import (
    KSERVE_ERRORS,
    REST_MODEL_VERSION,
    ServingKServeDataPlane,
    kserve_error,
)
from serving.http.errors import ErrorResponder
from serving.http.models import V2_ERRORS


def install_v2(app: FastAPI, data_plane: ServingKServeDataPlane, respond: ErrorResponder) -> None:
    """kserve's routes, and its exceptions answered as ours."""

    async def on_kserve_error(request: Request, error: Exception) -> JSONResponse:
        serving_error = kserve_error(error)
        if serving_error is None:
            raise error
        return respond(serving_error, request.url.path)

    for error_type in KSERVE_ERRORS:
        app.add_exception_handler(error_type, on_kserve_error)
    app.include_router(v2_router(data_plane))


class ModelMetadata(ModelMetadataResponse):
    """kserve's model metadata, and the model's family, request defaults and limits."""

    parameters: dict[str, Any]


def v2_router(data_plane: ServingKServeDataPlane) -> APIRouter:
    endpoints = V2Endpoints(data_plane, model_repository_extension=None)

    async def model_metadata(model_name: str) -> ModelMetadata:
        metadata = await endpoints.model_metadata(model_name)
        return ModelMetadata(**metadata.model_dump(), parameters=data_plane.describe(model_name))

    # kserve's endpoints refuse a version (NotImplementedError); ours check it names one of the
    # model's versions, then serve it as the model, the version going on to `predict`.
    async def version_metadata(model_name: str, model_version: str) -> ModelMetadata:
        data_plane.check_version(model_name, model_version)
        return await model_metadata(model_name)

    async def version_ready(model_name: str, model_version: str) -> ModelReadyResponse:
        data_plane.check_version(model_name, model_version)
        return await endpoints.model_ready(model_name)

    async def version_infer(
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        model_version: str,
        request_body: InferenceRequest | bytes,
    ) -> Any:
        data_plane.check_version(model_name, model_version)
        token = REST_MODEL_VERSION.set(model_version)
        try:
            return await endpoints.infer(raw_request, raw_response, model_name, request_body)
        finally:
            REST_MODEL_VERSION.reset(token)

    routes: list[tuple[str, str, Callable[..., Any], type[BaseModel] | None]] = [
        ("GET", "", endpoints.metadata, ServerMetadataResponse),
        ("GET", "/models", endpoints.models, ListModelsResponse),
        ("GET", "/models/{model_name}", model_metadata, ModelMetadata),
        ("GET", "/models/{model_name}/ready", endpoints.model_ready, ModelReadyResponse),
        ("POST", "/models/{model_name}/infer", endpoints.infer, None),
        ("GET", "/models/{model_name}/versions/{model_version}", version_metadata, ModelMetadata),
        (
            "GET",
            "/models/{model_name}/versions/{model_version}/ready",
            version_ready,
            ModelReadyResponse,
        ),
        ("POST", "/models/{model_name}/versions/{model_version}/infer", version_infer, None),
    ]
    router = APIRouter(prefix="/v2", tags=["KServe v2"])
    for method, path, handler, response_model in routes:
        router.add_api_route(
            path, handler, response_model=response_model, methods=[method], responses=V2_ERRORS
        )
    return router
