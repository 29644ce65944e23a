"""Webhook signatures and URL checks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.server
import threading
from collections.abc import Iterator

import pytest

from serving.dataplane.webhooks import (
    WebhookSender,
    WebhookTargets,
    check_webhook_url,
    signature,
    verify,
)
from serving.errors import InvalidArgument


@contextlib.contextmanager
def receiver(first_status: int = 204) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A webhook receiver on loopback: its URL, and the (signature, body) of each POST; the
    first answered with `first_status`, the others with 204."""
    received: list[tuple[str, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["X-SD-Signature-256"], body))
            self.send_response(first_status if len(received) == 1 else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def test_signature_is_github_style_hmac_sha256_over_the_body() -> None:
    body = b'{"id":"abc","status":"succeeded"}'
    expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert signature(b"secret", body) == f"sha256={expected}"
    assert verify(b"secret", body, f"sha256={expected}")
    assert not verify(b"other", body, f"sha256={expected}")
    assert not verify(b"secret", body + b" ", f"sha256={expected}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https://example.com/" + "a" * 2100, "2048"),
        (42, "string"),
    ],
)
def test_bad_webhook_urls_name_the_field(url: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_webhook_url(url, secret_configured=True)
    assert raised.value.field == "webhook_url" and message in raised.value.message


def test_webhooks_need_a_server_secret() -> None:
    with pytest.raises(InvalidArgument, match="SD_WEBHOOK_SECRET"):
        check_webhook_url("https://example.com/hook", secret_configured=False)
    assert check_webhook_url("https://example.com/hook", True) == "https://example.com/hook"


def test_a_failed_delivery_is_retried_and_signed_each_time() -> None:
    with receiver(first_status=500) as (url, received):
        sender = WebhookSender(
            b"secret", timeout_s=5, attempts=3, targets=WebhookTargets.allowing(["127.0.0.1"])
        )
        outcome = asyncio.run(sender.deliver(url, {"id": "j1", "status": "succeeded"}))
    assert outcome == {"url": url, "delivered": True, "attempts": 2, "status_code": 204}
    assert [verify(b"secret", body, header) for header, body in received] == [True, True]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),  # IPv4 mapped into IPv6
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://192.168.1.20/hook", "private"),
        ("http://[fd00:ec2::254]/", "private"),  # AWS's IPv6 metadata address
        ("http://100.64.1.1/hook", "non-global"),  # carrier-grade NAT
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
    ],
)
def test_internal_targets_are_refused(url: str, kind: str) -> None:
    reason = asyncio.run(WebhookTargets().refusal(url))
    assert reason is not None and f"a {kind} address" in reason, reason


def test_public_and_allowed_targets_pass() -> None:
    default = WebhookTargets()
    assert asyncio.run(default.refusal("https://93.184.215.14/hook")) is None
    allowed = WebhookTargets.allowing(["10.20.0.0/16", "hooks.internal", "127.0.0.1"])
    assert asyncio.run(allowed.refusal("http://10.20.3.4:8080/hook")) is None
    assert asyncio.run(allowed.refusal("http://hooks.internal/x")) is None
    assert asyncio.run(allowed.refusal("http://127.0.0.1:5000/x")) is None
    assert "private" in (asyncio.run(allowed.refusal("http://10.21.0.1/hook")) or "")


def test_an_unresolvable_host_is_refused() -> None:
    reason = asyncio.run(WebhookTargets().refusal("http://no-such-host.invalid/hook"))
    assert reason is not None and "does not resolve" in reason


def test_a_refused_target_is_never_called() -> None:
    """Checked again at delivery (DNS may have changed since the job was submitted)."""
    with receiver() as (url, received):
        sender = WebhookSender(b"secret", timeout_s=5, attempts=3)
        outcome = asyncio.run(sender.deliver(url, {"id": "j1", "status": "succeeded"}))
    assert outcome["delivered"] is False and outcome["attempts"] == 0
    assert "loopback" in outcome["error"] and received == []
