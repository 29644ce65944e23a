"""Overload: three times the measured capacity, open-loop, and what the service does with it.

    python -m loadtest.overload [--seconds 60] [--factor 3] [--steps 20] [--settle-s 30]

Starts `sd-serving serve` on the default model, then:

1. measures its capacity: closed-loop clients (twice the UNet batch) for `--capacity-s`, the
   requests answered per second;
2. takes the resident memory of every process of the service (the command, Ray's GCS and raylet,
   every replica's worker) after `--settle-s` of quiet;
3. runs locust's `overload` profile: `--factor` times that rate as Poisson arrivals for
   `--seconds`, each request from a greenlet of its own (open loop: a slow answer never holds
   back the next arrival), each with a deadline (`X-Timeout-S`);
4. takes the memory again after `--settle-s` of quiet.

It passes when the accepted requests' p95 is within the profile's SLO, every refused request
is 429 or 503 with Retry-After, no request waited past its deadline, and every process's
memory is within 10 % of where it started. Writes `loadtest/results/cpu/overload.{md,json}`;
`make test` runs the same code shorter (tests/integration/test_overload.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtest.profiles import ACCEPTED, DEADLINE, PROFILES, PROMPTS
from loadtest.run import run_locust, started_service
from tests.helpers.net import free_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu"
MEMORY_TOLERANCE = 0.10
DEADLINE_SLACK_S = 1.0  # the client's own clock and the answer's transfer
# Of the requests the service took on (answered 200, or 504 at their deadline), the share that
# must finish: it admits by its recent pace, which can fall after admission.
MIN_FINISHED = 0.95
SLO_MS = PROFILES["overload"].p95_ms


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def capacity(url: str, clients: int, seconds: float, steps: int) -> float:
    """Requests answered per second by `clients` closed-loop clients, after a warm-up."""
    answered = Counter[int]()
    refusals: list[str] = []
    stop = threading.Event()
    seeds = iter(range(10**9))

    def loop(number: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while not stop.is_set():
                body = {"prompt": PROMPTS[number % len(PROMPTS)], "steps": steps}
                body["seed"] = next(seeds)  # never the same request twice: no cached answers
                answer = client.post("/v1/generate", json=body)
                answered[answer.status_code] += 1
                if answer.status_code != 200:
                    refusals.append(answer.text[:200])

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(min(10.0, seconds / 2))  # batches full and caches warm
    first, started = answered[200], time.monotonic()
    time.sleep(seconds)
    rate = (answered[200] - first) / (time.monotonic() - started)
    stop.set()
    for thread in threads:
        thread.join(timeout=600)
    if set(answered) != {200}:
        raise RuntimeError(f"the capacity run was refused: {dict(answered)}: {refusals[:3]}")
    return rate


def resident_memory(pid: int) -> dict[int, dict[str, Any]]:
    """Every process of the service's tree: its name (Ray's process title) and RSS in MiB."""
    root = psutil.Process(pid)
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            title = process.cmdline()[0] if process.cmdline() else process.name()
            rss = process.memory_info().rss / 2**20
        except psutil.Error:
            continue
        found[process.pid] = {"process": title.split(" ")[0][:60], "rss_mib": round(rss, 1)}
    return found


def memory_change(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for pid, start in sorted(before.items(), key=lambda item: -item[1]["rss_mib"]):
        end = after.get(pid)
        ratio = end["rss_mib"] / start["rss_mib"] if end else None
        rows.append({**start, "pid": pid, "after_mib": end and end["rss_mib"], "ratio": ratio})
    return rows


def outcomes(record: list[dict[str, Any]], deadline_s: float) -> dict[str, Any]:
    accepted = [line["ms"] for line in record if line["name"] == ACCEPTED]
    refused = [line for line in record if line["name"].startswith("refused")]
    failed = [line for line in record if line["name"].startswith("failed")]
    timed_out = sum(1 for line in record if line["name"] == DEADLINE)
    return {
        "sent": len(record),
        "accepted": len(accepted),
        "accepted_p50_ms": round(statistics.median(accepted)) if accepted else None,
        "accepted_p95_ms": round(p95(accepted)) if accepted else None,
        "taken_on_and_finished": round(len(accepted) / max(1, len(accepted) + timed_out), 3),
        "refused": dict(Counter(str(line["status"]) for line in refused)),
        "refused_by": dict(Counter(refuser(line.get("message", "")) for line in refused)),
        "refused_without_retry_after": sum(1 for line in refused if not line["retry_after"]),
        "answered_504_at_deadline": timed_out,
        "failed": dict(Counter(str(line["status"]) for line in failed)),
        "failure_examples": [line["error"] for line in failed[:3]],
        "past_deadline": sum(
            1 for line in record if line["ms"] > (deadline_s + DEADLINE_SLACK_S) * 1000
        ),
        "longest_ms": round(max(line["ms"] for line in record)) if record else None,
    }


REFUSERS = {
    "after its deadline": "UNet: would finish after the deadline",
    "can no longer finish": "UNet: deadline passed while waiting",
    "the UNet is busy": "UNet: waiting room full",
    "at capacity": "proxy: ingress queue full",
}


def refuser(message: str) -> str:
    """Which of the service's limits refused, from the refusal's message."""
    return next((who for words, who in REFUSERS.items() if words in message), "other")


def run(
    *,
    seconds: float,
    factor: float,
    steps: int,
    capacity_s: float,
    settle_s: float,
    deadline_s: float,
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    settings = {"SD_METRICS_PORT": str(free_port()), "SD_GRPC_PORT": str(free_port())}
    settings |= environment or {}
    url = f"http://127.0.0.1:{free_port()}"
    with started_service(url, already_up=False, environment=settings) as service:
        assert service is not None
        clients = 2 * int(settings.get("SD_UNET__MAX_BATCH_SIZE", "8"))
        measured = capacity(url, clients, capacity_s, steps)
        time.sleep(settle_s)
        before = resident_memory(service.pid)
        rate = factor * measured
        with tempfile.TemporaryDirectory() as scratch:
            record_path = Path(scratch) / "requests.jsonl"
            locust_code = run_locust(
                url,
                "overload",
                Path(scratch) / "locust",
                "127.0.0.1:1",  # no gRPC user in this profile
                user_classes=("OverloadUser",),
                environment={
                    "LOADTEST_RATE": str(rate),
                    "LOADTEST_DURATION_S": str(seconds),
                    "LOADTEST_STEPS": str(steps),
                    "LOADTEST_DEADLINE_S": str(deadline_s),
                    "LOADTEST_RECORD": str(record_path),
                },
            )
            record = [json.loads(line) for line in record_path.read_text().splitlines()]
        time.sleep(settle_s)
        after = resident_memory(service.pid)
    memory = memory_change(before, after)
    return {
        "seconds": seconds,
        "factor": factor,
        "steps": steps,
        "deadline_s": deadline_s,
        "slo_p95_ms": SLO_MS,
        "settings": environment or {},
        "settle_s": settle_s,
        "capacity_per_s": round(measured, 3),
        "arrival_rate_per_s": round(rate, 3),
        "locust_exit_code": locust_code,
        **outcomes(record, deadline_s),
        "memory": memory,
        "memory_within_tolerance": all(
            row["ratio"] is not None and row["ratio"] <= 1 + MEMORY_TOLERANCE for row in memory
        ),
    }


def markdown(summary: dict[str, Any]) -> str:
    refused = ", ".join(f"{code}: {n}" for code, n in sorted(summary["refused"].items())) or "0"
    failed = ", ".join(f"{code}: {n}" for code, n in sorted(summary["failed"].items())) or "0"
    lines = [
        "# Overload: three times the measured capacity, open-loop",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m loadtest.overload`: "
        f"the default (demo) model, {summary['steps']} steps, 64x64, one image a request, "
        f"each with a {summary['deadline_s']:.0f} s deadline (`X-Timeout-S`). Capacity "
        f"(closed loop, twice the UNet batch of clients): {summary['capacity_per_s']} requests/s; "
        f"locust then sent Poisson arrivals at {summary['arrival_rate_per_s']}/s "
        f"({summary['factor']}x) for {summary['seconds']:.0f} s. Settings over the defaults: "
        f"{summary['settings'] or 'none'}.",
        "",
        "| sent | accepted | accepted p50 / p95 (s) | SLO p95 (s) | refused (code: count) "
        "| refused without Retry-After | 504 at the deadline | other failures "
        "| waited past the deadline | longest wait (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {summary['sent']} | {summary['accepted']} | "
        f"{(summary['accepted_p50_ms'] or 0) / 1000:.1f} / "
        f"{(summary['accepted_p95_ms'] or 0) / 1000:.1f} | {summary['slo_p95_ms'] / 1000:.0f} | "
        f"{refused} | {summary['refused_without_retry_after']} | "
        f"{summary['answered_504_at_deadline']} | {failed} | "
        f"{summary['past_deadline']} | {(summary['longest_ms'] or 0) / 1000:.1f} |",
        "",
        "Refused by: "
        + (", ".join(f"{who}: {n}" for who, n in sorted(summary["refused_by"].items())) or "-")
        + ".",
        "",
        f"Resident memory, before the load and after it, each after {summary['settle_s']:.0f} s "
        "of quiet (tolerance 10 %):",
        "",
        "| process | before (MiB) | after (MiB) | after / before |",
        "|---|---|---|---|",
    ]
    for row in summary["memory"]:
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "gone"
        lines.append(
            f"| {row['process']} | {row['rss_mib']} | {row['after_mib'] or '-'} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--capacity-s", type=float, default=30.0)
    parser.add_argument("--settle-s", type=float, default=30.0)
    parser.add_argument(
        "--deadline-s", type=float, default=SLO_MS / 1000, help="each request's (the SLO)"
    )
    args = parser.parse_args(argv)
    summary = run(
        seconds=args.seconds,
        factor=args.factor,
        steps=args.steps,
        capacity_s=args.capacity_s,
        settle_s=args.settle_s,
        deadline_s=args.deadline_s,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overload.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "overload.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if passed(summary) else 1


def passed(summary: dict[str, Any]) -> bool:
    return (
        summary["accepted"] > 0
        and (summary["accepted_p95_ms"] or 0) <= summary["slo_p95_ms"]
        and summary["refused_without_retry_after"] == 0
        and not summary["failed"]
        and summary["taken_on_and_finished"] >= MIN_FINISHED
        and summary["past_deadline"] == 0
        and summary["memory_within_tolerance"]
    )


if __name__ == "__main__":
    sys.exit(main())
