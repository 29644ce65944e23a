"""Request bodies over the limit get 413 naming the limit, declared or chunked."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.http.bodies import json_body
from serving.http.body_limit import BodyLimit
from serving.http.errors import install_error_handlers

LIMIT = 2048


def app() -> TestClient:
    api = FastAPI()
    install_error_handlers(api)
    api.add_middleware(BodyLimit, max_bytes=LIMIT)

    @api.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"keys": len(await json_body(request))}

    return TestClient(api)


def test_small_bodies_pass() -> None:
    answer = app().post("/echo", json={"prompt": "x" * 100})
    assert answer.status_code == 200 and answer.json() == {"keys": 1}


def test_a_declared_large_body_is_refused_before_it_is_read() -> None:
    answer = app().post("/echo", content=b"{" + b" " * 5000 + b"}")
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large" and "2048" in error["message"]


def test_a_chunked_body_is_cut_off_at_the_limit() -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    answer = app().post("/echo", content=chunks())
    assert answer.status_code == 413 and "2048" in answer.json()["error"]["message"]
