"""Locust load test for sd-serving.

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \
        --csv out/smoke --html out/smoke.html          # LOADTEST_PROFILE=smoke|ramp|spike|soak

Prompts come from loadtest/prompts.txt in a skewed (Zipf-like) mix, so popular prompts repeat and
the embedding cache is exercised; parameters follow a realistic mix of sizes, steps and
schedulers. Each profile has a load shape and SLOs; the run exits non-zero when an SLO is broken.
Users: /v1/generate (raw PNG or JSON), edits (image-to-image on /v1/generate), OpenAI images,
KServe v1, KServe v2 REST, KServe v2 gRPC (LOADTEST_GRPC_TARGET, default 127.0.0.1:9000) and
async jobs (submitted, then polled until
they end; "job to result" is the whole wait); all map onto the same request. The smoke profile
runs one user of each kind.

Requests spread evenly over the served models (`GET /v1/models`; LOADTEST_MODELS=a,b picks some),
each fitted to its model: a sampler it does not take falls back to its own, few-step models
(Turbo, LCM) get their own step count. Request names carry the model, so each model's latency is
reported on its own.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import random
import time
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent
import httpx
from locust import HttpUser, LoadTestShape, User, between, constant, events, task
from PIL import Image
from requests.adapters import HTTPAdapter

# Before any channel exists: gRPC's own threads would block gevent's loop.
grpc.experimental.gevent.init_gevent()
from loadtest.profiles import (  # noqa: E402
    ACCEPTED,
    DEADLINE,
    OVERLOAD_DEADLINE_S,
    OVERLOAD_DURATION_S,
    OVERLOAD_RATE,
    OVERLOAD_STEPS,
    PROFILES,
    PROMPTS,
    WEIGHTS,
)
from serving.client.grpc import infer_request, model_infer  # noqa: E402

PARAMETER_MIX = [
    ({"steps": 20, "scheduler": "dpmpp_2m"}, 6),
    ({"steps": 10, "scheduler": "euler_a"}, 2),
    ({"steps": 30, "scheduler": "ddim", "negative_prompt": "blurry, low quality"}, 1),
    ({"steps": 20, "scheduler": "dpmpp_2m", "num_images": 2}, 1),
    ({"steps": 15, "scheduler": "euler", "width": 64, "height": 64}, 1),
]


PROFILE_NAME = os.environ.get("LOADTEST_PROFILE", "smoke")
WANTED_MODELS = [name for name in os.environ.get("LOADTEST_MODELS", "").split(",") if name]
# model name -> its parameters from /v1/models/{name} (defaults, samplers, max_steps)
MODELS: dict[str, dict[str, Any]] = {}
REQUEST_COUNT = itertools.count()
PROFILE = PROFILES[PROFILE_NAME]
GRPC_TARGET = os.environ.get("LOADTEST_GRPC_TARGET", "127.0.0.1:9000")
# The smoke run checks every protocol once: one user of each kind.
ONE_OF_EACH = 1 if PROFILE_NAME == "smoke" else 0


def pick_prompt() -> str:
    return random.choices(PROMPTS, weights=WEIGHTS)[0]


@events.test_start.add_listener
def discover_models(environment, **_: object) -> None:  # type: ignore[no-untyped-def]
    served = httpx.get(f"{environment.host}/v1/models", timeout=30).json()["models"]
    missing = set(WANTED_MODELS) - set(served)
    if missing:
        raise SystemExit(f"LOADTEST_MODELS names {sorted(missing)}; the service has {served}")
    for name in WANTED_MODELS or served:
        answer = httpx.get(f"{environment.host}/v1/models/{name}", timeout=30)
        MODELS[name] = answer.json()["parameters"]


def fit(params: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """The mix's parameters as a user of this model family would send them."""
    fitted = dict(params)
    if fitted.get("scheduler") not in model["samplers"]:
        fitted.pop("scheduler", None)  # the model's own sampler
    few_step = model["defaults"]["steps"] <= 4  # Turbo and LCM models
    fitted["steps"] = model["defaults"]["steps"] if few_step else fitted["steps"]
    fitted["steps"] = min(fitted["steps"], model["max_steps"])
    return fitted


