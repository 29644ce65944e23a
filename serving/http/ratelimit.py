"""Per-client token buckets: `rate_limit_per_minute` sustained, `rate_limit_burst` at once.

Clients are told apart by API key when keys are on, else by address. Health stays unlimited.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from serving.errors import RateLimited
from serving.http.errors import ErrorRecorder, error_response

MAX_CLIENTS = 100_000  # buckets kept; the least recently seen are forgotten (they were full)


class TokenBuckets:
    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """0 when the request may go, else the seconds until the client's next token."""
        now = self._clock()
        tokens, last = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1 - tokens) / self._rate
        self._buckets.move_to_end(client)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def client_identity(request: Request) -> str:
    authorization = request.headers.get("authorization")
    if authorization:  # never keep keys themselves in memory longer than needed
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "unknown")


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
        error = RateLimited(
            "too many requests from this client; retry after the Retry-After delay",
            retry_after_s=max(1, math.ceil(wait)),
        )
        if record is not None:
            record(error)
        return error_response(error, request.url.path)
