"""The middleware Serve's proxy runs: a request its replica never answered gets 503 with
Retry-After in the path's protocol shape, and so does the proxy's own plain-text backpressure
503; an answer the replica gave, and the proxy's own routes, are left alone."""

from __future__ import annotations

import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.http.proxy import middlewares


class ReplicaDied(Exception):
    """What the proxy's own handler swallows (or raises) when the replica's actor is gone."""


async def lost(request: Request) -> JSONResponse:
    raise ReplicaDied


async def failed(request: Request) -> JSONResponse:
    return JSONResponse({"error": {"code": "internal"}}, status_code=500)


async def backpressure(request: Request) -> Response:  # what Serve's proxy sends
    return PlainTextResponse(
        "Request dropped due to backpressure (num_queued_requests=4, max_queued_requests=4).",
        status_code=503,
        headers={"Retry-After": "2"},
    )


async def busy(request: Request) -> JSONResponse:  # our own refusal, already in shape
    body = {"error": {"code": "queue_full", "message": "the UNet is busy"}}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


async def echo_stamp(request: Request) -> JSONResponse:
    return JSONResponse({"received_at": request.headers.get("x-sd-received-at")})


@pytest.fixture
def client() -> TestClient:
    routes = [
        Route(path, lost, methods=["POST"]) for path in ("/v1/generate", "/v2/models/m/infer")
    ]
    routes.append(Route("/v1/failed", failed, methods=["POST"]))
    routes.append(Route("/v1/images/generations", backpressure, methods=["POST"]))
    routes.append(Route("/v1/busy", busy, methods=["POST"]))
    routes.append(Route("/-/healthz", backpressure, methods=["GET"]))
    routes.append(Route("/v1/stamp", echo_stamp, methods=["POST"]))
    app = Starlette(routes=routes, middleware=middlewares())
    return TestClient(app, raise_server_exceptions=True)


def test_a_request_whose_replica_never_answered_gets_503_with_retry_after(
    client: TestClient,
) -> None:
    response = client.post("/v1/generate", json={})
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "unavailable"
    assert "retry" in response.json()["error"]["message"]
    v2 = client.post("/v2/models/m/infer", json={})
    assert v2.status_code == 503 and isinstance(v2.json()["error"], str)


def test_an_answer_the_replica_started_passes_unchanged(client: TestClient) -> None:
    response = client.post("/v1/failed", json={})
    assert response.status_code == 500 and "Retry-After" not in response.headers


def test_the_proxys_backpressure_refusal_is_answered_in_the_protocols_shape(
    client: TestClient,
) -> None:
    response = client.post("/v1/images/generations", json={})
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    error = response.json()["error"]  # OpenAI's shape, as its SDKs expect
    assert error["code"] == "queue_full" and "capacity" in error["message"]


def test_our_own_refusals_and_the_proxys_routes_pass_unchanged(client: TestClient) -> None:
    assert client.post("/v1/busy", json={}).json()["error"]["message"] == "the UNet is busy"
    health = client.get("/-/healthz")
    assert health.status_code == 503 and "backpressure" in health.text


def test_each_request_is_stamped_with_its_arrival_and_a_clients_stamp_is_replaced(
    client: TestClient,
) -> None:
    before = time.time()
    answer = client.post("/v1/stamp", headers={"X-SD-Received-At": "0"})
    stamp = float(answer.json()["received_at"])
    assert before <= stamp <= time.time()
