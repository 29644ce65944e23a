"""Webhook signatures and URL checks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import threading

import pytest

from serving.dataplane.webhooks import WebhookSender, check_webhook_url, signature, verify
from serving.errors import InvalidArgument


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
    received: list[tuple[str, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["X-SD-Signature-256"], body))
            self.send_response(500 if len(received) == 1 else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = WebhookSender(b"secret", timeout_s=5, attempts=3)
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        outcome = asyncio.run(sender.deliver(url, {"id": "j1", "status": "succeeded"}))
    finally:
        server.shutdown()
    assert outcome == {"url": url, "delivered": True, "attempts": 2, "status_code": 204}
    assert [verify(b"secret", body, header) for header, body in received] == [True, True]
