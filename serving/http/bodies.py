"""Reading a JSON request body, with the one error every transport maps."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serving.errors import InvalidArgument, MalformedRequest

TIMEOUT_HEADER = "x-timeout-s"


def requested_timeout(request: Request) -> float | None:
    """The client's own deadline in seconds (header X-Timeout-S), capped by the server's."""
    return parse_timeout(request.headers.get(TIMEOUT_HEADER))


def parse_timeout(raw: str | None) -> float | None:
    """An X-Timeout-S value (HTTP header or gRPC metadata) in seconds; None when absent."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidArgument("X-Timeout-S", f"must be a positive number of seconds (got {raw!r})")
    return value


async def json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise MalformedRequest("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedRequest(f"malformed JSON: {error}") from None
