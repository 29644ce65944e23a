"""Async jobs on the real HTTP app: progress as server-sent events, resume, cancel, and every
refusal named."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService
from tests.helpers.net import wait_until
from tests.helpers.requests import job, job_events, submit


@pytest.fixture(params=["memory", "redis"])
def jobs_on(request: pytest.FixtureRequest) -> LocalService:
    """The service keeping jobs in memory (`make serve`), or in Redis and its durable queue."""
    return request.getfixturevalue("local" if request.param == "memory" else "durable")


def test_progress_events_arrive_in_order_and_end_with_the_result(jobs_on: LocalService) -> None:
    local = jobs_on
    params = {
        "prompt": "a glass of water",
        "steps": 6,
        "num_images": 2,
        "seed": 5,
        "scheduler": "ddim",
    }
    created = submit(local.url, **params, preview=True)
    assert created["status"] == "queued" and created["links"]["events"].endswith("/events")
    received = list(job_events(local.url, created["id"]))

    assert [int(e.id or -1) for e in received] == list(range(len(received)))
    assert received[0].kind == "status" and received[-1].kind == "result"
    progress = [e.data for e in received if e.kind == "progress"]
    assert len(progress) == 12  # one per step per image
    for image in (0, 1):
        assert [p["step"] for p in progress if p["image_index"] == image] == list(range(1, 7))
    assert [p["steps_done"] for p in progress] == list(range(1, 13))
    preview = progress[-1]["preview"]
    assert preview.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))) as thumbnail:
        assert thumbnail.size == (16, 16)  # 128 px / 8

    final = received[-1].data
    assert final["status"] == "succeeded" and final["progress"]["fraction"] == 1.0
    assert final == {k: v for k, v in job(local.url, created["id"]).items() if k != "links"}
    image_url = final["result"]["images"][0]["url"]
    denoised_with_sibling = pixels(httpx.get(local.url + image_url, timeout=30).content)
    alone = httpx.post(
        f"{local.url}/v1/generate", json={**params, "num_images": 1, "seed": 5}, timeout=60
    ).json()
    # Denoised beside its sibling (a batch of 2) vs alone: equal within 1/255.
    solo = pixels(base64.b64decode(alone["images"][0]["b64_data"]))
    assert max_pixel_difference(denoised_with_sibling, solo) <= 1

    resumed = list(job_events(local.url, created["id"], last_event_id=3))
    assert [int(e.id or -1) for e in resumed] == list(range(4, len(received)))


def test_cancel_stops_the_work_and_frees_the_slot(jobs_on: LocalService) -> None:
    local = jobs_on
    created = submit(local.url, prompt="a very long night", steps=150)
    for event in job_events(local.url, created["id"]):
        if event.kind == "progress":
            break
    cancelled = httpx.delete(f"{local.url}/v1/jobs/{created['id']}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["links"]["self"]
    final = list(job_events(local.url, created["id"]))[-1]
    assert final.kind == "cancelled"
    view = job(local.url, created["id"])
    assert view["status"] == "cancelled" and view["progress"]["steps_done"] < 150
    assert wait_until(lambda: local.stages.unet_stats().active == 0, timeout_s=10)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"prompt": "x", "webhook_url": 7}, "webhook_url"),
        ({"prompt": "x", "preview": "yes"}, "preview"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "mountains " * 100}, "prompt"),
    ],
)
def test_bad_job_requests_name_the_field(
    local: LocalService, body: dict[str, Any], field: str
) -> None:
    answer = httpx.post(f"{local.url}/v1/jobs", json=body, timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


def test_webhooks_are_refused_without_a_server_secret(uncached: LocalService) -> None:
    body = {"prompt": "x", "webhook_url": "https://example.com/hook"}
    answer = httpx.post(f"{uncached.url}/v1/jobs", json=body, timeout=30)
    assert answer.status_code == 422 and "SD_WEBHOOK_SECRET" in answer.text


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
        ("http://10.0.0.7:8080/hook", "private"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://127.0.0.2/hook", "loopback"),  # only 127.0.0.1 is allowed on this server
    ],
)
def test_webhooks_to_internal_addresses_are_refused(
    local: LocalService, url: str, address: str
) -> None:
    answer = httpx.post(f"{local.url}/v1/jobs", json={"prompt": "x", "webhook_url": url})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "webhook_url"
    assert f"a {address} address" in error["message"] and "SD_WEBHOOK_ALLOW" in error["message"]


def test_unknown_jobs_are_404_and_a_bad_resume_point_is_named(jobs_on: LocalService) -> None:
    local = jobs_on
    with local.client() as client:
        assert client.get("/v1/jobs/nope").status_code == 404
        assert client.delete("/v1/jobs/nope").status_code == 404
        assert client.get("/v1/jobs/nope/events").status_code == 404
        created = submit(local.url, prompt="resume", steps=2, seed=3)
        bad = client.get(f"/v1/jobs/{created['id']}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "Last-Event-ID"
