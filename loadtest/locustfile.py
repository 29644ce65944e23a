"""Locust load test for sd-serving.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \
        --csv out/smoke --html out/smoke.html          # SD_LOAD_PROFILE=smoke|ramp|spike|soak

Prompts come from loadtest/prompts.txt in a skewed (Zipf-like) mix, so popular prompts repeat and
the embedding cache is exercised; parameters follow a realistic mix of sizes, steps and
schedulers. Each profile has a load shape and SLOs; the run exits non-zero when an SLO is broken.
Users: /v1/generate (raw PNG or JSON), OpenAI images and KServe v1; gRPC and KServe v2 users
join when those protocols land (they map onto the same request).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from locust import HttpUser, LoadTestShape, between, events, task

PROMPTS = [
    line.strip()
    for line in (Path(__file__).parent / "prompts.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
# Zipf-like popularity: the k-th prompt is asked for in proportion to 1/k.
WEIGHTS = [1 / (rank + 1) for rank in range(len(PROMPTS))]
PARAMETER_MIX = [
    ({"steps": 20, "scheduler": "dpmpp_2m"}, 6),
    ({"steps": 10, "scheduler": "euler_a"}, 2),
    ({"steps": 30, "scheduler": "ddim", "negative_prompt": "blurry, low quality"}, 1),
    ({"steps": 20, "scheduler": "dpmpp_2m", "num_images": 2}, 1),
    ({"steps": 15, "scheduler": "euler", "width": 64, "height": 64}, 1),
]


@dataclass(frozen=True)
class Profile:
    stages: tuple[tuple[int, int, float], ...]  # (until second, users, spawn rate)
    max_error_ratio: float
    p95_ms: float


PROFILES = {
    "smoke": Profile(((15, 2, 2.0),), max_error_ratio=0.0, p95_ms=60_000),
    "ramp": Profile(((60, 2, 1.0), (120, 4, 1.0), (180, 8, 1.0)), 0.01, 30_000),
    "spike": Profile(((30, 2, 2.0), (60, 16, 16.0), (120, 2, 4.0)), 0.05, 60_000),
    "soak": Profile(((1800, 4, 1.0),), 0.01, 30_000),
}
PROFILE_NAME = os.environ.get("SD_LOAD_PROFILE", "smoke")
MODEL_NAME = os.environ.get("SD_LOAD_MODEL", "sd-embedded")
PROFILE = PROFILES[PROFILE_NAME]


class GenerateUser(HttpUser):
    """A mobile or web client asking /v1/generate for one raw PNG."""

    wait_time = between(0.5, 2.0)
    weight = 4

    @task
    def generate(self) -> None:
        prompt = random.choices(PROMPTS, weights=WEIGHTS)[0]
        params = random.choices([p for p, _ in PARAMETER_MIX], [w for _, w in PARAMETER_MIX])[0]
        body = {"prompt": prompt, **params}
        accept = "application/json" if body.get("num_images", 1) > 1 else "image/png"
        with self.client.post(
            "/v1/generate",
            json=body,
            headers={"Accept": accept},
            name="/v1/generate",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif accept == "image/png" and not response.content.startswith(b"\x89PNG"):
                response.failure("the answer is not a PNG")


class OpenAIUser(HttpUser):
    """A client using an OpenAI SDK against the compatible endpoint."""

    wait_time = between(0.5, 2.0)
    weight = 1

    @task
    def generations(self) -> None:
        prompt = random.choices(PROMPTS, weights=WEIGHTS)[0]
        with self.client.post(
            "/v1/images/generations",
            json={"prompt": prompt, "n": 1, "steps": 20, "response_format": "b64_json"},
            name="/v1/images/generations",
            catch_response=True,
        ) as response:
            if response.status_code != 200 or "b64_json" not in response.text:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class KServeV1User(HttpUser):
    """A KServe v1 client (batch jobs, pipelines)."""

    wait_time = between(1.0, 3.0)
    weight = 1

    @task
    def predict(self) -> None:
        prompt = random.choices(PROMPTS, weights=WEIGHTS)[0]
        with self.client.post(
            f"/v1/models/{MODEL_NAME}:predict",
            json={"instances": [{"prompt": prompt, "steps": 10}]},
            name="/v1/models/{model}:predict",
            catch_response=True,
        ) as response:
            if response.status_code != 200 or "predictions" not in response.text:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class ProfileShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for until, users, rate in PROFILE.stages:
            if elapsed < until:
                return users, rate
        return None


@events.quitting.add_listener
def enforce_slos(environment, **_: object) -> None:  # type: ignore[no-untyped-def]
    total = environment.stats.total
    broken = []
    if total.num_requests == 0:
        broken.append("no request completed")
    elif total.fail_ratio > PROFILE.max_error_ratio:
        broken.append(f"error ratio {total.fail_ratio:.2%} > {PROFILE.max_error_ratio:.2%}")
    elif total.get_response_time_percentile(0.95) > PROFILE.p95_ms:
        broken.append(
            f"p95 {total.get_response_time_percentile(0.95):.0f} ms > {PROFILE.p95_ms:.0f} ms"
        )
    if broken:
        print(f"SLO broken in profile {PROFILE_NAME}: {'; '.join(broken)}")
        environment.process_exit_code = 1
    else:
        print(f"SLOs met in profile {PROFILE_NAME}: {total.num_requests} requests")
