"""Faults under load: async jobs in flight while the denoiser replica, then the ingress replica,
are killed with SIGKILL and Redis crashes and comes back.

    python -m loadtest.faults [--jobs 40] [--steps 100] [--checkpoint-steps 5] [--sync 3]

It starts Redis (append-only, fsync always) and `sd-serving serve` on the default model with
Redis and an image folder, submits `--jobs` jobs of `--steps` steps, and once checkpoints exist
kills, one after another, the UNetDenoiser replica, the Ingress replica and Redis (restarted on
its port and folder after 2 s), with `--sync` synchronous requests in flight at each. Then it
waits for every job and renders each job's request again, undisturbed, to compare the images.

Reported: jobs lost (any job not `succeeded`), jobs resumed from a checkpoint and the steps they
redid, the time until the jobs made progress again after each fault, and each synchronous
request's answer (200, or 503 with Retry-After; anything else, or no answer, is a failure).
Writes `loadtest/results/cpu/faults.{md,json}`; `make test` runs it smaller
(tests/integration/test_faults.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from serving.client.sse import events
from tests.helpers.images import max_pixel_difference, pixels
from tests.helpers.live_service import RunningService, start_service
from tests.helpers.net import wait_until
from tests.helpers.redis_server import RedisProcess, redis_process

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu"
PROMPTS = [
    f"a {colour} {shape} on a {background} background"
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "triangle")
    for background in ("white", "black")
]
FAULTS = ("unet replica", "ingress replica", "redis")
FAULT_AT = (0.15, 0.40, 0.65)  # of all the jobs' steps


def job_body(index: int, steps: int) -> dict[str, Any]:
    return {"prompt": PROMPTS[index % len(PROMPTS)], "steps": steps, "seed": 1000 + index}


def get_json(client: httpx.Client, path: str) -> dict[str, Any] | None:
    """A GET's JSON, or None while the service or its store does not answer."""
    try:
        answer = client.get(path)
    except httpx.HTTPError:
        return None
    return dict(answer.json()) if answer.status_code == 200 else None


def progress(client: httpx.Client, ids: list[str]) -> tuple[int, int] | None:
    """(steps done over every job, jobs finished); None while unreadable."""
    done = finished = 0
    for job_id in ids:
        view = get_json(client, f"/v1/jobs/{job_id}")
        if view is None:
            return None
        done += view["progress"]["steps_done"]
        finished += view["status"] in ("succeeded", "failed", "cancelled")
    return done, finished


