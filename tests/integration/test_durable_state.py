"""With SD_REDIS_URL (a real redis-server), shared state outlives the service: the real service
is stopped and started again, and still answers for the jobs, images and cached results of its
first run."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.live_service import start_service
from tests.helpers.redis_server import redis_server
from tests.helpers.requests import job, job_events, submit

pytestmark = pytest.mark.integration

REQUEST = {"prompt": "a blue square on a black background", "steps": 4, "seed": 11}


def test_a_restarted_service_still_answers_for_its_jobs_images_and_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("durable")
    with redis_server(base) as url:
        settings = {"SD_REDIS_URL": url, "SD_IMAGE_STORE_URL": (base / "images").as_uri()}
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
    assert sorted(path.name for path in (base / "images").iterdir()) == [
        image_url.rsplit("/", 1)[1].split(".")[0],
        image_url.rsplit("/", 1)[1].split(".")[0] + ".json",
    ]
