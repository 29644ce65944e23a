"""A cap on HTTP request bodies: 413 before the body is read when Content-Length says it is too
big, and as soon as a chunked body passes the limit."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import PayloadTooLarge
from serving.http.errors import ErrorRecorder, error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, record: ErrorRecorder | None = None) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._record = record

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is {size} bytes; the limit is {self._max_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            error = self._too_large(declared.decode())
            if self._record is not None:
                self._record(error)
            await error_response(error, scope["path"])(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    raise self._too_large(f"over {self._max_bytes}")
            return message

        await self._app(scope, counted, send)