def synchronous_calls(
    url: str, count: int, steps: int, first_seed: int
) -> tuple[list[threading.Thread], list]:
    """`count` synchronous requests, started now (seeds of their own: never a cached answer);
    their outcomes land in the list."""
    outcomes: list[dict[str, Any]] = []

    def call(seed: int) -> None:
        started = time.monotonic()
        try:
            answer = httpx.post(
                f"{url}/v1/generate",
                json={
                    "prompt": "a blue square on a white background",
                    "steps": steps,
                    "seed": seed,
                },
                timeout=120,
            )
            outcome = {
                "status": answer.status_code,
                "retry_after": answer.headers.get("retry-after"),
            }
        except httpx.HTTPError as error:
            outcome = {"status": type(error).__name__, "retry_after": None}
        outcomes.append({**outcome, "seconds": round(time.monotonic() - started, 2)})

    threads = [threading.Thread(target=call, args=(first_seed + n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def inflict(fault: str, service: RunningService, redis: RedisProcess) -> None:
    if fault == "unet replica":
        service.kill_replicas("ServeReplica:sd-serving:UNetDenoiser")
    elif fault == "ingress replica":
        service.kill_replicas("ServeReplica:sd-serving:Ingress")
    else:
        redis.crash()
        time.sleep(2.0)
        redis.start()  # same port and folder: the append-only file is replayed


def redone_steps(job_events: list[Any]) -> tuple[int, int, list[int]]:
    """From a job's event log: attempts, images resumed from a checkpoint, steps redone per
    resumed image (its last step before the loss minus where it resumed)."""
    attempts, reached, lost, resumed, redone = 1, {}, {}, 0, []
    for event in job_events:
        if event.kind == "status" and "attempt" in event.data:
            attempts = event.data["attempt"]
            lost, reached = dict(reached), {}
        elif event.kind == "progress":
            image = event.data["image_index"]
            if image not in reached and image in lost:
                start = event.data.get("resumed_from", 0)
                resumed += start > 0
                redone.append(max(0, lost[image] - start))
            reached[image] = event.data["step"]
    return attempts, resumed, redone


def run(jobs: int, steps: int, checkpoint_steps: int, sync: int, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="sd-faults-") as scratch:
        base = Path(scratch)
        with redis_process(base / "redis", persistent=True) as redis:
            settings = {
                "SD_REDIS_URL": redis.url,
                "SD_IMAGE_STORE_URL": (base / "images").as_uri(),
                "SD_JOB_LEASE_S": "10",
                "SD_JOB_CHECKPOINT_STEPS": str(checkpoint_steps),
                "SD_JOB_WORKERS": str(jobs),
                "SD_MAX_JOBS": str(jobs * 2),
            }
            with start_service(base / "cache", settings) as service:
                try:
                    return _run(service, redis, jobs, steps, checkpoint_steps, sync, timeout_s)
                finally:
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    (base.parent / "sd-faults-service.log").write_text("".join(service.output))


def _run(
    service: RunningService,
    redis: RedisProcess,
    jobs: int,
    steps: int,
    checkpoint_steps: int,
    sync: int,
    timeout_s: float,
) -> dict[str, Any]:
    url = service.url
    client = httpx.Client(base_url=url, timeout=30)
    ids = []
    for index in range(jobs):
        answer = client.post("/v1/jobs", json=job_body(index, steps))
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    started = time.monotonic()
    faults = []
    total = jobs * steps
    for number, fault in enumerate(FAULTS):
        # Each fault strikes jobs under way: at 15 %, 40 % and 65 % of all their steps (the
        # first once checkpoints exist).
        mark = max(FAULT_AT[number] * total, 2 * checkpoint_steps * min(jobs, 8))
        wait_until(lambda mark=mark: (progress(client, ids) or (0, 0))[0] >= mark, timeout_s)
        threads, outcomes = synchronous_calls(url, sync, steps=20, first_seed=5000 + 100 * number)
        time.sleep(1.0)  # under way
        before = progress(client, ids) or (0, 0)
        struck = time.monotonic()
        inflict(fault, service, redis)

        def moved(before: tuple[int, int] = before) -> bool:
            now = progress(client, ids)
            return now is not None and (now[0] > before[0] + jobs or now[1] == jobs)

        recovered = wait_until(moved, timeout_s, interval_s=0.25)
        recovery_s = round(time.monotonic() - struck, 1)
        for thread in threads:
            thread.join(timeout=180)
        hung = sum(thread.is_alive() for thread in threads)
        faults.append(
            {
                "fault": fault,
                "jobs_unfinished": jobs - before[1],
                "recovered": recovered,
                "recovery_s": recovery_s,
                "sync": outcomes,
                "sync_hung": hung,
            }
        )
    wait_until(lambda: (progress(client, ids) or (0, 0))[1] == jobs, timeout_s, interval_s=1.0)
    elapsed_s = round(time.monotonic() - started, 1)
    results = [_job_outcome(client, url, job_id) for job_id in ids]
    differences = _compare(url, results, steps)
    client.close()
    return _summary(jobs, steps, checkpoint_steps, elapsed_s, faults, results, differences)


def _job_outcome(client: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    view = get_json(client, f"/v1/jobs/{job_id}") or {"status": "unreadable"}
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", timeout=60) as stream:
        log = list(events(stream.iter_lines()))
    attempts, resumed, redone = redone_steps(log)
    image = None
    if view.get("result"):
        image = client.get(view["result"]["images"][0]["url"]).content
    return {
        "id": job_id,
        "status": view["status"],
        "error": view.get("error"),
        "attempts": attempts,
        "images_resumed": resumed,
        "steps_redone": redone,
        "image": image,
    }


def _compare(url: str, results: list[dict[str, Any]], steps: int) -> list[int | None]:
    """Each job's image against its request rendered again, undisturbed (two images: another
    request, so never the cached answer; the first has the job's seed)."""

    def reference(index: int) -> int | None:
        if results[index]["image"] is None:
            return None
        body = {**job_body(index, steps), "num_images": 2}
        answer = httpx.post(f"{url}/v1/generate", json=body, timeout=600).json()
        again = pixels(base64.b64decode(answer["images"][0]["b64_data"]))
        return max_pixel_difference(pixels(results[index]["image"]), again)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(reference, range(len(results))))


def _summary(
    jobs: int,
    steps: int,
    checkpoint_steps: int,
    elapsed_s: float,
    faults: list[dict[str, Any]],
    results: list[dict[str, Any]],
    differences: list[int | None],
) -> dict[str, Any]:
    redone = [steps for result in results for steps in result["steps_redone"]]
    sync = [outcome for fault in faults for outcome in fault["sync"]]
    return {
        "jobs": jobs,
        "steps": steps,
        "checkpoint_steps": checkpoint_steps,
        "seconds": elapsed_s,
        "jobs_lost": sum(result["status"] != "succeeded" for result in results),
        "lost": [
            {"status": result["status"], "error": result["error"]}
            for result in results
            if result["status"] != "succeeded"
        ],
        "jobs_taken_over": sum(result["attempts"] > 1 for result in results),
        "jobs_resumed": sum(result["images_resumed"] > 0 for result in results),
        "steps_redone_total": sum(redone),
        "steps_redone_median": statistics.median(redone) if redone else None,
        "steps_redone_min_resumed": min(redone) if redone else None,
        "max_pixel_difference": max((d for d in differences if d is not None), default=None),
        "images_compared": sum(d is not None for d in differences),
        "faults": faults,
        "per_job": [
            {k: result[k] for k in ("status", "attempts", "images_resumed", "steps_redone")}
            for result in results
        ],
        "sync_answers": {
            str(status): sum(o["status"] == status for o in sync)
            for status in sorted({o["status"] for o in sync}, key=str)
        },
        "sync_503_without_retry_after": sum(
            o["status"] == 503 and not o["retry_after"] for o in sync
        ),
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Faults under load: denoiser, ingress and Redis killed mid-job",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m loadtest.faults`: "
        f"{summary['jobs']} jobs of {summary['steps']} steps on the default model, checkpoints "
        f"every {summary['checkpoint_steps']} steps, Redis append-only; SIGKILL to the "
        "UNetDenoiser replica, then the Ingress replica, then Redis (restarted after 2 s), "
        f"synchronous requests in flight at each. All jobs done in {summary['seconds']} s.",
        "",
        "| jobs lost | taken over | resumed from a checkpoint | steps redone (total, median, "
        "least) | images compared | largest pixel difference |",
        "|---|---|---|---|---|---|",
        f"| {summary['jobs_lost']} | {summary['jobs_taken_over']} | {summary['jobs_resumed']} | "
        f"{summary['steps_redone_total']}, {summary['steps_redone_median']}, "
        f"{summary['steps_redone_min_resumed']} | {summary['images_compared']} | "
        f"{summary['max_pixel_difference']} |",
        "",
        "| fault | jobs unfinished | jobs back past their steps at the fault after (s) | "
        "synchronous requests in flight: answers |",
        "|---|---|---|---|",
    ]
    for fault in summary["faults"]:
        answers = ", ".join(
            f"{o['status']}" + (f" (Retry-After {o['retry_after']})" if o["retry_after"] else "")
            for o in fault["sync"]
        )
        hung = f"; {fault['sync_hung']} hung" if fault["sync_hung"] else ""
        recovered = fault["recovery_s"] if fault["recovered"] else "not within the timeout"
        lines.append(
            f"| {fault['fault']} | {fault['jobs_unfinished']} | {recovered} | {answers}{hung} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--checkpoint-steps", type=int, default=5)
    parser.add_argument("--sync", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    args = parser.parse_args(argv)
    summary = run(args.jobs, args.steps, args.checkpoint_steps, args.sync, args.timeout_s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "faults.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if summary["jobs_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
