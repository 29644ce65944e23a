"""Requests every tier makes the same way, against any base URL (an in-process or a live
service): a generation, a job, its events."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import numpy as np

from serving.client.sse import Event, events
from tests.helpers.images import pixels

T = TypeVar("T")


def generate(url: str, **fields: Any) -> dict[str, Any]:
    """POST /v1/generate; the JSON answer of a 200."""
    response = httpx.post(url + "/v1/generate", json=fields, timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())


def at_once(calls: Sequence[Callable[[], T]], timeout_s: float = 120) -> list[T]:
    """Every call on a thread of its own, all started together; their results in order (a
    call's error is raised here)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result(timeout=timeout_s) for future in futures]


def first_image(body: dict[str, Any]) -> np.ndarray:
    return pixels(base64.b64decode(body["images"][0]["b64_data"]))


def submit(url: str, **body: Any) -> dict[str, Any]:
    """POST /v1/jobs; the 202 answer, its Location checked."""
    answer = httpx.post(f"{url}/v1/jobs", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v1/jobs/{answer.json()['id']}"
    return dict(answer.json())


def job(url: str, job_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def job_events(url: str, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
    """The job's server-sent events, as they come."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    with httpx.stream(
        "GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=120
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        yield from events(stream.iter_lines())
