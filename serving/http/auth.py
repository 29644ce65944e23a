"""Optional API keys: `Authorization: Bearer <key>` on every route but health and the page
(the page itself asks for a key and sends it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from serving.apikeys import is_authorized
from serving.errors import Unauthenticated
from serving.http.errors import ErrorRecorder, error_response
from serving.http.web import PAGE_PATH

OPEN_PATH_PREFIXES = ("/v2/health/",)


def install_api_key_auth(
    app: FastAPI, keys: tuple[bytes, ...], record: ErrorRecorder | None = None
) -> None:
    @app.middleware("http")
    async def require_api_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if (
            path == PAGE_PATH
            or path.startswith(OPEN_PATH_PREFIXES)
            or is_authorized(request.headers.get("authorization"), keys)
        ):
            return await call_next(request)
        error = Unauthenticated("a valid API key is required: send `Authorization: Bearer <key>`")
        if record is not None:
            record(error)
        return error_response(error, request.url.path)
