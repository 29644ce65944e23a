"""Job webhooks: the finished job POSTed to the client's URL, signed with HMAC-SHA256.

Receivers verify `X-SD-Signature-256: sha256=<hex>` over the raw body with the shared secret
(`SD_WEBHOOK_SECRET`), the way GitHub webhooks are verified.

A webhook URL is a request the server makes on a client's behalf (SSRF): one whose host resolves
to a loopback, link-local (cloud metadata at 169.254.169.254), private, shared, reserved or
multicast address is refused, when the job is submitted and again before each delivery (DNS can
change in between), unless `SD_WEBHOOK_ALLOW` names its network or host. Redirects are never
followed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _kind(address: IPAddress) -> str | None:
    """What makes an address internal, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _kind(address.ipv4_mapped)
    for kind in ("unspecified", "loopback", "link_local", "private", "multicast", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:  # e.g. 100.64.0.0/10, carrier-grade NAT
        return "non-global"
    return None


@dataclass(frozen=True)
class WebhookTargets:
    """Which hosts webhooks may reach: public addresses, and internal ones the operator allows
    by network (CIDR) or host name (`SD_WEBHOOK_ALLOW`)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def allowing(cls, entries: Iterable[str]) -> WebhookTargets:
        networks, hosts = [], set()
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    async def refusal(self, url: str) -> str | None:
        """Why `url` may not be called, or None when it may."""
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        if host in self.hosts:
            return None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, ValueError) as error:
            return f"its host {host!r} does not resolve ({error})"
        for *_, sockaddr in found:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            kind = _kind(address)
            if kind is not None and not any(address in net for net in self.networks):
                return (
                    f"its host {host!r} resolves to {address}, a {kind} address; the operator can "
                    "allow it with SD_WEBHOOK_ALLOW"
                )
        return None

    async def check(self, url: str) -> None:
        """`refusal` as the 422 a submission gets."""
        reason = await self.refusal(url)
        if reason is not None:
            raise InvalidArgument("webhook_url", f"is refused: {reason}")


@dataclass(frozen=True)
class WebhookSender:
    """Signs with the server's secret (SD_WEBHOOK_SECRET) and retries failed deliveries, to the
    targets it may reach."""

    secret: bytes
    timeout_s: float
    attempts: int
    targets: WebhookTargets = WebhookTargets()

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
                refusal = await self.targets.refusal(url)
                if refusal is not None:
                    outcome["error"] = f"refused: {refusal}"
                    break
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
