"""The Store contract, held by both implementations: the in-memory local default and Redis (a real
redis-server). Then what only Redis gives: state that outlives the store (a restarted replica),
one rate-limit bucket across replicas, and versioned keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.dataplane.checkpoints import Checkpoint
from serving.dataplane.images import FsspecImages
from serving.dataplane.job_queue import RedisJobQueue
from serving.dataplane.jobs import JobEvent, JobEventKind, JobResult, JobStatus
from serving.dataplane.redis_store import RedisStore
from serving.dataplane.results import StoredImage
from serving.dataplane.store import InMemoryStore, Store
from serving.errors import ErrorDetail, QueueFull
from serving.settings import Settings
from tests.helpers.redis_server import redis_server
from tests.helpers.s3_server import s3_server

PROGRESS = JobEventKind.PROGRESS
NO_IMAGES = JobResult(images=[], cached=False, timings_ms={}, warnings=[])
Scenario = Callable[[Store], Awaitable[Any]]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def run(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Callable[..., Any]:
    """Runs a scenario against a fresh store of either kind (a clean Redis database)."""

    def runner(scenario: Scenario, **settings: Any) -> Any:
        async def main() -> Any:
            config = Settings(cache_dir=tmp_path, **settings)
            if request.param == "memory":
                return await scenario(InMemoryStore(config))
            redis.Redis.from_url(redis_url).flushdb()
            store = RedisStore.from_settings(
                Settings(cache_dir=tmp_path, redis_url=redis_url, **settings)
            )
            try:
                return await scenario(store)
            finally:
                await store.close()

        return asyncio.run(main())

    return runner


async def collect(store: Store, job_id: str, after: int = -1) -> list[JobEvent | None]:
    return [event async for event in store.job_events(job_id, after)]


def test_job_events_are_ordered_and_end_with_the_final_view(run: Callable[..., Any]) -> None:
    async def scenario(store: Store) -> list[JobEvent | None]:
        await store.create_job("a", {"prompt": "x"}, 2, None)
        listener = asyncio.create_task(collect(store, "a"))
        await asyncio.sleep(0.05)
        for step in (1, 2):
            assert not await store.report_job("a", PROGRESS, {"step": step, "preview": "p"})
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        return await asyncio.wait_for(listener, 10)

    events = [event for event in run(scenario) if event is not None]
    assert [e.index for e in events] == [0, 1, 2, 3, 4]
    assert [e.kind for e in events] == ["status", "status", "progress", "progress", "result"]
    assert [e.data["steps_done"] for e in events if e.kind == "progress"] == [1, 2]
    assert events[-1].data["status"] == "succeeded"
    assert events[-1].data["progress"] == {"steps_done": 2, "steps_total": 2, "fraction": 1.0}


def test_concurrent_reports_keep_the_log_in_order(run: Callable[..., Any]) -> None:
    """The images of one job report their steps side by side: the log stays ordered by index,
    with the step count rising and one change to running."""

    async def scenario(store: Store) -> list[JobEvent | None]:
        await store.create_job("a", {}, 40, None)
        reports = [
            store.report_job("a", PROGRESS, {"image_index": n % 2, "step": n // 2 + 1})
            for n in range(40)
        ]
        await asyncio.gather(*reports)
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        return await collect(store, "a")

    events = [event for event in run(scenario) if event is not None]
    assert [e.index for e in events] == list(range(43))
    assert [e.data for e in events if e.kind == "status"] == [
        {"status": "queued"},
        {"status": "running"},
    ]
    assert [e.data["steps_done"] for e in events if e.kind == "progress"] == list(range(1, 41))


def test_a_late_listener_gets_the_log_after_its_index_and_only_the_latest_preview(
    run: Callable[..., Any],
) -> None:
    async def scenario(store: Store) -> list[JobEvent | None]:
        await store.create_job("a", {}, 3, None)
        for step in (1, 2, 3):
            await store.report_job("a", PROGRESS, {"step": step, "preview": f"p{step}"})
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        return await collect(store, "a", after=1)

    events = [event for event in run(scenario) if event is not None]
    assert [e.index for e in events] == [2, 3, 4, 5]
    progress = [e for e in events if e.kind == "progress"]
    assert [e.data.get("preview") for e in progress] == [None, None, "p3"]


def test_a_cancel_is_seen_by_the_next_report_and_the_first_finisher_wins(
    run: Callable[..., Any],
) -> None:
    async def scenario(store: Store) -> tuple[Any, ...]:
        await store.create_job("a", {}, 10, None)
        assert not await store.report_job("a", PROGRESS, {"step": 1})
        await store.cancel_job("a")
        stop = await store.report_job("a", PROGRESS, {"step": 2})
        cancelled = await store.finish_job("a", JobStatus.CANCELLED)
        late = await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        ignored = await store.report_job("a", PROGRESS, {"step": 3})
        unknown = await store.finish_job("nobody", JobStatus.FAILED)
        return stop, cancelled, late, ignored, unknown, await store.get_job("a")

    stop, cancelled, late, ignored, unknown, view = run(scenario)
    assert stop and ignored and unknown is None
    assert cancelled.status is late.status is view.status is JobStatus.CANCELLED
    assert view.progress.steps_done == 2 and view.result is None


def test_failures_keep_their_error_and_webhooks_their_delivery(run: Callable[..., Any]) -> None:
    async def scenario(store: Store) -> Any:
        await store.create_job("a", {"prompt": "p"}, 1, "https://hooks.example.com/x")
        error = ErrorDetail(code="internal", message="boom", field="prompt")
        await store.finish_job("a", JobStatus.FAILED, error=error)
        await store.record_webhook("a", {"delivered": True, "attempts": 1})
        return await store.get_job("a")

    view = run(scenario)
    assert view.status is JobStatus.FAILED and view.parameters == {"prompt": "p"}
    assert view.error == ErrorDetail(code="internal", message="boom", field="prompt")
    assert view.webhook == {"delivered": True, "attempts": 1}


def test_queued_and_running_jobs_are_bounded(run: Callable[..., Any]) -> None:
    async def scenario(store: Store) -> None:
        await store.create_job("a", {}, 1, None)
        await store.create_job("b", {}, 1, None)
        with pytest.raises(QueueFull):
            await store.create_job("c", {}, 1, None)
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        await store.create_job("c", {}, 1, None)  # a finished job makes room

    run(scenario, max_jobs=2)


def test_results_are_found_by_key_with_their_images(run: Callable[..., Any]) -> None:
    async def scenario(store: Store) -> tuple[Any, ...]:
        digests = await store.keep(
            [StoredImage(b"png-1", "png"), StoredImage(b"jpeg-2", "jpeg")], "key", [7, 8]
        )
        uncached = await store.keep([StoredImage(b"webp-3", "webp")], None, [9])
        return (
            digests,
            await store.lookup_result("key"),
            await store.lookup_result("other"),
            await store.get_image(uncached[0]),
            await store.get_image("0" * 40),
        )

    digests, (cached, images), missing, uncached, unknown = run(scenario)
    assert cached.digests == digests and cached.seeds == [7, 8]
    assert [(i.data, i.media_type) for i in images] == [
        (b"png-1", "image/png"),
        (b"jpeg-2", "image/jpeg"),
    ]
    assert missing is None and unknown is None
    assert uncached.data == b"webp-3" and uncached.media_type == "image/webp"


def test_an_image_keeps_what_made_it_and_feedback_rows_page_oldest_first(
    run: Callable[..., Any],
) -> None:
    made = {"prompt": "a red circle", "seed": 3, "model": "demo"}

    async def scenario(store: Store) -> tuple[Any, ...]:
        [digest] = await store.keep([StoredImage(b"png", "png", made)], None, [3])
        for number in range(5):
            await store.add_feedback({"number": number})
        pages = [await store.feedback(offset, 2) for offset in (0, 2, 4, 6)]
        return await store.get_image(digest), pages

    image, pages = run(scenario, max_feedback=4)
    assert image.provenance == made
    # The oldest row went to make room for the fifth (SD_MAX_FEEDBACK=4).
    assert pages == [[{"number": 1}, {"number": 2}], [{"number": 3}, {"number": 4}], [], []]


def test_a_client_gets_its_burst_then_waits(run: Callable[..., Any]) -> None:
    async def scenario(store: Store) -> list[float]:
        return [await store.take_token("client", 60.0, 2) for _ in range(3)]

    first, second, third = run(scenario)
    assert first == second == 0.0 and 0.5 < third <= 1.0  # a token a second


# -- what only Redis gives


def redis_settings(tmp_path: Path, url: str, **settings: Any) -> Settings:
    return Settings(cache_dir=tmp_path, redis_url=url, **settings)


def test_everything_outlives_the_replica_that_stored_it(tmp_path: Path, redis_url: str) -> None:
    """A second store (a restarted or another replica) reads the first one's jobs, events,
    results and images."""
    redis.Redis.from_url(redis_url).flushdb()
    config = redis_settings(tmp_path, redis_url)

    async def first_replica() -> list[str]:
        store = RedisStore.from_settings(config)
        await store.create_job("a", {"prompt": "kept"}, 1, None)
        await store.report_job("a", PROGRESS, {"step": 1, "preview": "p"})
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        digests = await store.keep([StoredImage(b"image", "png")], "key", [1])
        await store.close()
        return digests

    async def second_replica() -> tuple[Any, ...]:
        store = RedisStore.from_settings(config)
        try:
            return (
                await store.get_job("a"),
                await collect(store, "a"),
                await store.lookup_result("key"),
            )
        finally:
            await store.close()

    digests = asyncio.run(first_replica())
    view, events, (cached, images) = asyncio.run(second_replica())
    assert view.status is JobStatus.SUCCEEDED and view.parameters == {"prompt": "kept"}
    assert [e.kind for e in events if e] == ["status", "status", "progress", "result"]
    assert cached.digests == digests and images[0].data == b"image"
    assert (tmp_path / "images" / digests[0]).read_bytes() == b"image"  # files by default


def test_two_replicas_share_one_bucket_per_client(tmp_path: Path, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    config = redis_settings(tmp_path, redis_url)

    async def scenario() -> list[float]:
        replicas = [RedisStore.from_settings(config) for _ in range(2)]
        try:
            # Alternating replicas: a burst of 3 is 3 requests in all, not 3 per replica.
            return [await replicas[n % 2].take_token("c", 6.0, 3) for n in range(4)]
        finally:
            for replica in replicas:
                await replica.close()

    waits = asyncio.run(scenario())
    assert waits[:3] == [0.0, 0.0, 0.0] and 9 < waits[3] <= 10  # 6 a minute: 10 s a token


def test_keys_carry_the_schema_version_and_finished_jobs_expire(
    tmp_path: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    config = redis_settings(tmp_path, redis_url, job_ttl_s=100, image_retention_s=1000)

    async def scenario() -> None:
        store = RedisStore.from_settings(config)
        await store.create_job("a", {}, 1, None)
        await store.report_job("a", PROGRESS, {"step": 1, "preview": "p"})
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        await store.keep([StoredImage(b"i", "png")], "key", [1])
        await store.take_token("c", 60.0, 1)
        await store.close()

    asyncio.run(scenario())
    keys = set(client.keys("*"))
    assert all(key.startswith("sd:v1:") for key in keys) and len(keys) == 5, keys
    assert 0 < client.ttl("sd:v1:job:a") <= 100 and 0 < client.ttl("sd:v1:job:a:events") <= 100
    assert 900 < client.ttl("sd:v1:result:key") <= 1000
    assert client.zcard("sd:v1:jobs:active") == 0


def test_checkpoints_resume_only_on_the_same_weights_and_go_with_the_finished_job(
    tmp_path: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    config = redis_settings(tmp_path, redis_url, job_checkpoint_steps=4)

    async def scenario() -> tuple[Any, ...]:
        store = RedisStore.from_settings(config)
        await store.create_job("a", {}, 8, None)
        replica = store.checkpoints("a", weights="w1")
        await replica.save(0, Checkpoint(4, b"\x00state at 4\xff"))
        await replica.save(1, Checkpoint(4, b"other image"))
        await replica.save(0, Checkpoint(8, b"\x00state at 8\xff"))  # the latest wins
        same = await store.checkpoints("a", weights="w1").load()  # another replica
        other = await store.checkpoints("a", weights="w2").load()  # new weights since
        await store.finish_job("a", JobStatus.SUCCEEDED, result=NO_IMAGES)
        await store.close()
        return replica.every, same, other

    every, same, other = asyncio.run(scenario())
    assert every == 4
    assert same == {0: Checkpoint(8, b"\x00state at 8\xff"), 1: Checkpoint(4, b"other image")}
    assert other == {}  # never resumed with other weights: those images start over
    assert not client.exists("sd:v1:job:a:checkpoints")


def test_the_queue_says_how_long_its_oldest_untaken_job_has_waited(
    tmp_path: Path, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    config = redis_settings(tmp_path, redis_url)

    async def scenario() -> list[float]:
        store = RedisStore.from_settings(config)
        queue = RedisJobQueue(store, "worker-1", lease_s=30)
        ages = [await queue.oldest_waiting_s()]
        await queue.put("a", {})
        await asyncio.sleep(0.3)
        await queue.put("b", {})
        ages.append(await queue.oldest_waiting_s())
        await queue.take(1, block_s=0.1)  # "a" is taken: "b" is the oldest waiting
        ages.append(await queue.oldest_waiting_s())
        await queue.take(1, block_s=0.1)
        ages.append(await queue.oldest_waiting_s())
        await store.close()
        return ages

    none, both, second, taken = asyncio.run(scenario())
    assert none == 0.0 and taken == 0.0
    assert 0.3 <= both < 5 and second < both


def test_a_silent_job_yields_heartbeats_and_an_unknown_one_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    config = redis_settings(tmp_path, redis_url)

    async def scenario() -> tuple[list[JobEvent | None], list[JobEvent | None]]:
        store = RedisStore.from_settings(config)
        store.heartbeat_s = 0.05
        await store.create_job("a", {}, 1, None)
        seen: list[JobEvent | None] = []
        async for event in store.job_events("a"):
            seen.append(event)
            if len(seen) == 3:
                break
        unknown = await collect(store, "nobody")
        await store.close()
        return seen, unknown

    seen, unknown = asyncio.run(scenario())
    assert seen[1:] == [None, None] and unknown == []


def test_images_by_url_are_purged_after_the_retention_period(tmp_path: Path) -> None:
    now = [1000.0]
    images = FsspecImages((tmp_path / "images").as_uri(), clock=lambda: now[0])

    asyncio.run(images.put("aa11", StoredImage(b"old", "png")))
    now[0] += 100
    asyncio.run(images.put("bb22", StoredImage(b"new", "png")))
    assert images.purge(older_than_s=50) == 1
    assert asyncio.run(images.get("aa11")) is None
    assert asyncio.run(images.get("bb22")) == StoredImage(b"new", "png")
    assert asyncio.run(images.get("../images/bb22")) is None  # a digest, never a path


def test_purge_images_is_a_command_for_operators(tmp_path: Path) -> None:
    url = (tmp_path / "images").as_uri()
    images = FsspecImages(url, clock=lambda: time.time() - 3600)
    asyncio.run(images.put("aa11", StoredImage(b"an hour old", "png")))
    assert FsspecImages(url).purge(older_than_s=10**6) == 0  # nothing that old
    environment = {**os.environ, "SD_IMAGE_STORE_URL": url}
    command = [sys.executable, "-m", "serving.cli", "purge-images", "--older-than-s", "60"]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"1 images older than 60 s deleted from {url}" in done.stdout
    assert not list((tmp_path / "images").iterdir())


def test_images_in_an_s3_bucket_outlive_the_replica_and_are_purged(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SD_IMAGE_STORE_URL=s3://… against an S3-compatible server on loopback (moto's server)."""
    redis.Redis.from_url(redis_url).flushdb()
    with s3_server() as environment:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        config = redis_settings(tmp_path, redis_url, image_store_url="s3://sd-images/served")

        async def first_replica() -> list[str]:
            store = RedisStore.from_settings(config)
            digests = await store.keep([StoredImage(b"\x89PNG-bytes", "png")], "key", [5])
            await store.close()
            return digests

        async def second_replica() -> Any:
            store = RedisStore.from_settings(config)
            try:
                return await store.lookup_result("key")
            finally:
                await store.close()

        digests = asyncio.run(first_replica())
        cached, (image,) = asyncio.run(second_replica())
        assert cached.digests == digests and image == StoredImage(b"\x89PNG-bytes", "png")
        command = [sys.executable, "-m", "serving.cli", "purge-images", "--older-than-s", "0"]
        environment = {**os.environ, "SD_IMAGE_STORE_URL": "s3://sd-images/served"}
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "1 images older than 0 s deleted" in done.stdout, done
        assert asyncio.run(second_replica()) is None  # the index outlives its images: a miss
