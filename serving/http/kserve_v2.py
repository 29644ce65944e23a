"""KServe v2 over REST: kserve's own endpoint handlers, response models and DataPlane, mounted in
the ingress app. Loading and unloading models (kserve's repository extension) belong to Ray Serve
deployments here, so those two routes are not mounted."""

from __future__ import annotations

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


def install_kserve_v2_routes(app: FastAPI, data_plane: DataPlane) -> None:
    endpoints = V2Endpoints(data_plane, model_repository_extension=None)
    router = APIRouter(prefix="/v2", tags=["KServe v2"])
    router.add_api_route(
        "", endpoints.metadata, response_model=ServerMetadataResponse, methods=["GET"]
    )
    router.add_api_route(
        "/health/live", endpoints.live, response_model=ServerLiveResponse, methods=["GET"]
    )
    router.add_api_route(
        "/health/ready", endpoints.ready, response_model=ServerReadyResponse, methods=["GET"]
    )
    router.add_api_route(
        "/models", endpoints.models, response_model=ListModelsResponse, methods=["GET"]
    )
    router.add_api_route(
        "/models/{model_name}",
        endpoints.model_metadata,
        response_model=ModelMetadataResponse,
        methods=["GET"],
    )
    router.add_api_route(
        "/models/{model_name}/ready",
        endpoints.model_ready,
        response_model=ModelReadyResponse,
        methods=["GET"],
    )
    router.add_api_route(
        "/models/{model_name}/infer", endpoints.infer, response_model=None, methods=["POST"]
    )
    app.include_router(router)