def pick() -> tuple[str, str, dict[str, Any]]:
    """A model, a prompt and parameters."""
    names = sorted(MODELS)
    model = names[next(REQUEST_COUNT) % len(names)]  # in turn: every model gets its share
    params = random.choices([p for p, _ in PARAMETER_MIX], [w for _, w in PARAMETER_MIX])[0]
    return model, pick_prompt(), fit(params, MODELS[model])


def post_expecting(user: HttpUser, path: str, body: dict[str, Any], name: str, marker: str) -> None:
    """POST a JSON body; a failure in locust's stats unless 200 with `marker` in the answer."""
    with user.client.post(path, json=body, name=name, catch_response=True) as response:
        if response.status_code != 200 or marker not in response.text:
            response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class GenerateUser(HttpUser):
    """A mobile or web client asking /v1/generate for one raw PNG."""

    wait_time = between(0.5, 2.0)
    weight = 4
    fixed_count = ONE_OF_EACH

    @task
    def generate(self) -> None:
        model, prompt, params = pick()
        body = {"model": model, "prompt": prompt, **params}
        accept = "application/json" if body.get("num_images", 1) > 1 else "image/png"
        with self.client.post(
            "/v1/generate",
            json=body,
            headers={"Accept": accept},
            name=f"/v1/generate ({model})",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif accept == "image/png" and not response.content.startswith(b"\x89PNG"):
                response.failure("the answer is not a PNG")


class JobUser(HttpUser):
    """An IoT or mobile client that submits a background job (priority `batch`: it waits while
    interactive requests wait) and comes back for it, polling."""

    wait_time = between(1.0, 3.0)
    weight = 1
    fixed_count = ONE_OF_EACH
    poll_s = 0.5
    give_up_s = 300.0

    @task
    def job(self) -> None:
        model, prompt, params = pick()
        started = time.perf_counter()
        with self.client.post(
            "/v1/jobs",
            json={"model": model, "prompt": prompt, "priority": "batch", **params},
            name=f"/v1/jobs ({model})",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            job_id = response.json()["id"]
        status = "queued"
        while status in ("queued", "running") and time.perf_counter() - started < self.give_up_s:
            time.sleep(self.poll_s)  # gevent's sleep: other users go on
            answer = self.client.get(f"/v1/jobs/{job_id}", name="/v1/jobs/{id}")
            status = answer.json()["status"] if answer.status_code == 200 else "lost"
        events.request.fire(
            request_type="JOB",
            name=f"job to result ({model})",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None if status == "succeeded" else RuntimeError(f"job ended {status}"),
            context={},
        )


def _start_picture() -> str:
    """A 64x64 PNG for the edit users, made here (base64)."""
    rng = random.Random(0)
    pixels = bytes(rng.randrange(256) for _ in range(64 * 64 * 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


START_PICTURE = _start_picture()


class EditUser(HttpUser):
    """A mobile client editing a picture (image-to-image on /v1/generate)."""

    wait_time = between(1.0, 3.0)
    weight = 1
    fixed_count = ONE_OF_EACH

    @task
    def edit(self) -> None:
        model, prompt, params = pick()
        body = {"model": model, "prompt": prompt, "image": START_PICTURE, "strength": 0.6}
        body |= {"steps": params["steps"], "width": 64, "height": 64}
        name = f"/v1/generate edit ({model})"
        post_expecting(self, "/v1/generate", body | {"output_format": "png"}, name, "b64_data")


class AdapterUser(HttpUser):
    """A client choosing a style per request: one or two LoRA adapters from those that fit the
    model (`GET /v1/models/{name}` lists them), so the UNet's batches mix adapters. Idle against
    a service without an adapter library. In the ramp, spike and soak mixes, not the smoke run
    (tests/integration/test_loras.py covers adapters through the deployments)."""

    wait_time = between(0.5, 2.0)
    weight = 1

    @task
    def generate_with_adapters(self) -> None:
        model, prompt, params = pick()
        fitting = MODELS[model].get("loras") or []
        if not fitting:
            return
        chosen = random.sample(fitting, k=min(len(fitting), random.choice((1, 2))))
        loras = [{"name": name, "scale": round(random.uniform(0.5, 1.2), 2)} for name in chosen]
        body = {"model": model, "prompt": prompt, "loras": loras, "output_format": "png"}
        body |= {key: params[key] for key in ("steps", "width", "height") if key in params}
        name = f"/v1/generate lora ({model})"
        post_expecting(self, "/v1/generate", body, name, "b64_data")


class VersionUser(HttpUser):
    """A client pinned to one version of a model (`name@version`), as a tester comparing a
    challenger with its champion: each answer must name the version asked for. The other users'
    requests name no version, so a rollout's canary splits them. Idle against a service without
    versioned models (tests/unit/http/test_versions.py covers the canary split)."""

    wait_time = between(0.5, 2.0)
    weight = 1

    @task
    def generate_a_version(self) -> None:
        model, prompt, params = pick()
        versions = list(MODELS[model].get("versions") or {})
        if not versions:
            return
        version = random.choice(versions)
        body = {"model": f"{model}@{version}", "prompt": prompt, "output_format": "png"}
        body |= {key: params[key] for key in ("steps", "width", "height") if key in params}
        name = f"/v1/generate version ({model})"
        post_expecting(self, "/v1/generate", body, name, f'"model_version":"{version}"')


class FeedbackUser(HttpUser):
    """An app that asks users to rate what they were shown: one image, then its rating (and now
    and then a corrected caption) on /v1/feedback, which must keep it (201)."""

    wait_time = between(1.0, 3.0)
    weight = 1

    @task
    def generate_and_rate(self) -> None:
        model, prompt, params = pick()
        body = {"model": model, "prompt": prompt, "num_images": 1}
        body |= {key: params[key] for key in ("steps", "width", "height") if key in params}
        with self.client.post(
            "/v1/generate", json=body, name=f"/v1/generate to rate ({model})", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            digest = response.json()["images"][0]["digest"]
        rating = random.randint(1, 5)
        feedback: dict[str, Any] = {"image": digest, "rating": rating}
        if rating <= 2 and random.random() < 0.5:
            feedback["caption"] = pick_prompt()
        with self.client.post(
            "/v1/feedback", json=feedback, name="/v1/feedback", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class OpenAIUser(HttpUser):
    """A client using an OpenAI SDK against the compatible endpoint."""

    wait_time = between(0.5, 2.0)
    weight = 1
    fixed_count = ONE_OF_EACH

    @task
    def generations(self) -> None:
        model, prompt, params = pick()
        body = {
            "model": model,
            "prompt": prompt,
            "n": 1,
            "steps": params["steps"],
            "response_format": "b64_json",
        }
        name = f"/v1/images/generations ({model})"
        post_expecting(self, "/v1/images/generations", body, name, "b64_json")


class KServeV1User(HttpUser):
    """A KServe v1 client (batch jobs, pipelines)."""

    wait_time = between(1.0, 3.0)
    weight = 1
    fixed_count = ONE_OF_EACH

    @task
    def predict(self) -> None:
        model, prompt, params = pick()
        body = {"instances": [{"prompt": prompt, "steps": min(params["steps"], 10)}]}
        path = f"/v1/models/{model}:predict"
        post_expecting(self, path, body, path, "predictions")


class KServeV2User(HttpUser):
    """A KServe v2 REST client (Triton-style tooling, InferenceGraph pipelines)."""

    wait_time = between(0.5, 2.0)
    weight = 1
    fixed_count = ONE_OF_EACH

    @task
    def infer(self) -> None:
        model, prompt, params = pick()
        inputs = [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}]
        for name, value in params.items():
            datatype = "BYTES" if isinstance(value, str) else "INT32"
            inputs.append({"name": name, "datatype": datatype, "shape": [1], "data": [value]})
        body = {"inputs": inputs, "parameters": {"output_format": "png"}}
        path = f"/v2/models/{model}/infer"
        post_expecting(self, path, body, path, "image_bytes")


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports every gRPC call to locust's statistics, as HttpUser does for HTTP."""

    def __init__(self, environment: Any) -> None:
        self._environment = environment

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        started = time.perf_counter()
        outcome = continuation(details, request)
        exception = outcome.exception()
        length = 0 if exception else outcome.result().ByteSize()
        self._environment.events.request.fire(
            request_type="grpc",
            name=f"{details.method.rsplit('/', 1)[-1]} ({request.model_name})",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )
        return outcome


class GrpcUser(User):
    """A KServe v2 gRPC client (mobile apps with generated stubs, services in the mesh)."""

    wait_time = between(0.5, 2.0)
    weight = 1
    fixed_count = ONE_OF_EACH

    def on_start(self) -> None:
        self._channel = grpc.insecure_channel(GRPC_TARGET)
        channel = grpc.intercept_channel(self._channel, LocustInterceptor(self.environment))
        self._infer = model_infer(channel)

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def infer(self) -> None:
        model, prompt, params = pick()
        request = infer_request(model, prompt, params)
        # Errors are counted by the interceptor; the user carries on like the others.
        with contextlib.suppress(grpc.RpcError):
            self._infer(request, timeout=120)


class OverloadUser(HttpUser):
    """Open-loop arrivals, as from many independent clients: each request is sent at its
    Poisson arrival time by a greenlet of its own, whether or not earlier ones were answered.
    (A closed-loop user waits for its answer, so an overloaded service slows its own load.)
    Runs only in the overload profile, chosen on locust's command line."""

    abstract = PROFILE_NAME != "overload"
    fixed_count = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        # One connection per request in flight, not requests' default pool of ten.
        self.client.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=10_000))

    @task
    def arrivals(self) -> None:
        started, pending = time.monotonic(), []
        while time.monotonic() - started < OVERLOAD_DURATION_S:
            pending.append(gevent.spawn(self.one_request))
            gevent.sleep(random.expovariate(OVERLOAD_RATE))
        gevent.joinall(pending)
        self.environment.runner.quit()

    def one_request(self) -> None:
        body = {"prompt": pick_prompt(), "steps": OVERLOAD_STEPS, "seed": next(REQUEST_COUNT)}
        headers = {"Accept": "image/png", "X-Timeout-S": str(OVERLOAD_DEADLINE_S)}
        with self.client.post(
            "/v1/generate", json=body, headers=headers, name=ACCEPTED, catch_response=True
        ) as response:
            status = response.status_code
            if status == 200 and response.content.startswith(b"\x89PNG"):
                return
            if status in (429, 503) and response.headers.get("Retry-After"):
                response.request_meta["name"] = f"refused {status}"
                response.success()
                return
            # 504: the service gave up at the request's deadline (X-Timeout-S), as it should.
            response.request_meta["name"] = DEADLINE if status == 504 else f"failed {status}"
            response.failure(f"HTTP {status}: {response.text[:200]}")


class ProfileShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for until, users, rate in PROFILE.stages:
            if elapsed < until:
                return users, rate
        return None


RECORD_PATH = os.environ.get("LOADTEST_RECORD")  # a JSON line per request, when set
RECORD: list[Any] = []


@events.request.add_listener
def record_request(  # type: ignore[no-untyped-def]
    request_type, name, response_time, response=None, exception=None, **_: object
) -> None:
    if RECORD_PATH is None:
        return
    if not RECORD:
        RECORD.append(open(RECORD_PATH, "a"))  # noqa: SIM115 (closed when locust quits)
    status = getattr(response, "status_code", None)
    retry_after = response.headers.get("Retry-After") if response is not None else None
    line = {"name": name, "ms": round(response_time, 1), "status": status}
    line |= {"retry_after": retry_after, "error": str(exception) if exception else None}
    if status not in (None, 200):  # the service's own words: who refused, and why
        try:
            line["message"] = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            line["message"] = response.text[:120]
    RECORD[0].write(json.dumps(line) + "\n")


@events.quitting.add_listener
def enforce_slos(environment, **_: object) -> None:  # type: ignore[no-untyped-def]
    for record in RECORD:
        record.close()
    total = environment.stats.total
    measured = environment.stats.get(PROFILE.slo_entry, "POST") if PROFILE.slo_entry else total
    broken = []
    if measured.num_requests == 0:
        broken.append("no request completed")
    elif total.fail_ratio > PROFILE.max_error_ratio:
        broken.append(f"error ratio {total.fail_ratio:.2%} > {PROFILE.max_error_ratio:.2%}")
    elif measured.get_response_time_percentile(0.95) > PROFILE.p95_ms:
        broken.append(
            f"p95 {measured.get_response_time_percentile(0.95):.0f} ms > {PROFILE.p95_ms:.0f} ms"
        )
    if broken:
        print(f"SLO broken in profile {PROFILE_NAME}: {'; '.join(broken)}")
        environment.process_exit_code = 1
    else:
        print(f"SLOs met in profile {PROFILE_NAME}: {total.num_requests} requests")
