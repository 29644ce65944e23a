"""Async jobs and cancellation across processes: events streamed from the ResultStore replica,
progress streamed from the UNet replica, and work stopped in the UNet when its caller goes away."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import io
import json
import threading
from typing import Any, ClassVar

import httpx
import pytest
from PIL import Image

from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.live_service import WEBHOOK_SECRET, RunningService, UNetReading, unet_reading
from tests.helpers.net import wait_until
from tests.helpers.requests import job, job_events, submit

pytestmark = pytest.mark.integration


def unet_steps_when_idle(service: RunningService) -> float:
    """The UNet's step count once it has nothing to do and the count has held still for longer
    than one export of Ray's metrics (every 10 s)."""
    readings: list[UNetReading] = []

    def settled() -> bool:
        readings.append(unet_reading(service))
        recent = readings[-12:]
        return len(recent) == 12 and all(r == recent[-1] and r.busy == 0 for r in recent)

    assert wait_until(settled, timeout_s=120, interval_s=1.0), readings[-12:]
    return readings[-1].steps


def test_progress_streams_across_replicas_in_order_then_the_result(
    service: RunningService,
) -> None:
    params = {"prompt": "a glass of water", "steps": 6, "num_images": 2, "seed": 5}
    created = submit(service.url, **params, preview=True)
    received = list(job_events(service.url, created["id"]))

    assert [int(e.id or -1) for e in received] == list(range(len(received)))
    assert received[0].kind == "status" and received[-1].kind == "result"
    progress = [e.data for e in received if e.kind == "progress"]
    # One per UNet step per image, from the UNet replica's stream; the model's own PNDM
    # sampler runs 6 + 1 steps, as diffusers' pipeline does.
    assert len(progress) == 14
    assert [p["steps_done"] for p in progress] == list(range(1, 15))
    preview = progress[-1]["preview"]
    with Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))) as thumbnail:
        assert thumbnail.size == (16, 16)

    final = received[-1].data
    assert final["status"] == "succeeded" and final["result"]["cached"] is False
    assert final == {k: v for k, v in job(service.url, created["id"]).items() if k != "links"}
    stored = httpx.get(service.url + final["result"]["images"][0]["url"], timeout=30)
    alone = httpx.post(
        f"{service.url}/v1/generate", json={**params, "num_images": 1}, timeout=120
    ).json()
    solo = pixels(base64.b64decode(alone["images"][0]["b64_data"]))
    assert max_pixel_difference(pixels(stored.content), solo) <= 1

    resumed = list(job_events(service.url, created["id"], last_event_id=3))
    assert [int(e.id or -1) for e in resumed] == list(range(4, len(received)))


def test_work_stops_in_the_unet_replica_when_its_caller_goes_away(
    service: RunningService,
) -> None:
    """A cancelled job, then a synchronous request whose client hung up: the UNet replica (another
    process) stops each at its next step."""
    before = unet_steps_when_idle(service)
    created = submit(service.url, prompt="a very long night", steps=150)
    for event in job_events(service.url, created["id"]):
        if event.kind == "progress":
            break
    cancelled = httpx.delete(f"{service.url}/v1/jobs/{created['id']}", timeout=30)
    assert cancelled.status_code == 200
    assert list(job_events(service.url, created["id"]))[-1].kind == "cancelled"
    assert job(service.url, created["id"])["status"] == "cancelled"
    after_cancel = unet_steps_when_idle(service)
    done = after_cancel - before
    assert 1 <= done < 150, f"the UNet ran {done} steps of a cancelled 150-step job"
    assert job(service.url, created["id"])["progress"]["steps_done"] < 150

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{service.url}/v1/generate",
            # 150 steps at 256 px: far longer than the client waits, on any CPU.
            json={"prompt": "abandoned", "steps": 150, "width": 256, "height": 256},
            timeout=1.5,
        )
    done = unet_steps_when_idle(service) - after_cancel
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
        created = submit(service.url, prompt="a postcard", steps=3, seed=2, webhook_url=url)
        assert wait_until(lambda: bool(_Receiver.received), timeout_s=120, interval_s=0.2)
    finally:
        server.shutdown()
    headers, body = _Receiver.received[0]
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-SD-Signature-256"], expected)
    assert headers["X-SD-Event"] == "job.succeeded"
    payload = json.loads(body)
    assert payload["id"] == created["id"] and payload["status"] == "succeeded"
    assert payload["result"]["images"][0]["url"].startswith("/v1/images/")
    assert wait_until(
        lambda: job(service.url, created["id"])["webhook"] is not None, timeout_s=30, interval_s=0.2
    )
    assert job(service.url, created["id"])["webhook"]["delivered"] is True
