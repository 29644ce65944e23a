"""Feedback from production flowing into a tuning run: clients rate images the demo model served
(by the image, or by the job that made it) and correct a caption; `sd-serving export-feedback`
writes the rows as a data batch; `sd-serving tune` tunes on it beside the original data and
reports the feedback source. Feedback on an unknown image or job, or out of range, is refused
naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.cli.main import main
from serving.client import Client
from serving.models.embedded import DEMO_MODEL
from serving.training.feedback import FEEDBACK_SOURCE
from serving.training.world import SOURCE, write_dataset
from tests.helpers.local_service import LocalService, local_service
from tests.helpers.net import wait_until

KEY = "key-feedback"
PROMPTS = [
    "a red circle on a white background",
    "a blue square on a black background",
    "a green triangle on a white background",
    "a yellow circle on a black background",
]
CORRECTED = "a blue circle on a black background"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    keys = tmp_path_factory.mktemp("feedback-keys") / "api-keys"
    keys.write_text(f"{KEY} name=mobile-app\n")
    rollout = {"versions": {"1": {}}, "champion": "1"}
    with local_service(DEMO_MODEL, api_keys_file=keys, rollout=rollout) as service:
        yield service


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client") / "key"
    path.write_text(KEY)
    return path


def test_rated_images_become_a_batch_that_tune_trains_on(
    served: LocalService, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    with Client(served.url, api_key=KEY) as client:
        made = [client.generate(prompt, seed=3).images[0] for prompt in PROMPTS]
        good = client.feedback(made[0], rating=5)
        corrected = client.feedback(made[2], rating=1, caption=CORRECTED)
        client.feedback(made[3], rating=2)  # wrong, and no caption to learn from
    # What the service kept: the prompt and parameters that made the image, and who rated it.
    assert good["provenance"]["prompt"] == PROMPTS[0] and good["image"] == made[0].digest
    assert good["provenance"]["seed"] == 3 and good["provenance"]["model_version"] == "1"
    assert good["client"] == "mobile-app" and corrected["caption"] == CORRECTED

    # The CLI rates an image by its URL, and an async job's image by the job.
    job = httpx.post(
        served.url + "/v1/jobs", json={"prompt": PROMPTS[0], "seed": 11}, headers=bearer
    ).json()["id"]

    def finished() -> bool:
        view = httpx.get(f"{served.url}/v1/jobs/{job}", headers=bearer).json()
        return bool(view["status"] == "succeeded")

    assert wait_until(finished, timeout_s=60)
    service = ["--url", served.url, "--api-key-file", str(key_file)]
    assert main(["feedback", served.url + made[1].url, "--rating", "5", *service]) == 0
    assert main(["feedback", "--job", job, "--rating", "4", *service]) == 0
    printed = capsys.readouterr().out
    assert "kept: rating 5" in printed and "kept: rating 4" in printed

    batch = tmp_path / "feedback"
    assert main(["export-feedback", str(batch), *service]) == 0
    printed = capsys.readouterr().out
    assert "4 images (1 with corrected captions) from 5 feedback rows" in printed, printed
    rows = [json.loads(line) for line in (batch / "metadata.jsonl").read_text().splitlines()]
    assert {row["source"] for row in rows} == {FEEDBACK_SOURCE}
    assert sorted(row["text"] for row in rows) == sorted([*PROMPTS[:2], CORRECTED, PROMPTS[0]])
    assert made[3].digest not in {row["file_name"].split(".")[0] for row in rows}
    assert {row["model_version"] for row in rows} == {"1"}
    for row in rows:
        assert (batch / row["file_name"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The batch is new data for sd-serving tune, beside the original.
    original = write_dataset(tmp_path / "original", count=24, seed=0)
    tuned = tmp_path / "tuned"
    argv = ["tune", str(tuned), "--original", str(original), "--new", str(batch)]
    size = ["--steps", "4", "--batch-size", "4", "--validation-fraction", "0.3"]
    assert main([*argv, *size]) == 0
    recorded = json.loads((tuned / "stratified" / "tune.json").read_text())
    assert [(entry["role"], entry["path"]) for entry in recorded["data"]] == [
        ("original", str(original)),
        ("new", str(batch)),
    ]
    assert set(recorded["sources"]) == {SOURCE, FEEDBACK_SOURCE}
    assert "production-feedback" in (tuned / "report.md").read_text()


def test_feedback_on_nothing_served_or_out_of_range_is_refused_naming_the_field(
    served: LocalService,
) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}

    def send(body: dict[str, object], headers: dict[str, str] = bearer) -> httpx.Response:
        return httpx.post(served.url + "/v1/feedback", json=body, headers=headers, timeout=30)

    cases = [
        ({"image": "0" * 40, "rating": 5}, 404, "image"),
        ({"job_id": "no-such-job", "rating": 5}, 404, "job_id"),
        ({"image": "0" * 40, "rating": 6}, 422, "rating"),
        ({"image": "0" * 40, "rating": 0}, 422, "rating"),
        ({"rating": 5}, 422, "image"),
        ({"image": "0" * 40, "job_id": "j", "rating": 5}, 422, "image"),
        ({"image": "0" * 40, "rating": 5, "caption": "  "}, 422, "caption"),
        ({"image": "0" * 40, "rating": 5, "caption": "x" * 1001}, 422, "caption"),
        ({"image": "0" * 40, "rating": 5, "stars": 5}, 422, "stars"),
    ]
    for body, status, field in cases:
        answer = send(body)
        assert (answer.status_code, answer.json()["error"]["field"]) == (status, field), body
    assert send({"image": "0" * 40, "rating": 5}, headers={}).status_code == 401
    page = httpx.get(served.url + "/v1/feedback?limit=0", headers=bearer)
    assert page.status_code == 422 and page.json()["error"]["field"] == "limit"
    assert httpx.get(served.url + "/v1/feedback", headers={}).status_code == 401
