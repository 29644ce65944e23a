"""Jobs that outlive their replica (Redis's durable queue): a replica that stops mid-job leaves the
job queued, and a worker takes it over once its lease lapses and resumes it from its last
denoising checkpoint to the same image; after too many lost attempts the job fails with the
reason and a dead-letter record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from serving.dataplane.job_queue import DEAD_LETTERS
from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.redis_server import redis_process
from tests.helpers.requests import first_image, generate, job, job_events, submit

REQUEST = {"prompt": "a lighthouse at dusk", "steps": 40, "seed": 21, "scheduler": "ddim"}


@pytest.fixture
def worker_stopped(durable: LocalService) -> Iterator[None]:
    """The replica's worker stopped as a shutting-down replica stops it (running jobs are
    cancelled without an ending), and started again afterwards whatever happens."""
    durable.run(durable.services.jobs.stop())
    try:
        yield
    finally:
        durable.run(durable.services.jobs.start())


def redis_of(service: LocalService) -> Any:
    url = service.services.settings.redis_url
    assert url is not None
    return redis.Redis.from_url(url.get_secret_value(), decode_responses=True)


def wait_for_step(service: LocalService, job_id: str, step: int) -> None:
    for event in job_events(service.url, job_id):
        if event.kind == "progress" and event.data["step"] >= step:
            return
    raise AssertionError(f"the job ended before step {step}")


def test_a_job_its_replica_dropped_resumes_from_its_checkpoint_to_the_same_image(
    durable: LocalService,
) -> None:
    every = durable.services.settings.job_checkpoint_steps
    redone_before = durable.meter.value("sd_job_steps_redone")
    created = submit(durable.url, **REQUEST)
    wait_for_step(durable, created["id"], 2 * every + 1)
    durable.run(durable.services.jobs.stop())  # the replica goes away mid-denoise
    stopped = job(durable.url, created["id"])
    reached = stopped["progress"]["steps_done"]
    assert stopped["status"] == "running" and 2 * every < reached < 40
    durable.run(durable.services.jobs.start())  # a replica is back; the lease lapses after 2 s

    events = list(job_events(durable.url, created["id"]))
    assert events[-1].kind == "result", [e.kind for e in events]
    assert durable.meter.value("sd_jobs_taken_over") >= 1
    retried = [e.data for e in events if e.kind == "status" and "attempt" in e.data]
    assert retried == [{"status": "queued", "attempt": 2}]
    # The second attempt starts at the last checkpoint before the stop, not at step 1.
    after = events[[e.data for e in events].index(retried[0]) :]
    first = next(e.data for e in after if e.kind == "progress")
    checkpointed = first["resumed_from"]
    # The checkpoint is saved before its step is reported: it may be one the stop hid.
    assert checkpointed % every == 0 and reached - every < checkpointed <= reached + 1
    assert first["step"] == checkpointed + 1
    assert first["steps_done"] == checkpointed + 1  # progress counts the resumed steps
    assert durable.meter.value("sd_jobs_resumed") >= 1
    redone = durable.meter.value("sd_job_steps_redone") - redone_before
    assert redone == max(0, reached - checkpointed) < every
    final = job(durable.url, created["id"])
    assert final["status"] == "succeeded" and final["progress"]["steps_done"] == 40
    image = pixels(httpx.get(durable.url + final["result"]["images"][0]["url"]).content)
    # An uninterrupted run: two images (another request, so not the cached result), the first
    # with the job's seed.
    alone = generate(durable.url, **REQUEST, num_images=2)
    assert not alone["cached"] and max_pixel_difference(image, first_image(alone)) <= 1


def test_a_job_lost_too_often_fails_with_the_reason_and_a_dead_letter(
    durable: LocalService, worker_stopped: None
) -> None:
    created = submit(durable.url, **{**REQUEST, "seed": 22})
    client = redis_of(durable)
    # Three replicas lost it already, the last two without getting past its first checkpoints.
    client.hset(f"sd:v1:job:{created['id']}", mapping={"attempts": 3, "stalled": 2})
    durable.run(durable.services.jobs.start())

    final = list(job_events(durable.url, created["id"]))[-1]
    assert final.kind == "error"
    assert final.data["error"] == {
        "code": "unavailable",
        "message": "gave up after 3 attempts that got no further: the replicas running it stopped",
        "field": None,
    }
    assert durable.meter.value("sd_jobs_dead_lettered") == 1
    letters = [
        fields for _, fields in client.xrange(DEAD_LETTERS) if fields["job"] == created["id"]
    ]
    assert len(letters) == 1 and letters[0]["reason"].startswith("gave up after 3 attempts")


def test_a_job_cancelled_while_queued_never_runs(
    durable: LocalService, worker_stopped: None
) -> None:
    created = submit(durable.url, **{**REQUEST, "seed": 23})
    assert httpx.delete(f"{durable.url}/v1/jobs/{created['id']}", timeout=30).status_code == 200
    durable.run(durable.services.jobs.start())

    events = list(job_events(durable.url, created["id"]))
    assert [e.kind for e in events] == ["status", "cancelled"]
    assert job(durable.url, created["id"])["progress"]["steps_done"] == 0


@pytest.fixture
def restartable(embedded_model_dir: Path, tmp_path: Path) -> Iterator[tuple[LocalService, Any]]:
    """A service on a Redis that can crash and come back with its append-only file."""
    with (
        redis_process(tmp_path / "redis", persistent=True) as server,
        local_service(
            embedded_model_dir,
            redis_url=server.url,
            image_store_url=(tmp_path / "images").as_uri(),
            job_lease_s=2.0,
            rate_limit_per_minute=600,
        ) as service,
    ):
        yield service, server


def test_a_redis_crash_costs_no_job_and_no_synchronous_request(
    restartable: tuple[LocalService, Any],
) -> None:
    service, redis_server = restartable
    created = submit(service.url, **{**REQUEST, "seed": 31})
    wait_for_step(service, created["id"], 11)
    redis_server.crash()
    # Synchronous requests go on without the result cache and rate limits (they fail open);
    # job operations answer 503 with Retry-After, naming the store.
    answer = generate(service.url, **{**REQUEST, "steps": 2, "seed": 5})
    assert answer["images"]
    refused = httpx.post(f"{service.url}/v1/jobs", json={"prompt": "x", "steps": 2}, timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert "Redis" in refused.json()["error"]["message"]
    assert httpx.get(f"{service.url}/v1/jobs/{created['id']}", timeout=30).status_code == 503
    redis_server.start()  # its append-only file brings the job, its log and checkpoints back

    events = list(job_events(service.url, created["id"]))
    assert events[-1].kind == "result", events[-1].data
    final = job(service.url, created["id"])
    assert final["status"] == "succeeded" and final["progress"]["steps_done"] == 40
    resumed = [e.data for e in events if e.kind == "progress" and "resumed_from" in e.data]
    assert resumed and resumed[0]["resumed_from"] >= 10
    image = pixels(httpx.get(service.url + final["result"]["images"][0]["url"]).content)
    alone = generate(service.url, **{**REQUEST, "seed": 31}, num_images=2)
    assert max_pixel_difference(image, first_image(alone)) <= 1
