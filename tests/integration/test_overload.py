"""`make reliability`'s overload run, shorter: three times the measured capacity as open-loop
arrivals; the service sheds what it cannot finish in time (503 with Retry-After), keeps the
accepted requests within the SLO and their deadlines, and gives its memory back."""

from __future__ import annotations

import pytest

from loadtest.overload import MIN_FINISHED, markdown, run

pytestmark = pytest.mark.integration


def test_three_times_capacity_is_shed_with_retry_after_and_memory_comes_back() -> None:
    # A small ingress (20 in flight, 16 held by the proxy: the capacity run's 16 clients arrive
    # at once, and Serve counts them queued until each has a replica) so Serve's own
    # backpressure may refuse too, in our error shape.
    ingress = {"SD_INGRESS__MAX_ONGOING_REQUESTS": "20", "SD_INGRESS__MAX_QUEUED_REQUESTS": "16"}
    summary = run(
        seconds=20,
        factor=3,
        steps=10,
        capacity_s=10,
        settle_s=10,
        deadline_s=10,
        environment=ingress,
    )
    print(markdown(summary))
    assert summary["accepted"] > 0 and summary["refused"], "nothing shed at 3x capacity"
    assert set(summary["refused"]) <= {"429", "503"}
    assert summary["refused_without_retry_after"] == 0
    assert "other" not in summary["refused_by"], summary["refused_by"]
    assert not summary["failed"], summary["failure_examples"]
    assert summary["taken_on_and_finished"] >= MIN_FINISHED, summary
    assert summary["past_deadline"] == 0
    assert summary["accepted_p95_ms"] <= summary["slo_p95_ms"]
    assert summary["memory_within_tolerance"], summary["memory"]
