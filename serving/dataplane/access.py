"""Who may call what, one policy for HTTP and gRPC: optional API keys and per-client rate limits.

The open operations (liveness, readiness, a model's readiness and the web page) answer anyone,
unlimited, on both transports: probes must never need a key, and the page asks for the key
itself. Every other operation needs a valid key when keys are configured, and takes a token from
the client's bucket (one per API key, else per address, shared by both transports through the
store) when a rate limit is set. Each transport names its routes or methods with an `Operation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from serving.dataplane.clients import KeyBook
from serving.dataplane.request import client_id
from serving.dataplane.store import Store, rate_limited
from serving.errors import Unauthenticated
from serving.settings import Settings


class Operation(StrEnum):
    SERVER_LIVE = "server_live"
    SERVER_READY = "server_ready"
    MODEL_READY = "model_ready"
    WEB_PAGE = "web_page"
    OTHER = "other"


OPEN_OPERATIONS = frozenset(
    {Operation.SERVER_LIVE, Operation.SERVER_READY, Operation.MODEL_READY, Operation.WEB_PAGE}
)
UNAUTHENTICATED = (
    "a valid API key is required: send `Authorization: Bearer <key>` "
    "(gRPC: metadata `authorization: Bearer <key>`)"
)


@dataclass(frozen=True)
class RateLimit:
    per_minute: float
    burst: int


class AccessPolicy:
    def __init__(self, keys: KeyBook | None, rate_limit: RateLimit | None, store: Store) -> None:
        self._keys = keys
        self._rate_limit = rate_limit
        self._store = store

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, keys: KeyBook | None) -> AccessPolicy:
        """`keys`: the key file's book (serving/dataplane/clients.py has its format), None when
        no keys are configured."""
        limit = None
        if settings.rate_limit_per_minute is not None:
            limit = RateLimit(settings.rate_limit_per_minute, settings.rate_limit_burst)
        return cls(keys, limit, store)

    async def admit(
        self, operation: Operation, authorization: str | None, address: str | None
    ) -> None:
        """Raises Unauthenticated or RateLimited; returns when the call may go on."""
        if operation in OPEN_OPERATIONS:
            return
        if self._keys is not None and self._keys.find(authorization) is None:
            raise Unauthenticated(UNAUTHENTICATED)
        if self._rate_limit is not None:
            limit = self._rate_limit
            client = client_id(authorization, address)
            wait = await self._store.take_token(client, limit.per_minute, limit.burst)
            if wait > 0:
                raise rate_limited(wait)
