"""KServe v2 over REST: kserve's own endpoint handlers, response models and DataPlane, mounted in
the ingress app. Loading and unloading models (kserve's repository extension) belong to Ray Serve
deployments here, so those two routes are not mounted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v2_datamodels import (
    ListModelsResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from pydantic import BaseModel


def install_kserve_v2_routes(app: FastAPI, data_plane: DataPlane) -> None:
    endpoints = V2Endpoints(data_plane, model_repository_extension=None)
    routes: list[tuple[str, str, Callable[..., Any], type[BaseModel] | None]] = [
        ("GET", "", endpoints.metadata, ServerMetadataResponse),
        ("GET", "/health/live", endpoints.live, ServerLiveResponse),
        ("GET", "/health/ready", endpoints.ready, ServerReadyResponse),
        ("GET", "/models", endpoints.models, ListModelsResponse),
        ("GET", "/models/{model_name}", endpoints.model_metadata, ModelMetadataResponse),
        ("GET", "/models/{model_name}/ready", endpoints.model_ready, ModelReadyResponse),
        ("POST", "/models/{model_name}/infer", endpoints.infer, None),
    ]
    router = APIRouter(prefix="/v2", tags=["KServe v2"])
    for method, path, handler, response_model in routes:
        router.add_api_route(path, handler, response_model=response_model, methods=[method])
    app.include_router(router)
