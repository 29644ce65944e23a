"""The HTTP app: every REST protocol over the one data plane. Translation only: each route maps
its body onto GenerateParams and calls DataPlane.generate (or the job runner).

The order of what runs around a request is set here, outermost first: CORS (a preflight needs no
key), the body size limit (413 before a large body is read), the request metrics, admission (API
keys, rate limits), then the route.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from serving import __version__
from serving.dataplane.services import Services
from serving.http import feedback, generate, jobs, kserve_v1, loras, openai
from serving.http.dependencies import DataPlaneDep
from serving.http.errors import ErrorResponder, install_error_handlers
from serving.http.kserve_v2 import install_v2
from serving.http.middleware import Admission, BodyLimit, RequestMetrics
from serving.http.models import Liveness, Readiness
from serving.http.page import page_router

health = APIRouter(tags=["health"])


@health.get("/v2/health/live")
async def live() -> Liveness:
    return Liveness(live=True)


@health.get("/v2/health/ready", responses={503: {"model": Readiness}})
async def ready(data_plane: DataPlaneDep) -> JSONResponse:
    """200 when every stage has a replica that loaded and answers; 503 with the stages."""
    stages = await data_plane.readiness()
    body = Readiness(ready=all(stages.values()), stages=stages)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


def create_http_app(services: Services) -> FastAPI:
    settings = services.settings

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.jobs.start()  # with Redis: this replica's worker of queued jobs
        watching = asyncio.create_task(services.data_plane.watch_readiness())
        try:
            yield
        finally:
            watching.cancel()
            await services.jobs.stop()

    app = FastAPI(
        title="sd-serving",
        lifespan=lifespan,
        version=__version__,
        # Bodies without a Content-Type are read as JSON (IoT clients often send none).
        strict_content_type=False,
    )
    app.state.services = services
    respond = ErrorResponder(services.metrics)
    install_error_handlers(app, respond)
    # Middleware added last runs first.
    app.add_middleware(Admission, access=services.access, respond=respond)
    app.add_middleware(RequestMetrics, metrics=services.metrics)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        max_picture_bytes=settings.max_picture_request_bytes,
        respond=respond,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Timeout-S", "Last-Event-ID"],
            expose_headers=[
                "Retry-After",
                "X-Seed",
                "X-Model-Version",
                "Server-Timing",
                "ETag",
                "Location",
            ],
        )
    routers = (
        health,
        generate.router,
        openai.router,
        kserve_v1.router,
        jobs.router,
        loras.router,
        feedback.router,
    )
    for router in routers:
        app.include_router(router)
    install_v2(app, services.v2, respond)
    app.include_router(page_router())
    return app
