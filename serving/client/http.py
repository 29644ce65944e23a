"""Python client of sd-serving's HTTP API, synchronous and asynchronous (gRPC: serving.client.grpc).

    from serving.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.generate("a red apple on a wooden table", steps=20, seed=7)
        result.images[0].save("apple.png")
        # or as an async job, with a callback per denoising step:
        result = client.generate_with_progress("a red apple", on_progress=print, steps=20)

Errors come back as `ClientError` with the server's status, code, field and message.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from serving.client.sse import async_events, events
from serving.client.types import ClientError, Generation, Image, lora_field


def _body(prompt: str, fields: dict[str, Any]) -> dict[str, Any]:
    body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
    for name in ("image", "mask"):  # an edit's picture and inpainting mask, sent as base64
        picture = body.get(name)
        if isinstance(picture, Path):
            picture = picture.read_bytes()
        if isinstance(picture, bytes | bytearray):
            body[name] = base64.b64encode(picture).decode("ascii")
    if "loras" in body:
        body["loras"] = lora_field(body["loras"])
    return body


def _headers(api_key: str | None, timeout_s: float | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if timeout_s is not None:
        headers["X-Timeout-S"] = str(timeout_s)
    return headers


def _feedback_body(
    image: Image | str | None, job_id: str | None, rating: int, caption: str | None, index: int
) -> dict[str, Any]:
    body: dict[str, Any] = {"rating": rating}
    if image is not None:
        body["image"] = image.digest if isinstance(image, Image) else image
    if job_id is not None:
        body["job_id"] = job_id
        body["image_index"] = index
    if caption is not None:
        body["caption"] = caption
    return body


# Called after every denoising step of a job: (steps done, steps in all images).
ProgressCallback = Callable[[int, int], None]


def _raise_for_error(answer: httpx.Response) -> None:
    if answer.is_success:
        return
    try:
        error = answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(answer.status_code, "http_error", answer.text[:500], None) from None
    raise ClientError(
        answer.status_code, error.get("code", "error"), error.get("message", ""), error.get("field")
    )


def _follow_job(
    kind: str, data: dict[str, Any], on_progress: ProgressCallback | None
) -> dict[str, Any] | None:
    """One job event: progress goes to the callback; the finished job is returned (or its
    error raised); None while it runs."""
    if kind == "progress" and on_progress is not None:
        on_progress(data["steps_done"], data["steps_total"])
    if kind == "result":
        return data
    if kind == "error":
        error = data["error"]
        raise ClientError(200, error["code"], error["message"], error.get("field"))
    if kind == "cancelled":
        raise ClientError(200, "cancelled", f"job {data['id']} was cancelled", None)
    return None


def _job_generation(job: dict[str, Any], images: list[bytes]) -> Generation:
    result = job["result"]
    return Generation(
        images=[
            Image(data, item["seed"], item["media_type"], item["url"])
            for data, item in zip(images, result["images"], strict=True)
        ],
        cached=result["cached"],
        timings_ms=result["timings_ms"],
        warnings=result["warnings"],
        parameters=job["parameters"],
        model_version=job["parameters"].get("model_version"),
    )


def _parse(answer: httpx.Response) -> Generation:
    _raise_for_error(answer)
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
        model_version=body.get("model_version"),
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
        """Fields: model, negative_prompt, num_images, width, height, steps, guidance_scale,
        guidance_rescale, seed, scheduler, output_format, priority (interactive or batch), and
        for SDXL original_size, crops_coords_top_left, target_size ([a, b] pairs); for an edit,
        image (a Path, the file's bytes, or base64 text) and strength; to inpaint, mask (as
        image; white repaints); loras (LoRA adapters:
        [("style-a", 0.8)], {"style-a": 0.8} or the API's [{"name", "scale"}])."""
        answer = self._http.post(
            "/v1/generate", json=_body(prompt, fields), headers=_headers(self._api_key, deadline_s)
        )
        return _parse(answer)

    def generate_with_progress(
        self, prompt: str, *, on_progress: ProgressCallback | None = None, **fields: Any
    ) -> Generation:
        """The same generation as an async job (`POST /v1/jobs`), following its events."""
        headers = _headers(self._api_key, None)
        answer = self._http.post("/v1/jobs", json=_body(prompt, fields), headers=headers)
        _raise_for_error(answer)
        events_url = answer.json()["links"]["events"]
        with self._http.stream("GET", events_url, headers=headers) as stream:
            if not stream.is_success:
                stream.read()
                _raise_for_error(stream)
            for event in events(stream.iter_lines()):
                job = _follow_job(event.kind, event.data, on_progress)
                if job is not None:
                    images = []
                    for item in job["result"]["images"]:
                        image = self._http.get(item["url"], headers=headers)
                        _raise_for_error(image)
                        images.append(image.content)
                    return _job_generation(job, images)
        raise ClientError(200, "stream_ended", "the job's event stream ended early", None)

    def feedback(
        self,
        image: Image | str | None = None,
        *,
        rating: int,
        caption: str | None = None,
        job_id: str | None = None,
        image_index: int = 0,
    ) -> dict[str, Any]:
        """Rate an image this service made (an `Image`, its digest, or a job's image): 1 (wrong)
        to 5 (exactly right); `caption`: what it really shows. Returns the row kept."""
        body = _feedback_body(image, job_id, rating, caption, image_index)
        answer = self._http.post("/v1/feedback", json=body, headers=_headers(self._api_key, None))
        _raise_for_error(answer)
        return dict(answer.json())

    def feedback_rows(self, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """A page of the feedback kept: {"feedback": [rows], "next_offset": int or None}."""
        answer = self._http.get(
            "/v1/feedback",
            params={"offset": offset, "limit": limit},
            headers=_headers(self._api_key, None),
        )
        _raise_for_error(answer)
        return dict(answer.json())

    def image(self, url: str) -> bytes:
        """A stored image's bytes, by its URL (relative to the service, or absolute)."""
        answer = self._http.get(url, headers=_headers(self._api_key, None))
        _raise_for_error(answer)
        return answer.content

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

    async def generate_with_progress(
        self, prompt: str, *, on_progress: ProgressCallback | None = None, **fields: Any
    ) -> Generation:
        headers = _headers(self._api_key, None)
        answer = await self._http.post("/v1/jobs", json=_body(prompt, fields), headers=headers)
        _raise_for_error(answer)
        events_url = answer.json()["links"]["events"]
        job: dict[str, Any] | None = None
        async with self._http.stream("GET", events_url, headers=headers) as stream:
            if not stream.is_success:
                await stream.aread()
                _raise_for_error(stream)
            async for event in async_events(stream.aiter_lines()):
                job = _follow_job(event.kind, event.data, on_progress)
                if job is not None:
                    break
        if job is None:
            raise ClientError(200, "stream_ended", "the job's event stream ended early", None)
        images = []
        for item in job["result"]["images"]:
            image = await self._http.get(item["url"], headers=headers)
            _raise_for_error(image)
            images.append(image.content)
        return _job_generation(job, images)

    async def feedback(
        self,
        image: Image | str | None = None,
        *,
        rating: int,
        caption: str | None = None,
        job_id: str | None = None,
        image_index: int = 0,
    ) -> dict[str, Any]:
        body = _feedback_body(image, job_id, rating, caption, image_index)
        answer = await self._http.post(
            "/v1/feedback", json=body, headers=_headers(self._api_key, None)
        )
        _raise_for_error(answer)
        return dict(answer.json())

    async def ready(self) -> bool:
        return (await self._http.get("/v2/health/ready")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
