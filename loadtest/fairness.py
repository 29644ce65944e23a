"""Fair sharing under a flood: one API key sending ten times the load of another.

    python -m loadtest.fairness [--requests 20] [--heavy-clients 10] [--steps 20]
                                [--max-batch 1,8]

For each UNet batch size it starts `sd-serving serve` on the default model with two API keys,
`light` and `heavy`, and measures the light key's latency for `--requests` sequential requests:

* alone (unloaded);
* while the heavy key keeps `--heavy-clients` requests in flight (ten closed-loop clients: ten
  times the light key's load), each its own client: the fair share;
* the same, the light requests sent with the heavy key: one client, first come first served,
  what the service did before fair sharing.

The figure is the light key's p95 loaded over its p95 alone. Writes
`loadtest/results/cpu/fairness.{md,json}`; `make test` runs the same code smaller
(tests/unit/http/test_fairness.py).
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from loadtest.run import started_service
from tests.helpers.net import free_port

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu"
KEYS = {"light": "k-light-0000", "heavy": "k-heavy-0000"}
KEY_FILE = "\n".join(f"{key} name={name}" for name, key in KEYS.items()) + "\n"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def timed_request(client: httpx.Client, key: str, body: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    answer = client.post(
        "/v1/generate",
        json=body,
        headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
    )
    return time.perf_counter() - started, answer.status_code


def light_latencies(url: str, key: str, body: dict[str, Any], count: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=600) as client:
        latencies = []
        for _ in range(count):
            seconds, status = timed_request(client, key, body)
            if status != 200:
                raise RuntimeError(f"a light request answered {status}")
            latencies.append(seconds)
        return latencies


@contextmanager
def flood(url: str, key: str, body: dict[str, Any], clients: int) -> Iterator[Counter[int]]:
    """`clients` closed-loop clients sending with `key` until the block ends; the statuses."""
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while not stop.is_set():
                statuses[timed_request(client, key, body)[1]] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # the flood is under way before the light key's first request
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=600)


def measure(url: str, requests: int, heavy_clients: int, steps: int) -> dict[str, Any]:
    """The light key's latencies alone, beside the flood as its own client, and as the
    flood's client (first come first served)."""
    body = {"prompt": "a red circle on a white background", "steps": steps}  # no seed: renders
    light_latencies(url, KEYS["light"], body, 2)  # warm: caches and compiled paths
    alone = light_latencies(url, KEYS["light"], body, requests)
    with flood(url, KEYS["heavy"], body, heavy_clients) as fair_statuses:
        fair = light_latencies(url, KEYS["light"], body, requests)
    with flood(url, KEYS["heavy"], body, heavy_clients) as shared_statuses:
        shared = light_latencies(url, KEYS["heavy"], body, requests)
    summary = {
        name: {
            "p50_s": round(statistics.median(values), 3),
            "p95_s": round(p95(values), 3),
            "ratio_p95": round(p95(values) / p95(alone), 2),
        }
        for name, values in (("alone", alone), ("fair", fair), ("one_client", shared))
    }
    return {
        "requests": requests,
        "heavy_clients": heavy_clients,
        "steps": steps,
        "light": summary,
        "heavy_statuses": {
            "fair": dict(fair_statuses),
            "one_client": dict(shared_statuses),
        },
    }


@contextmanager
def service(max_batch: int) -> Iterator[str]:
    """`sd-serving serve` on the default model with the two keys and this UNet batch size."""
    with tempfile.TemporaryDirectory() as scratch:
        keys = Path(scratch) / "keys"
        keys.write_text(KEY_FILE)
        environment = {
            "SD_API_KEYS_FILE": str(keys),
            "SD_UNET__MAX_BATCH_SIZE": str(max_batch),
            "SD_METRICS_PORT": str(free_port()),
            "SD_GRPC_PORT": str(free_port()),
        }
        url = f"http://127.0.0.1:{free_port()}"
        with started_service(url, already_up=False, environment=environment):
            yield url


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    first = next(iter(runs.values()))
    lines = [
        "# Fair sharing: one key sending ten times the load of another",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m loadtest.fairness`: "
        f"the default (demo) model, {first['steps']} steps, {first['requests']} sequential "
        f"requests of the light key; the heavy key keeps {first['heavy_clients']} requests in "
        "flight. Ratio: p95 over the light key's p95 alone.",
        "",
        "| UNet batch | light key | p50 (s) | p95 (s) | p95 / alone | heavy key's answers |",
        "|---|---|---|---|---|---|",
    ]
    for batch, run in runs.items():
        for name, label in (
            ("alone", "alone"),
            ("fair", "beside the flood (fair share)"),
            ("one_client", "as the flood's own client (first come, first served)"),
        ):
            stats = run["light"][name]
            statuses = run["heavy_statuses"].get(name, {})
            answered = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())) or "-"
            lines.append(
                f"| {batch} | {label} | {stats['p50_s']} | {stats['p95_s']} | "
                f"{stats['ratio_p95']} | {answered} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--heavy-clients", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-batch", default="1,8", help="UNet batch sizes, comma-separated")
    args = parser.parse_args(argv)
    runs = {}
    for max_batch in (int(size) for size in args.max_batch.split(",")):
        with service(max_batch) as url:
            runs[str(max_batch)] = measure(url, args.requests, args.heavy_clients, args.steps)
        print(json.dumps({max_batch: runs[str(max_batch)]["light"]}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fairness.json").write_text(json.dumps(runs, indent=2) + "\n")
    (RESULTS / "fairness.md").write_text(markdown(runs))
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
