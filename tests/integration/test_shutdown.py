"""Stopping under load, as Kubernetes stops a pod (SIGTERM, then SIGKILL after the grace
period): readiness answers not-ready at once, the requests in flight finish, and the service
exits well within a 30 s grace period."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.helpers.live_service import start_service, unet_reading
from tests.helpers.net import wait_until

pytestmark = pytest.mark.integration


# A few seconds of denoising each on this machine, batched together.
IN_FLIGHT = {"prompt": "a green triangle on a black background", "steps": 60}


def test_sigterm_under_load_flips_readiness_drains_and_exits_within_the_grace_period(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.mktemp("shutdown")
    # Ray's metrics every second (not every 10 s): the test sees the requests reach the UNet.
    settings = {"SD_DRAIN_TIMEOUT_S": "20", "RAY_metrics_report_interval_ms": "1000"}
    with start_service(base / "cache", settings) as running:
        answers: list[Any] = []

        def request(seed: int) -> None:
            try:
                answer = httpx.post(
                    running.url + "/v1/generate", json={**IN_FLIGHT, "seed": seed}, timeout=120
                )
                answers.append(answer.status_code)
                if answer.status_code != 200:
                    print("answer:", answer.status_code, answer.text[:300])
            except httpx.HTTPError as error:
                answers.append(repr(error))

        callers = [threading.Thread(target=request, args=(seed,)) for seed in range(3)]
        for caller in callers:
            caller.start()
        # Under way: all three in the UNet's batch or queue (not still on their way in, which a
        # slow machine can take seconds over: those would be refused as the service drains).
        assert wait_until(lambda: unet_reading(running).busy >= 3, timeout_s=60, interval_s=0.2), (
            answers
        )
        assert httpx.get(running.url + "/v2/health/ready", timeout=10).status_code == 200
        stopped_at = time.monotonic()
        running.process.send_signal(signal.SIGTERM)

        def not_ready() -> bool:
            try:
                return httpx.get(running.url + "/v2/health/ready", timeout=2).status_code != 200
            except httpx.HTTPError:
                return True

        assert wait_until(not_ready, timeout_s=5, interval_s=0.1), "still ready after SIGTERM"
        flipped_s = time.monotonic() - stopped_at
        for caller in callers:
            caller.join(timeout=60)
        running.process.wait(timeout=60)
        if answers != [200, 200, 200]:
            print("".join(running.output[-80:]))
        assert answers == [200, 200, 200], answers  # drained, not dropped
        running.process.wait(timeout=60)
        exited_s = time.monotonic() - stopped_at
        print(f"not ready after {flipped_s:.1f} s, exited after {exited_s:.1f} s")
        assert flipped_s < 2 and exited_s < 30
