"""The load's shape, shared by the locust file and the drivers that start it: the prompts and
their popularity, and each profile's stages and SLOs. No locust import here (locust patches the
standard library with gevent when imported)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROMPTS = [
    line.strip()
    for line in (Path(__file__).parent / "prompts.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
# Zipf-like popularity: the k-th prompt is asked for in proportion to 1/k.
WEIGHTS = [1 / (rank + 1) for rank in range(len(PROMPTS))]


@dataclass(frozen=True)
class Profile:
    stages: tuple[tuple[int, int, float], ...]  # (until second, users, spawn rate)
    max_error_ratio: float
    p95_ms: float
    slo_entry: str | None = None  # the p95 of this request name only (None: of all requests)


# The overload profile: open-loop arrivals at LOADTEST_RATE a second for LOADTEST_DURATION_S
# (loadtest/overload.py sets both from the capacity it measured), then the answers still owed.
OVERLOAD_RATE = float(os.environ.get("LOADTEST_RATE", "1"))
OVERLOAD_DURATION_S = float(os.environ.get("LOADTEST_DURATION_S", "60"))
OVERLOAD_STEPS = int(os.environ.get("LOADTEST_STEPS", "20"))
# Each overload request's deadline (X-Timeout-S): the service answers 504 rather than go past it.
OVERLOAD_DEADLINE_S = float(os.environ.get("LOADTEST_DEADLINE_S", "30"))
ACCEPTED = "accepted"
DEADLINE = "answered 504 at its deadline"
PROFILES = {
    # One user of each protocol's kind (their fixed count of 1: seven), so every one runs.
    "smoke": Profile(((20, 7, 7.0),), max_error_ratio=0.0, p95_ms=60_000),
    "ramp": Profile(((60, 2, 1.0), (120, 4, 1.0), (180, 8, 1.0)), 0.01, 30_000),
    "spike": Profile(((30, 2, 2.0), (60, 16, 16.0), (120, 2, 4.0)), 0.05, 60_000),
    "soak": Profile(((1800, 4, 1.0),), 0.01, 30_000),
    # Refusals (429/503 with Retry-After) are the service shedding load, reported apart and not
    # failures; the SLO is the accepted requests' p95. Requests answered 504 at their deadline
    # (admitted, then the pace fell) count as errors.
    "overload": Profile(
        ((int(OVERLOAD_DURATION_S + OVERLOAD_DEADLINE_S + 60), 1, 1.0),),
        max_error_ratio=0.05,
        p95_ms=30_000,
        slo_entry=ACCEPTED,
    ),
}
