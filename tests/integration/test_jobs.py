"""Async jobs: progress as server-sent events, cancellation, signed webhooks; and a synchronous
client that hangs up cancels its work too."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import WEBHOOK_SECRET, RunningService

pytestmark = pytest.mark.integration


def sse_events(
    service: RunningService, job_id: str, last_event_id: int | None = None
) -> Iterator[dict[str, Any]]:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    with httpx.stream(
        "GET", f"{service.url}/v1/jobs/{job_id}/events", headers=headers, timeout=120
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in stream.iter_lines():
            if not line:
                if event:
                    yield event
                event = {}
            elif line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def submit(service: RunningService, **body: Any) -> dict[str, Any]:
    answer = httpx.post(f"{service.url}/v1/jobs", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v1/jobs/{answer.json()['id']}"
    return dict(answer.json())


def job(service: RunningService, job_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{service.url}/v1/jobs/{job_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def denoising_steps_settled(service: RunningService) -> float:
    """The UNet's total denoising steps once it has stopped moving (metrics lag a few s)."""
    readings: list[float] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10).text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ray_sd_denoising_steps_total")
        )
        readings.append(total)
        if len(readings) >= 8 and len(set(readings[-8:])) == 1:
            return total
        time.sleep(2)
    raise AssertionError(f"the UNet never went quiet: {readings[-8:]}")


def test_progress_events_arrive_in_order_and_end_with_the_result(service: RunningService) -> None:
    params = {"prompt": "a glass of water", "steps": 6, "num_images": 2, "seed": 5}
    created = submit(service, **params, preview=True)
    assert created["status"] == "queued"
    events = list(sse_events(service, created["id"]))

    assert [e["id"] for e in events] == list(range(len(events)))
    assert events[0]["event"] == "status" and events[-1]["event"] == "result"
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert len(progress) == 12  # one per step per image
    for image in (0, 1):
        steps = [p["step"] for p in progress if p["image_index"] == image]
        assert steps == list(range(1, 7))
    assert [p["steps_done"] for p in progress] == list(range(1, 13))
    preview = progress[-1]["preview"]
    assert preview.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))) as thumbnail:
        assert thumbnail.size == (16, 16)  # 128 px / 8

    final = events[-1]["data"]
    assert final["status"] == "succeeded" and final["progress"]["fraction"] == 1.0
    assert final == {k: v for k, v in job(service, created["id"]).items() if k != "links"}
    same = httpx.post(
        f"{service.url}/v1/generate", json={**params, "num_images": 1}, timeout=120
    ).json()
    first = httpx.get(service.url + final["result"]["images"][0]["url"], timeout=30)
    # Denoised beside its sibling (a batch of 2) vs alone: equal within 1/255.
    difference = pixels(first.content).astype(int) - pixels(
        base64.b64decode(same["images"][0]["b64_data"])
    )
    assert abs(difference).max() <= 1

    resumed = list(sse_events(service, created["id"], last_event_id=3))
    assert [e["id"] for e in resumed] == list(range(4, len(events)))


def test_cancel_stops_the_work_at_the_next_step(service: RunningService) -> None:
    before = denoising_steps_settled(service)
    created = submit(service, prompt="a very long night", steps=150)
    for event in sse_events(service, created["id"]):
        if event["event"] == "progress":
            break
    cancelled = httpx.delete(f"{service.url}/v1/jobs/{created['id']}", timeout=30)
    assert cancelled.status_code == 200
    final = [e for e in sse_events(service, created["id"])][-1]
    assert final["event"] == "cancelled"
    assert job(service, created["id"])["status"] == "cancelled"

    done = denoising_steps_settled(service) - before
    assert 1 <= done < 150, f"the UNet ran {done} steps of a cancelled 150-step job"
    assert job(service, created["id"])["progress"]["steps_done"] < 150


def test_client_hanging_up_cancels_a_synchronous_request(service: RunningService) -> None:
    before = denoising_steps_settled(service)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{service.url}/v1/generate",
            # 150 steps at 256 px: far longer than the client waits, on any CPU.
            json={"prompt": "abandoned", "steps": 150, "width": 256, "height": 256},
            timeout=1.5,
        )
    done = denoising_steps_settled(service) - before
    assert done < 150, f"the UNet ran all {done} steps for a client that hung up"


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_receives_the_result_with_a_valid_signature(service: RunningService) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        created = submit(service, prompt="a postcard", steps=3, seed=2, webhook_url=url)
        deadline = time.monotonic() + 120
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.shutdown()
    headers, body = _Receiver.received[0]
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-SD-Signature-256"], expected)
    assert headers["X-SD-Event"] == "job.succeeded"
    payload = json.loads(body)
    assert payload["id"] == created["id"] and payload["status"] == "succeeded"
    assert payload["result"]["images"][0]["url"].startswith("/v1/images/")
    deadline = time.monotonic() + 30
    while job(service, created["id"])["webhook"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job(service, created["id"])["webhook"]["delivered"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"prompt": "x", "webhook_url": 7}, "webhook_url"),
        ({"prompt": "x", "preview": "yes"}, "preview"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_job_requests_name_the_field(
    service: RunningService, body: dict[str, Any], field: str
) -> None:
    answer = httpx.post(f"{service.url}/v1/jobs", json=body, timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


def test_unknown_jobs_are_404(service: RunningService) -> None:
    with service.client() as client:
        assert client.get("/v1/jobs/nope").status_code == 404
        assert client.delete("/v1/jobs/nope").status_code == 404
        assert client.get("/v1/jobs/nope/events").status_code == 404
