"""A short locust smoke run against the real service: it passes its SLOs and writes its reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.live_service import DEFAULT_MODEL, SDXL_MODEL, RunningService

pytestmark = pytest.mark.integration


def test_smoke_profile_meets_its_slos(service: RunningService, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.run",
            "--profile",
            "smoke",
            "--url",
            service.url,
            "--out",
            str(tmp_path),
            "--grpc-target",
            service.grpc_target,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SLOs met in profile smoke" in result.stdout + result.stderr
    stats = (tmp_path / "smoke_stats.csv").read_text()
    for name in (
        "/v1/generate (",
        "/v1/generate edit (",
        "/v2/models/",
        "ModelInfer (",
        "job to result (",
    ):
        assert name in stats, f"no {name} requests in the smoke run"
    for model in (DEFAULT_MODEL, SDXL_MODEL):  # the load is spread over the served models
        assert f"({model})" in stats or f"/{model}" in stats, f"no requests for {model}"
    assert (tmp_path / "smoke.html").stat().st_size > 1000
