"""Rate limits on the HTTP routes (health stays unlimited); the buckets are serving.ratelimit's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from serving.http.errors import ErrorRecorder, error_response
from serving.ratelimit import TokenBuckets, identity, rate_limited


def client_identity(request: Request) -> str:
    return identity(
        request.headers.get("authorization"), request.client.host if request.client else None
    )


def install_rate_limit(
    app: FastAPI, buckets: TokenBuckets, record: ErrorRecorder | None = None
) -> None:
    @app.middleware("http")
    async def limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith("/v2/health/"):
            return await call_next(request)
        wait = buckets.take(client_identity(request))
        if wait <= 0:
            return await call_next(request)
        error = rate_limited(wait)
        if record is not None:
            record(error)
        return error_response(error, request.url.path)
