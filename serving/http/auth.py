"""Optional API keys: `Authorization: Bearer <key>` on every route but health."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response

from serving.errors import Unauthenticated
from serving.http.errors import ErrorRecorder, error_response

OPEN_PATH_PREFIXES = ("/v2/health/",)


def load_api_keys(path: Path) -> tuple[bytes, ...]:
    keys = tuple(line.strip().encode() for line in path.read_text().splitlines() if line.strip())
    if not keys:
        raise ValueError(f"{path} holds no API key")
    return keys


def is_authorized(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key, so timing reveals neither key nor match."""
    scheme, _, token = (header or "").partition(" ")
    presented = token.strip().encode() if scheme.lower() == "bearer" else b""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched and bool(presented)


def install_api_key_auth(
    app: FastAPI, keys: tuple[bytes, ...], record: ErrorRecorder | None = None
) -> None:
    @app.middleware("http")
    async def require_api_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith(OPEN_PATH_PREFIXES) or is_authorized(
            request.headers.get("authorization"), keys
        ):
            return await call_next(request)
        error = Unauthenticated("a valid API key is required: send `Authorization: Bearer <key>`")
        if record is not None:
            record(error)
        return error_response(error, request.url.path)
