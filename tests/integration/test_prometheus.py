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
import torch
import yaml
from safetensors.torch import save_file

from serving.cli.main import main
from serving.models.loras import LoraLibrary
from serving.training.registry import CHALLENGER, CHAMPION
from tests.helpers.live_service import DEFAULT_MODEL, RunningService
from tests.helpers.net import free_port, wait_until
from tests.helpers.registry import figures, registry_with

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
            answer = client.post(
                "/v1/generate", json={"prompt": "metrics", "seed": seed, "steps": 3}
            )
            assert answer.status_code == 200
        rating = {"image": answer.json()["images"][0]["digest"], "rating": 2}
        assert client.post("/v1/feedback", json=rating).status_code == 201
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
            and query(prometheus, "ray_sd_feedback_total")["result"]
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


# -- the promotion gate reads each version's live signals from this Prometheus


def version_traffic(service: RunningService, prometheus: str, version: str, status: int) -> None:
    """Six generations of a version of the default model (each answered `status`), all of them
    scraped: one first, so the series exists before the window's increase counts the rest."""
    body = {"model": f"{DEFAULT_MODEL}@{version}", "prompt": "promotion", "steps": 2}
    selector = f'model="{DEFAULT_MODEL}",version="{version}"'
    with service.client() as client:
        sent = 0
        for count in (1, 5):
            for _ in range(count):
                answer = client.post("/v1/generate", json=body)
                assert answer.status_code == status, answer.text
            sent += count

            def scraped(expected: int = sent) -> bool:
                result = query(prometheus, f"sum(ray_sd_model_requests_total{{{selector}}})")
                return bool(result["result"]) and float(result["result"][0]["value"][1]) >= expected

            assert wait_until(scraped, timeout_s=60, interval_s=0.5), f"version {version} unseen"


def test_promotion_moves_the_champion_only_when_the_challenger_serves_well_live(
    service: RunningService,
    prometheus: str,
    lora_library: LoraLibrary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Versions 2 and 3 of the default model serve beside 1 (tests/integration/conftest.py);
    the registry's figures pass for both, so Prometheus decides: 2 answers well and is
    promoted; 3's adapter is refused by the UNet replica on every request, and its promotion is
    refused naming the error ratio, the champion left at 2."""
    registry = registry_with(
        tmp_path, "demo", figures(world=0.99), figures(world=0.99), figures(world=0.99)
    )
    gate = [
        "--registry-uri", registry.uri, "--prometheus-url", prometheus,
        "--served-model", DEFAULT_MODEL, "--window", "10m", "--min-requests", "3",
        "--max-latency-ratio", "50",  # a few requests on coarse buckets: latency is unit-tested
    ]  # fmt: skip
    version_traffic(service, prometheus, "1", 200)
    version_traffic(service, prometheus, "2", 200)
    assert main(["promote", "demo", "--challenger", "2", *gate]) == 0, capsys.readouterr().err
    assert "promoted: demo version 2 is the champion (was 1)" in capsys.readouterr().out
    assert registry.get("demo", CHAMPION).version == "2"
    assert registry.get("demo", CHALLENGER).version == "3"  # another version's canary stays

    assert lora_library.directory is not None
    refused_by_the_unet = lora_library.directory / "failing-v3.safetensors"
    prefix = "lora_unet_input_blocks_1_1_proj_in"  # checked by the replica's loader
    save_file(
        {
            f"{prefix}.lora_down.weight": torch.zeros(4, 999),
            f"{prefix}.lora_up.weight": torch.zeros(32, 4),
            f"{prefix}.alpha": torch.tensor(4.0),
        },
        str(refused_by_the_unet),
    )
    try:
        version_traffic(service, prometheus, "3", 422)
    finally:
        refused_by_the_unet.unlink()  # the other tests list only adapters that work
    assert main(["promote", "demo", *gate]) == 1
    err = capsys.readouterr().err
    assert "refused: error ratio regressed: 100.0 % of the challenger's generations failed" in err
    assert "champion stays version 2" in err
    assert registry.get("demo", CHAMPION).version == "2"
