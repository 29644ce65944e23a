"""The kuberay-mode gateway forwards to the Serve app unchanged."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from serving.cli.gateway import create_gateway_app
from tests.helpers.local_service import LocalService
from tests.helpers.net import free_port, wait_until


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def gateway(local: LocalService) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "gateway",
            "--upstream",
            local.url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: answers(url), timeout_s=60), "the gateway did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_gateway_returns_the_same_image_as_the_service(local: LocalService, gateway: str) -> None:
    body = {"prompt": "a bridge at night", "seed": 5, "steps": 4}
    headers = {"Accept": "image/png"}
    direct = httpx.post(local.url + "/v1/generate", json=body, headers=headers, timeout=120)
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
    with TestClient(create_gateway_app("http://127.0.0.1:9")) as client:
        answer = client.get("/v2/health/ready")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
