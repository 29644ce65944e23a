"""Webhook signatures and URL checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from serving.errors import InvalidArgument
from serving.webhooks import check_webhook_url, signature, verify


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
