"""With SD_REDIS_URL (a real redis-server), shared state outlives the service: the real service
is stopped and started again, and still answers for the jobs, images and cached results of its
first run, and finishes the job it was running when it crashed from its last checkpoint."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from serving.client.sse import Event
from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.live_service import start_service
from tests.helpers.redis_server import redis_server
from tests.helpers.requests import first_image, job, job_events, submit

pytestmark = pytest.mark.integration

REQUEST = {"prompt": "a blue square on a black background", "steps": 4, "seed": 11}
# Seconds of work (150 steps at 128²): under way when the crash comes, past its second
# checkpoint (every 5 steps).
LONG = {"prompt": "a red circle", "steps": 150, "seed": 12, "width": 128, "height": 128}


def assert_resumed_from_a_checkpoint(events: list[Event]) -> None:
    """The job ended with its result after one takeover, which resumed at a checkpoint (every
    5 steps) at or past step 10, not at step 1."""
    assert events[-1].kind == "result", events[-1].data.get("error")
    attempts = [e.data for e in events if e.kind == "status" and "attempt" in e.data]
    assert attempts == [{"status": "queued", "attempt": 2}]
    retried = [e.data for e in events].index(attempts[0])
    first_step = next(e.data for e in events[retried:] if e.kind == "progress")
    assert first_step["resumed_from"] >= 10 and first_step["resumed_from"] % 5 == 0


def test_a_restarted_service_answers_for_its_jobs_images_and_results_and_ends_a_crashed_job(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("durable")
    with redis_server(base) as url:
        settings = {
            "SD_REDIS_URL": url,
            "SD_IMAGE_STORE_URL": (base / "images").as_uri(),
            "SD_JOB_LEASE_S": "10",
            "SD_JOB_CHECKPOINT_STEPS": "5",
        }
        with start_service(base / "cache", settings) as first:
            created = submit(first.url, **REQUEST)
            events = list(job_events(first.url, created["id"]))
            assert events[-1].kind == "result", [e.kind for e in events]
            finished = job(first.url, created["id"])
            image_url = finished["result"]["images"][0]["url"]
            image = httpx.get(first.url + image_url, timeout=30)
            assert image.status_code == 200
            ready = httpx.get(first.url + "/v2/health/ready", timeout=30).json()
            assert ready["stages"]["result_store"] is True  # Redis answers
            # A job under way when the service crashes (SIGKILL to it and all of Ray's processes).
            interrupted = submit(first.url, **LONG)
            for event in job_events(first.url, interrupted["id"]):
                if event.kind == "progress" and event.data["step"] > 10:
                    break
            first.crash()

        with start_service(base / "cache", settings) as second:
            assert job(second.url, created["id"]) == finished
            replayed = list(job_events(second.url, created["id"]))
            assert [e.kind for e in replayed] == [e.kind for e in events]
            again = httpx.get(second.url + image_url, timeout=30)
            assert again.status_code == 200 and again.content == image.content
            assert again.headers["etag"] == image.headers["etag"]
            # The same fully determined request is answered from the result cache's index.
            answer = httpx.post(second.url + "/v1/generate", json=REQUEST, timeout=120).json()
            assert answer["cached"] is True
            assert answer["images"][0]["url"] == image_url
            # The crashed job is taken over once its lease lapses, and run to the end.
            # ... from its last checkpoint, not from the first step.
            assert_resumed_from_a_checkpoint(list(job_events(second.url, interrupted["id"])))
            # The worker's series: the queue and the job it took over.
            exported = httpx.get(second.metrics_url, timeout=30).text
            assert "ray_sd_jobs_queued{" in exported
            taken_over = [
                float(line.rsplit(" ", 1)[1])
                for line in exported.splitlines()
                if line.startswith("ray_sd_jobs_taken_over_total{")
            ]
            assert sum(taken_over) == 1
            resumed_series = [
                float(line.rsplit(" ", 1)[1])
                for line in exported.splitlines()
                if line.startswith("ray_sd_jobs_resumed_total{")
            ]
            assert sum(resumed_series) == 1
            # Its image is the one an uninterrupted run gives (two images: not the cached one).
            done = job(second.url, interrupted["id"])["result"]["images"][0]
            again = httpx.get(second.url + done["url"], timeout=30).content
            two = {**LONG, "num_images": 2}  # batched: within 1/255
            uninterrupted = httpx.post(second.url + "/v1/generate", json=two, timeout=600).json()
            assert not uninterrupted["cached"]
            assert max_pixel_difference(pixels(again), first_image(uninterrupted)) <= 1
    stored = base / "images" / image_url.rsplit("/", 1)[1].split(".")[0]
    assert stored.read_bytes() == image.content and stored.with_suffix(".json").is_file()


def test_a_killed_unet_replica_costs_a_sync_request_a_prompt_503_and_a_job_a_few_steps(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SIGKILL to the denoiser replica while a durable job and a synchronous request are both
    mid-denoise: the request answers 503 with Retry-After at once, not at its deadline; the job
    resumes from its last checkpoint on the replica Ray Serve starts instead, to the same image
    as an uninterrupted run; the replacement then serves new requests."""
    base = tmp_path_factory.mktemp("recovery")
    with redis_server(base) as url:
        settings = {
            "SD_REDIS_URL": url,
            "SD_IMAGE_STORE_URL": (base / "images").as_uri(),
            "SD_JOB_CHECKPOINT_STEPS": "5",
        }
        with start_service(base / "cache", settings) as running:
            created = submit(running.url, **LONG)
            sync: dict[str, Any] = {}

            def synchronous() -> None:
                started = time.monotonic()
                answer = httpx.post(running.url + "/v1/generate", json=LONG, timeout=600)
                sync.update(
                    status=answer.status_code,
                    retry_after=answer.headers.get("retry-after"),
                    body=answer.json(),
                    finished=time.monotonic(),
                    started=started,
                )

            caller = threading.Thread(target=synchronous)
            for event in job_events(running.url, created["id"]):
                if event.kind == "progress" and event.data["step"] == 3:
                    caller.start()  # batched with the job from here on
                if event.kind == "progress" and event.data["step"] > 10:
                    break
            killed_at = time.monotonic()
            running.kill_replicas("UNetDenoiser")
            caller.join(timeout=120)
            assert sync["status"] == 503 and sync["retry_after"] == "2", sync
            assert sync["body"]["error"]["code"] == "unavailable"
            assert sync["finished"] - killed_at < 30  # at once, not at the 300 s deadline

            assert_resumed_from_a_checkpoint(list(job_events(running.url, created["id"])))
            done = job(running.url, created["id"])["result"]["images"][0]
            image = httpx.get(running.url + done["url"], timeout=30).content
            two = {**LONG, "num_images": 2}  # the replacement serves; batched: within 1/255
            uninterrupted = httpx.post(running.url + "/v1/generate", json=two, timeout=600)
            assert uninterrupted.status_code == 200
            assert max_pixel_difference(pixels(image), first_image(uninterrupted.json())) <= 1
