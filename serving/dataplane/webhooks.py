"""Job webhooks: the finished job POSTed to the client's URL, signed with HMAC-SHA256.

Receivers verify `X-SD-Signature-256: sha256=<hex>` over the raw body with the shared secret
(`SD_WEBHOOK_SECRET`), the way GitHub webhooks are verified."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from serving.errors import InvalidArgument

SIGNATURE_HEADER = "X-SD-Signature-256"
EVENT_HEADER = "X-SD-Event"
MAX_URL_LENGTH = 2048
logger = logging.getLogger(__name__)


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver runs: constant-time comparison of the header with our signature."""
    return hmac.compare_digest(signature(secret, body), header)


def check_webhook_url(value: Any, secret_configured: bool) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("webhook_url", "must be a string holding an http(s) URL")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidArgument("webhook_url", f"is {len(value)} characters; the limit is 2048")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("webhook_url", f"must be an http:// or https:// URL (got {value!r})")
    if not secret_configured:
        raise InvalidArgument(
            "webhook_url",
            "webhooks are off on this server: the operator has not set SD_WEBHOOK_SECRET",
        )
    return value


@dataclass(frozen=True)
class WebhookSender:
    """Signs with the server's secret (SD_WEBHOOK_SECRET) and retries failed deliveries."""

    secret: bytes
    timeout_s: float
    attempts: int

    async def deliver(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST the payload until a 2xx answer or `attempts` tries (1 s, 2 s, 4 s… apart);
        returns what happened, for the job's `webhook` field."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, body),
            EVENT_HEADER: f"job.{payload.get('status', 'finished')}",
        }
        outcome: dict[str, Any] = {"url": url, "delivered": False, "attempts": 0}
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, self.attempts + 1):
                outcome["attempts"] = attempt
                try:
                    response = await client.post(url, content=body, headers=headers)
                    outcome["status_code"] = response.status_code
                    if response.is_success:
                        outcome["delivered"] = True
                        return outcome
                except httpx.HTTPError as error:
                    outcome["error"] = f"{type(error).__name__}: {error}"
                if attempt < self.attempts:
                    await asyncio.sleep(2 ** (attempt - 1))
        logger.warning("webhook for job %s not delivered: %s", payload.get("id"), outcome)
        return outcome
