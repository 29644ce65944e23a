"""The integration tier: the real service, started once per session the way `make serve` starts
it. Only what needs Ray lives here: stage wiring through handles, streaming and cancellation
across processes, Ray's gRPC proxy, signals and shutdown, Prometheus, the browser, locust and the
CLI. Everything else runs in the fast tier (tests/unit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.live_service import WEBHOOK_SECRET, RunningService, start_service


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path
) -> Iterator[RunningService]:
    """The service with the defaults `make serve` uses, on the embedded model as the session
    exported it, plus a webhook secret, and without a result cache: every request here renders
    through the stages."""
    settings = {
        "SD_MODEL": str(embedded_model_dir),
        "SD_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SD_RESULT_CACHE_SIZE": "0",
    }
    with start_service(tmp_path_factory.getbasetemp() / "model-cache", settings) as running:
        yield running
