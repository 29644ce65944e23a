"""`make reliability`'s fault run, smaller: async jobs survive SIGKILL to the denoiser replica,
then the ingress replica, then a Redis crash, each resuming from its checkpoints to the image an
undisturbed run gives; synchronous requests in flight get an answer, never a hang."""

from __future__ import annotations

import pytest

from loadtest.faults import markdown, run

pytestmark = pytest.mark.integration


def test_jobs_survive_the_denoiser_the_ingress_and_redis_being_killed() -> None:
    summary = run(jobs=4, steps=30, checkpoint_steps=5, sync=2, timeout_s=300)
    print(markdown(summary))
    assert summary["jobs_lost"] == 0, summary["lost"]
    assert summary["jobs_resumed"] == 4 and summary["images_compared"] == 4
    assert summary["max_pixel_difference"] <= 1
    assert summary["steps_redone_min_resumed"] < 5  # less than a checkpoint interval
    for fault in summary["faults"]:
        assert fault["recovered"] and fault["sync_hung"] == 0, fault
        assert {o["status"] for o in fault["sync"]} <= {200, 503}, fault
    assert summary["sync_503_without_retry_after"] == 0
