"""A real Prometheus scrapes the running service: the series the dashboards and alerts use carry
data after a few requests, and Prometheus accepts every dashboard query and alert expression."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.live_service import RunningService
from tests.helpers.net import free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "sd-serving" / "files" / "alerts.yaml"
DASHBOARDS = sorted((ROOT / "charts" / "sd-serving" / "dashboards").glob("*.json"))
# Dashboard variables as Grafana would fill them in.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$stage": "unet",
    "$deployment": "UNetDenoiser",
    "$namespace": ".*",
}
PROJECT_SERIES = re.compile(r"\b(ray_sd_\w+|ray_serve_\w+)")
# Series of the durable job queue exist only with Redis: this session's service has none; the
# restart test (test_durable_state.py) reads them from its service's /metrics.
ONLY_WITH_REDIS = {
    "ray_sd_jobs_queued",
    "ray_sd_jobs_taken_over_total",
    "ray_sd_jobs_dead_lettered_total",
    "ray_sd_jobs_resumed_total",
    "ray_sd_job_steps_redone_total",
    "ray_sd_jobs_oldest_waiting_seconds",
    "ray_sd_job_checkpoint_seconds_bucket",
    "ray_sd_job_checkpoint_failures_total",
}


# Counted only when a flood fills the UNet's waiting room or outruns its pace
# (tests/unit/engine/test_engine.py checks they are counted); Ray exports a counter only once it
# has been incremented.
ONLY_UNDER_A_FLOOD = {"ray_sd_unet_pushed_out_total", "ray_sd_unet_refused_past_deadline_total"}


def dashboard_queries() -> list[str]:
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append(expr)
    return queries


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def prometheus(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: `make tools` installs Debian's prometheus package"
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "sd-serving",
                "static_configs": [{"targets": [f"127.0.0.1:{service.metrics_port}"]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(ready, timeout_s=60, interval_s=0.2), "Prometheus did not start"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expr: str) -> dict[str, Any]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    body = answer.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    return body["data"]


@pytest.fixture(scope="module")
def traffic(service: RunningService, prometheus: str) -> None:
    with service.client() as client:
        for seed in (1, 2):  # the same prompt twice: an embedding-cache hit
            assert (
                client.post(
                    "/v1/generate", json={"prompt": "metrics", "seed": seed, "steps": 3}
                ).status_code
                == 200
            )
        assert client.post("/v1/generate", json={"prompt": "x", "steps": 0}).status_code == 422
        for name in ("style-a", "style-b", "style.c"):  # three adapters, two resident: evictions
            body = {"prompt": "metrics", "steps": 2, "loras": [{"name": name}]}
            assert client.post("/v1/generate", json=body).status_code == 200
    # Ray's metrics agent exports every 0.5 s here; wait until the last of them is scraped.
    assert wait_until(
        lambda: bool(
            query(prometheus, "ray_sd_rejected_requests_total")["result"]
            and query(prometheus, 'ray_sd_cache_lookups_total{result="hit"}')["result"]
            and query(prometheus, "ray_sd_lora_evictions_total")["result"]
        ),
        timeout_s=120,
        interval_s=0.5,
    ), "the service's series never reached Prometheus"


def test_every_project_series_in_dashboards_and_alerts_has_data(
    prometheus: str, traffic: None
) -> None:
    names = set()
    for expr in dashboard_queries() + alert_expressions():
        names.update(PROJECT_SERIES.findall(expr))
    assert len(names) >= 15 and names >= ONLY_WITH_REDIS | ONLY_UNDER_A_FLOOD
    names -= ONLY_WITH_REDIS | ONLY_UNDER_A_FLOOD
    missing = [name for name in sorted(names) if not query(prometheus, name)["result"]]
    assert not missing, f"series without data after load: {missing}"


def test_requests_are_counted_by_route_and_status(prometheus: str, traffic: None) -> None:
    result = query(prometheus, "sum by (route, status) (ray_sd_requests_total)")["result"]
    counted = {(r["metric"]["route"], r["metric"]["status"]): float(r["value"][1]) for r in result}
    assert counted[("/v1/generate", "200")] >= 2
    assert counted[("/v1/generate", "422")] >= 1
    rejected = query(prometheus, "sum by (reason) (ray_sd_rejected_requests_total)")["result"]
    assert {r["metric"]["reason"] for r in rejected} >= {"invalid_argument"}


def test_prometheus_accepts_every_dashboard_query_and_alert_expression(prometheus: str) -> None:
    expressions = dashboard_queries() + alert_expressions()
    assert len(expressions) >= 39
    refused = {}
    for expr in expressions:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
        if answer.json()["status"] != "success":
            refused[expr] = answer.json().get("error")
    assert not refused, refused


def test_alert_rules_load_and_evaluate(prometheus: str, traffic: None) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=30).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(alert_expressions())
    assert all(rule["health"] in {"ok", "unknown"} for rule in rules), rules
