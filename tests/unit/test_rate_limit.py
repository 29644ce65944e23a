"""Per-client token buckets, and the 429 + Retry-After they answer through the real middleware."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.http.errors import install_error_handlers
from serving.http.ratelimit import install_rate_limit
from serving.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_the_sustained_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, burst=2, clock=clock)
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") == 1.0  # empty: one token per second
    assert buckets.take("b") == 0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.5
    clock.now += 1.0
    assert buckets.take("a") == 0


def test_an_idle_client_refills_only_up_to_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(per_minute=60, burst=2, clock=clock)
    clock.now += 3600
    assert [buckets.take("a") == 0 for _ in range(3)] == [True, True, False]


def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    install_rate_limit(app, TokenBuckets(per_minute=6, burst=2))

    @app.post("/v1/generate")
    async def generate() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/images/generations")
    async def openai_images() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    return TestClient(app)


def test_429_with_retry_after_and_keys_counted_apart() -> None:
    http = client()
    key = {"Authorization": "Bearer one"}
    assert [http.post("/v1/generate", headers=key).status_code for _ in range(3)] == [200, 200, 429]
    refused = http.post("/v1/generate", headers=key)
    assert refused.headers["retry-after"] == "10"  # 6 per minute: a token every 10 s
    assert refused.json()["error"]["code"] == "rate_limited"
    assert http.post("/v1/generate", headers={"Authorization": "Bearer two"}).status_code == 200
    assert all(http.get("/v2/health/live").status_code == 200 for _ in range(5))


def test_openai_clients_get_openais_rate_limit_error() -> None:
    http = client()
    for _ in range(2):
        http.post("/v1/images/generations")
    refused = http.post("/v1/images/generations")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
