"""The kuberay-mode gateway forwards to the Serve app unchanged."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(service: RunningService) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "gateway",
            "--upstream",
            service.url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/v2/health/live", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_gateway_returns_the_same_image_as_the_service(
    service: RunningService, gateway: str
) -> None:
    body = {"prompt": "a bridge at night", "seed": 5, "steps": 4}
    headers = {"Accept": "image/png"}
    direct = httpx.post(service.url + "/v1/generate", json=body, headers=headers, timeout=120)
    via_gateway = httpx.post(gateway + "/v1/generate", json=body, headers=headers, timeout=120)
    assert via_gateway.status_code == 200
    assert via_gateway.headers["content-type"] == "image/png"
    assert via_gateway.content == direct.content


def test_gateway_passes_errors_and_health_through(gateway: str) -> None:
    bad = httpx.post(gateway + "/v1/generate", json={"prompt": "x", "width": 7}, timeout=30)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "width"
    assert httpx.get(gateway + "/v2/health/ready", timeout=30).json()["ready"] is True


def test_gateway_without_upstream_answers_503() -> None:
    from starlette.testclient import TestClient

    from serving.gateway import create_gateway_app

    with TestClient(create_gateway_app("http://127.0.0.1:9")) as client:
        answer = client.get("/v2/health/ready")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
