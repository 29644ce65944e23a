"""Per-client token buckets: `rate_limit_per_minute` sustained, `rate_limit_burst` at once.

Clients are told apart by API key when keys are on, else by address; every transport uses this.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from serving.errors import RateLimited
from serving.settings import Settings

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


def token_buckets(settings: Settings) -> TokenBuckets | None:
    """The settings' rate limit, or None when there is none."""
    if settings.rate_limit_per_minute is None:
        return None
    return TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)


def identity(authorization: str | None, address: str | None) -> str:
    """Who a bucket belongs to: the API key's hash (never the key itself), else the address."""
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return "addr:" + (address or "unknown")


def rate_limited(wait_s: float) -> RateLimited:
    return RateLimited(
        "too many requests from this client; retry after the Retry-After delay",
        retry_after_s=max(1, math.ceil(wait_s)),
    )
