"""Reading a JSON request body, with the one error every transport maps."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from serving.errors import MalformedRequest


async def json_body(request: Request) -> Any:
    body = await request.body()
    if not body:
        raise MalformedRequest("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedRequest(f"malformed JSON: {error}") from None
