"""KServe v2 over REST: kserve's own endpoints and DataPlane, mounted in the ingress app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

# Loading and unloading belong to Ray Serve deployments here, not to the model repository API.
_NOT_SERVED = ("/v2/repository/",)


def install_kserve_v2_routes(app: FastAPI, data_plane: DataPlane) -> None:
    register_v2_endpoints(app, data_plane, model_repository_extension=None)
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not (isinstance(route, APIRoute) and route.path.startswith(_NOT_SERVED))
    ]
