"""What Ray Serve's HTTP proxy says when it answers for the ingress itself.

The proxy runs the middlewares that `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names (set to
`middlewares` below by `sd-serving serve`, the image and the chart). Two answers are the proxy's
own, and the one here puts them in the shape every other refusal has:

* the ingress replica died holding the request: the proxy answers a bare 500, which clients do
  not retry; "finished without any answer started" becomes the 503 with Retry-After that every
  other lost stage gets (a route always answers through its error handlers, so no answer at all
  means the replica was lost);
* every ingress replica is at `max_ongoing_requests` and the proxy's queue is full
  (`SD_INGRESS__MAX_QUEUED_REQUESTS`): its plain-text 503 becomes our JSON refusal (Retry-After
  kept).

A second one stamps each request with the time it reached the proxy (`X-SD-Received-At`), so a
client's deadline counts the time it waited in the proxy's queue for an ingress replica too; a
stamp the client sent is replaced."""

from __future__ import annotations

import time

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.dataplane.request import RECEIVED_AT_HEADER
from serving.errors import QueueFull, ServingError, StageLost
from serving.http.errors import error_response

CALLBACK_IMPORT_PATH = "serving.http.proxy:middlewares"
PROXY_ROUTES = "/-/"  # the proxy's own health and routes endpoints: answered as they are


class ProxyAnswersInOurShape:
    """The proxy's own answers (a lost replica, a full queue) as our protocol-shaped errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(PROXY_ROUTES):
            await self.app(scope, receive, send)
            return
        started = False
        replaced: ServingError | None = None

        async def watched(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 503 and not _is_json(message):  # Serve's backpressure
                    replaced = QueueFull("the service is at capacity; retry later")
            if replaced is None:
                await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started and replaced is None:
                raise
        if not started:
            replaced = StageLost("the replica serving this request stopped before answering; retry")
        if replaced is not None:
            await error_response(replaced, path)(scope, receive, send)


class StampArrival:
    """Adds `X-SD-Received-At` (wall-clock seconds) to every request as it reaches the proxy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = RECEIVED_AT_HEADER.encode()
            headers = [(key, value) for key, value in scope["headers"] if key.lower() != name]
            headers.append((name, repr(time.time()).encode()))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def _is_json(start: Message) -> bool:
    headers = dict(start.get("headers", []))
    return headers.get(b"content-type", b"").startswith(b"application/json")


def middlewares() -> list[Middleware]:
    """The proxy's middlewares (Ray calls this in the proxy actor)."""
    return [Middleware(StampArrival), Middleware(ProxyAnswersInOurShape)]
