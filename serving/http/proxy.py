"""What Ray Serve's HTTP proxy says when the ingress replica dies holding a request.

The proxy answers such a request with a bare 500, which clients do not retry. It runs the
middlewares that `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names (set to `middlewares` below by
`sd-serving serve`, the image and the chart), so the one here turns "the proxy finished without
any answer started" into the 503 with Retry-After that every other lost stage gets. A route
always answers through its error handlers, so no answer at all means the replica was lost."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import StageLost
from serving.http.errors import error_response

CALLBACK_IMPORT_PATH = "serving.http.proxy:middlewares"


class AnswerLostReplicas:
    """A 503 with Retry-After, in the path's protocol shape, for a request left unanswered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise
        if not started:
            lost = StageLost("the replica serving this request stopped before answering; retry")
            await error_response(lost, scope.get("path", ""))(scope, receive, send)


def middlewares() -> list[Middleware]:
    """The proxy's middlewares (Ray calls this in the proxy actor)."""
    return [Middleware(AnswerLostReplicas)]
