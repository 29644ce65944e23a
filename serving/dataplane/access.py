"""Who may call what, one policy for HTTP and gRPC: optional API keys and per-client rate limits.

The open operations (liveness, readiness, a model's readiness and the web page) answer anyone,
unlimited, on both transports: probes must never need a key, and the page asks for the key
itself. Every other operation needs a valid key when keys are configured, and takes a token from
the client's bucket (one per API key, else per address, shared by both transports through the
store) when a rate limit is set. Each transport names its routes or methods with an `Operation`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from serving.dataplane.clients import bearer_token, load_key_file
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


def load_api_keys(path: Path) -> tuple[bytes, ...]:
    """The keys of the key file (a mounted Secret in Kubernetes; serving/dataplane/clients.py
    has its format)."""
    return tuple(entry.key for entry in load_key_file(path))


def is_authorized(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key, so timing reveals neither key nor match."""
    presented = bearer_token(header)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched and bool(presented)


@dataclass(frozen=True)
class RateLimit:
    per_minute: float
    burst: int


class AccessPolicy:
    def __init__(
        self, keys: tuple[bytes, ...] | None, rate_limit: RateLimit | None, store: Store
    ) -> None:
        self._keys = keys
        self._rate_limit = rate_limit
        self._store = store

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> AccessPolicy:
        keys = None if settings.api_keys_file is None else load_api_keys(settings.api_keys_file)
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
        if self._keys is not None and not is_authorized(authorization, self._keys):
            raise Unauthenticated(UNAUTHENTICATED)
        if self._rate_limit is not None:
            limit = self._rate_limit
            client = client_id(authorization, address)
            wait = await self._store.take_token(client, limit.per_minute, limit.burst)
            if wait > 0:
                raise rate_limited(wait)
