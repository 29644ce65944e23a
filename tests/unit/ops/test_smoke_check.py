"""The `helm test` check (`python -m serving.smoke`): passes on the service, fails on anything but
a valid PNG."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.helpers.local_service import LocalService


def run_smoke(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.smoke", "--url", url, "--steps", "2", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_passes_against_the_service(local: LocalService) -> None:
    result = run_smoke(local.url)
    assert result.returncode == 0, result.stderr
    assert "OK: valid PNG 128x128 RGB" in result.stdout


@pytest.fixture
def liar() -> Iterator[tuple[str, dict[str, object]]]:
    """An HTTP server that answers whatever the test tells it to."""
    script: dict[str, object] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = script["body"]
            assert isinstance(body, bytes)
            self.send_response(int(str(script["status"])))
            self.send_header("Content-Type", str(script["type"]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", script
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("status", "content_type", "body", "reason"),
    [
        (500, "application/json", b'{"error": {}}', "HTTP 500"),
        (200, "text/plain", b"ok", "content-type"),
        (200, "image/png", b"GIF89a....", "bad signature"),
        (200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "FAIL"),
    ],
)
def test_fails_on_anything_but_a_valid_png(
    liar: tuple[str, dict[str, object]], status: int, content_type: str, body: bytes, reason: str
) -> None:
    url, script = liar
    script.update(status=status, type=content_type, body=body)
    result = run_smoke(url)
    assert result.returncode == 1
    assert reason in result.stderr
