"""What runs around every HTTP request: the body size limit, admission (API keys and rate
limits, by the one access policy) and the request metrics. The order they run in is set in
serving/http/app.py."""

from __future__ import annotations

import re
import time

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.dataplane.access import AccessPolicy, Operation
from serving.errors import PayloadTooLarge, ServingError
from serving.http.errors import ErrorResponder
from serving.metrics import IngressMetrics

PAGE_PATH = "/"
HEALTH_PREFIX = "/v2/health/"
_OPEN_PATHS = {
    "/v2/health/live": Operation.SERVER_LIVE,
    "/v2/health/ready": Operation.SERVER_READY,
    PAGE_PATH: Operation.WEB_PAGE,
}
_MODEL_READY = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$")


def operation(path: str) -> Operation:
    """The access policy's name for what a path does."""
    if path in _OPEN_PATHS:
        return _OPEN_PATHS[path]
    if _MODEL_READY.match(path):
        return Operation.MODEL_READY
    return Operation.OTHER


class Admission:
    """API keys and rate limits, before any route runs (401 / 429 in the protocol's shape)."""

    def __init__(self, app: ASGIApp, access: AccessPolicy, respond: ErrorResponder) -> None:
        self._app = app
        self._access = access
        self._respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            client = scope.get("client")
            try:
                await self._access.admit(
                    operation(path),
                    Headers(scope=scope).get("authorization"),
                    client[0] if client else None,
                )
            except ServingError as error:
                await self._respond(error, path)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def route_label(scope: Scope) -> str:
    """The route template (`/v1/generate`), never the raw path: bounded label values."""
    return str(getattr(scope.get("route"), "path", "unmatched"))


class RequestMetrics:
    """Requests by route and status, and the time to the answer's headers (an event stream's
    duration is its client's business)."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            route = route_label(scope)
            if not recorded and not route.startswith(HEALTH_PREFIX):  # probes: noise
                self._metrics.record_request(route, "http", status, time.perf_counter() - started)
            recorded = True

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, timed)
        except Exception:
            record(500)
            raise


# Routes whose bodies may carry pictures (an edit's image and mask): they get the larger limit.
PICTURE_ROUTES = re.compile(
    r"^/v1/(generate|jobs|images/edits)$|^/v1/models/[^/]+:predict$|^/v2/models/.+/infer$"
)


class BodyLimit:
    """413 before the body is read when Content-Length says it is too big, and as soon as a
    chunked body passes the limit (in our error shape, which Starlette's own limit would not
    keep for a declared length). Routes that take pictures have a limit of their own."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, respond: ErrorResponder, max_picture_bytes: int = 0
    ) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._max_picture_bytes = max(max_picture_bytes, max_bytes)
        self._respond = respond

    def _limit(self, path: str) -> int:
        return self._max_picture_bytes if PICTURE_ROUTES.match(path) else self._max_bytes

    def _too_large(self, size: str, limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is {size} bytes; the limit is {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = self._respond(self._too_large(declared.decode(), limit), scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTP error: FastAPI's body parsing passes those through (as a 413).
                    raise HTTPException(413, self._too_large(f"over {limit}", limit).message)
            return message

        await self._app(scope, counted, send)
