"""The thin KServe gateway of the `kuberay` chart mode: forwards HTTP to the RayService's Serve app.

The InferenceService keeps KServe's routing, canary split and probes; the Ray cluster behind it
does the work. Bodies and answers stream through unchanged, so every protocol of the ingress
(v2, v1, /v1/generate, events) passes as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from serving.errors import NotReady
from serving.http.errors import error_response

# Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own, never forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def create_gateway_app(upstream: str, timeout_s: float = 600.0) -> Starlette:
    client = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=timeout_s)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        outgoing = client.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=headers,
            content=request.stream(),
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as error:
            return error_response(NotReady(f"upstream unreachable: {error}"))
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=kept,
            background=BackgroundTask(answer.aclose),
        )

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def run_gateway(upstream: str, host: str, port: int) -> int:
    import uvicorn

    uvicorn.run(create_gateway_app(upstream), host=host, port=port, log_level="warning")
    return 0
