"""Python client of sd-serving's HTTP API, synchronous and asynchronous.

    from serving.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.generate("a red apple on a wooden table", steps=20, seed=7)
        result.images[0].save("apple.png")

Errors come back as `ClientError` with the server's status, code, field and message.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Image:
    data: bytes
    seed: int
    media_type: str
    url: str

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.write_bytes(self.data)
        return target


@dataclass(frozen=True)
class Generation:
    images: list[Image]
    cached: bool
    timings_ms: dict[str, float]
    warnings: list[str]
    parameters: dict[str, Any]


def _body(prompt: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}


def _headers(api_key: str | None, timeout_s: float | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if timeout_s is not None:
        headers["X-Timeout-S"] = str(timeout_s)
    return headers


def _parse(answer: httpx.Response) -> Generation:
    if answer.status_code != 200:
        try:
            error = answer.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise ClientError(answer.status_code, "http_error", answer.text[:500], None) from None
        raise ClientError(
            answer.status_code,
            error.get("code", "error"),
            error.get("message", ""),
            error.get("field"),
        )
    body = answer.json()
    return Generation(
        images=[
            Image(base64.b64decode(item["b64_data"]), item["seed"], item["media_type"], item["url"])
            for item in body["images"]
        ],
        cached=body["cached"],
        timings_ms=body["timings_ms"],
        warnings=body["warnings"],
        parameters=body["parameters"],
    )


class Client:
    """Blocking client; one connection pool, reuse it."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)
        self._api_key = api_key

    def generate(
        self, prompt: str, *, deadline_s: float | None = None, **fields: Any
    ) -> Generation:
        """Fields: negative_prompt, num_images, width, height, steps, guidance_scale, seed,
        scheduler, output_format."""
        answer = self._http.post(
            "/v1/generate", json=_body(prompt, fields), headers=_headers(self._api_key, deadline_s)
        )
        return _parse(answer)

    def ready(self) -> bool:
        return self._http.get("/v2/health/ready").status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client, for servers and apps already on an event loop."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s)
        self._api_key = api_key

    async def generate(
        self, prompt: str, *, deadline_s: float | None = None, **fields: Any
    ) -> Generation:
        answer = await self._http.post(
            "/v1/generate", json=_body(prompt, fields), headers=_headers(self._api_key, deadline_s)
        )
        return _parse(answer)

    async def ready(self) -> bool:
        return (await self._http.get("/v2/health/ready")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
