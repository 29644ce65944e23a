"""The kuberay-mode gateway forwards to the Serve app unchanged (here in this process, in front of
the in-process service; `sd-serving gateway` as a process: tests/integration/test_cli.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from serving.cli.gateway import create_gateway_app
from tests.helpers.local_service import LocalService


@pytest.fixture(scope="module")
def gateway(local: LocalService) -> Iterator[TestClient]:
    with TestClient(create_gateway_app(local.url)) as client:
        yield client


def test_gateway_returns_the_same_image_as_the_service(
    local: LocalService, gateway: TestClient
) -> None:
    body = {"prompt": "a bridge at night", "seed": 5, "steps": 4}
    headers = {"Accept": "image/png"}
    direct = httpx.post(local.url + "/v1/generate", json=body, headers=headers, timeout=120)
    via_gateway = gateway.post("/v1/generate", json=body, headers=headers)
    assert via_gateway.status_code == 200
    assert via_gateway.headers["content-type"] == "image/png"
    assert via_gateway.content == direct.content


def test_gateway_passes_errors_and_health_through(gateway: TestClient) -> None:
    bad = gateway.post("/v1/generate", json={"prompt": "x", "width": 7})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "width"
    assert gateway.get("/v2/health/ready").json()["ready"] is True


def test_gateway_without_upstream_answers_503() -> None:
    with TestClient(create_gateway_app("http://127.0.0.1:9")) as client:
        answer = client.get("/v2/health/ready")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
