"""Request counts and latency per route, recorded around every HTTP request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from serving.metrics import IngressMetrics


def route_label(request: Request) -> str:
    """The route template (`/v1/generate`), never the raw path: bounded label values."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def install_request_metrics(app: FastAPI, metrics: IngressMetrics) -> None:
    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = route_label(request)
        if not route.startswith("/v2/health/"):  # probes would drown the traffic panels
            metrics.record_request(
                route, "http", response.status_code, time.perf_counter() - started
            )
        return response
