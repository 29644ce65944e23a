"""Generate the Grafana dashboards in charts/sd-serving/dashboards/ (`make dashboards`).

The JSON files are committed (the chart ships them as ConfigMaps); a test fails when they differ
from what this script generates, and validates them against Grafana's JSON schemas.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "sd-serving" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
APP = 'application="sd-serving"'
UNETS = 'deployment=~"UNetDenoiser.*"'  # one per model when several are served


def panel(
    title: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    height: int = 8,
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
                "calcs": [],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for index, (expr, legend) in enumerate(queries)
        ],
    }


def quantiles(metric: str, selector: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le, {by}" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}{RATE})))",
            f"{legend}p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def deployment_variable() -> dict[str, Any]:
    """The app's deployments as Prometheus reports them (with several models, a UNetDenoiser-<model>
    per model)."""
    return {
        "name": "deployment",
        "label": "Deployment",
        "type": "query",
        "datasource": DATASOURCE,
        "query": f"label_values(ray_serve_deployment_replica_healthy{{{APP}}}, deployment)",
        "refresh": 2,
        "current": {"text": "UNetDenoiser", "value": "UNetDenoiser"},
    }


def custom_variable(name: str, label: str, query: str, current: str) -> dict[str, Any]:
    text = "all" if current == ".*" else current
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": query,
        "current": {"text": text, "value": current},
    }


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two panels per row, ids in order."""
    for index, item in enumerate(panels):
        item["id"] = index + 1
        item["gridPos"].update(x=(index % 2) * 12, y=(index // 2) * 8)
    return panels


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["sd-serving"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {
            "list": [
                {
                    "name": "Annotations & Alerts",
                    "builtIn": 1,
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "type": "dashboard",
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                },
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                },
                *variables,
            ]
        },
        "panels": layout(panels),
    }


def scaling() -> dict[str, Any]:
    return dashboard(
        "sd-serving-scaling",
        "sd-serving / scaling",
        [
            panel(
                "Traffic by route and status",
                [
                    (
                        f"sum by (route, status) (rate(ray_sd_requests_total{RATE}))",
                        "{{route}} {{status}}",
                    )
                ],
                unit="reqps",
            ),
            panel(
                "End-to-end latency (/v1/generate)",
                quantiles("ray_sd_request_duration_seconds", 'route="/v1/generate"'),
                unit="s",
            ),
            panel(
                "Latency p95 per stage and model",
                [
                    (
                        f"histogram_quantile(0.95, sum by (le, stage, model) "
                        f"(rate(ray_sd_stage_duration_seconds_bucket{RATE})))",
                        "{{model}} {{stage}}",
                    ),
                    (
                        f"histogram_quantile(0.95, sum by (le) (rate(ray_sd_unet_queue_seconds_bucket{RATE})))",
                        "unet queue",
                    ),
                ],
                unit="s",
            ),
            panel(
                "Replicas per deployment: healthy vs autoscaling target",
                [
                    (
                        f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{APP}}})",
                        "{{deployment}} healthy",
                    ),
                    (
                        f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{APP}}})",
                        "{{deployment}} target",
                    ),
                    (
                        'max by (deployment) (label_replace(ray_sd_max_replicas, "deployment", "$1", '
                        '"stage_deployment", "(.*)"))',
                        "{{deployment}} max",
                    ),
                ],
            ),
            panel(
                "UNet queue depth vs autoscaling target",
                [
                    ("sum by (deployment) (ray_sd_unet_queue_depth)", "{{deployment}} waiting"),
                    (
                        "sum by (deployment) (ray_sd_unet_active_requests)",
                        "{{deployment}} in the running batch",
                    ),
                    (
                        f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{APP},{UNETS}}}) * "
                        f"max by (deployment) (ray_serve_autoscaling_target_ongoing_requests{{{APP},{UNETS}}})",
                        "{{deployment}} autoscaling target (replicas x target ongoing)",
                    ),
                ],
                description="Ray Serve adds UNet replicas when ongoing requests per replica exceed "
                "the target; with several models, each model's UNet deployment has its own line.",
            ),
            panel(
                "UNet batch occupancy",
                [
                    (
                        f"sum(rate(ray_sd_unet_batch_size_sum{RATE})) / "
                        f"clamp_min(sum(rate(ray_sd_unet_batch_size_count{RATE})), 1e-9)",
                        "mean requests per iteration",
                    ),
                    (
                        f"histogram_quantile(0.95, sum by (le) (rate(ray_sd_unet_batch_size_bucket{RATE})))",
                        "p95 requests per iteration",
                    ),
                ],
            ),
            panel(
                "UNet compile time at replica start",
                [
                    (
                        "max by (deployment) (ray_sd_unet_compile_seconds)",
                        "{{deployment}} slowest replica",
                    )
                ],
                description="Seconds a UNet replica spent compiling its batch-size buckets "
                "(SD_COMPILE_MODE) before it took requests; minutes mean an empty compile cache "
                "(SD_COMPILE_CACHE_DIR), 0 means the denoiser runs eagerly.",
                unit="s",
            ),
            panel(
                "Denoising steps/s per UNet and images/s per model",
                [
                    (
                        f"sum by (deployment) (rate(ray_sd_denoising_steps_total{RATE}))",
                        "{{deployment}} steps/s",
                    ),
                    (f"sum by (model) (rate(ray_sd_images_total{RATE}))", "{{model}} images/s"),
                ],
                description="With several models, each model's UNet deployment and each model's "
                "images have their own line.",
            ),
            panel(
                "Cache hit ratio",
                [
                    (
                        f'sum by (cache) (rate(ray_sd_cache_lookups_total{{result="hit"}}{RATE})) / '
                        f"clamp_min(sum by (cache) (rate(ray_sd_cache_lookups_total{RATE})), 1e-9)",
                        "{{cache}}",
                    )
                ],
                unit="percentunit",
            ),
            panel(
                "Rejected requests by reason",
                [(f"sum by (reason) (rate(ray_sd_rejected_requests_total{RATE}))", "{{reason}}")],
                unit="reqps",
            ),
            panel(
                "Durable job queue (with Redis)",
                [
                    ("max(ray_sd_jobs_queued)", "waiting or running"),
                    (
                        f"sum(increase(ray_sd_jobs_taken_over_total{RATE}))",
                        "taken over (replica stopped)",
                    ),
                    (f"sum(increase(ray_sd_jobs_dead_lettered_total{RATE}))", "dead-lettered"),
                    (
                        f"sum(increase(ray_sd_jobs_resumed_total{RATE}))",
                        "resumed from a checkpoint",
                    ),
                    (f"sum(increase(ray_sd_job_steps_redone_total{RATE}))", "steps redone"),
                ],
                description="Jobs in the Redis queue; jobs another replica ran again because the "
                "one running them stopped (a deploy or a crash), those of them that resumed from "
                "a denoising checkpoint, and the steps they ran again (at most "
                "SD_JOB_CHECKPOINT_STEPS - 1 per image when checkpoints keep up); jobs that "
                "failed after SD_JOB_MAX_ATTEMPTS lost attempts (alert SdServingJobsDeadLettered).",
            ),
            panel(
                "Fair sharing",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, client) "
                        f"(rate(ray_sd_client_request_seconds_bucket{RATE})))",
                        "p95 {{client}}",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (le, priority) "
                        f"(rate(ray_sd_unet_queue_seconds_bucket{RATE})))",
                        "UNet wait p95 {{priority}}",
                    ),
                    ("sum(ray_sd_unet_waiting_clients)", "clients waiting"),
                    ("sum by (priority) (ray_sd_unet_queued_by_priority)", "waiting {{priority}}"),
                    (f"sum(increase(ray_sd_unet_pushed_out_total{RATE}))", "pushed out"),
                    (
                        f"sum(increase(ray_sd_unet_refused_past_deadline_total{RATE}))",
                        "refused: past deadline",
                    ),
                ],
                unit="s",
                description="Latency by client (API key name; anonymous without one) and the "
                "UNet wait by priority; clients and requests waiting by priority; waiting requests "
                "refused to make room for other clients (alert SdServingUNetQueueHogged); requests refused "
                "because the work ahead would end after their deadline.",
            ),
            panel(
                "Shared store and job checkpoints",
                [
                    ("min(ray_sd_store_up)", "store up (min over ingress replicas)"),
                    ("max(ray_sd_jobs_oldest_waiting_seconds)", "oldest waiting job (s)"),
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(ray_sd_job_checkpoint_seconds_bucket{RATE})))",
                        "checkpoint save p95 (s)",
                    ),
                    (
                        f"sum(increase(ray_sd_job_checkpoint_failures_total{RATE}))",
                        "checkpoint saves failed",
                    ),
                ],
                description="Whether every ingress replica reaches the shared store (alert "
                "SdServingStoreDown); how long the oldest untaken job has waited (alert "
                "SdServingJobQueueStalled); how long a denoising checkpoint takes to save and "
                "how many could not be (alert SdServingJobCheckpointsFailing).",
            ),
            panel(
                "LoRA adapters",
                [
                    (
                        f"sum by (stage, result) (rate(ray_sd_lora_lookups_total{RATE}))",
                        "{{stage}} {{result}}/s",
                    ),
                    (
                        f"sum by (stage) (rate(ray_sd_lora_evictions_total{RATE}))",
                        "{{stage}} evictions/s",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (le, stage) "
                        f"(rate(ray_sd_lora_load_seconds_bucket{RATE})))",
                        "{{stage}} load p95 (s)",
                    ),
                    ("max by (stage) (ray_sd_lora_resident)", "{{stage}} resident (max/replica)"),
                    (
                        f"topk(5, sum by (lora) (rate(ray_sd_lora_requests_total{RATE})))",
                        "{{lora}} requests/s",
                    ),
                ],
                description="Adapters a request needed that were resident (hit) or loaded from "
                "SD_LORA_DIR (miss), adapters unloaded to make room, load time, how many a replica "
                "holds, and the five most requested adapters. Misses that keep pace with hits mean "
                "the resident bounds (SD_UNET__MAX_RESIDENT_LORAS, …_BYTES) are too small for the "
                "adapters in use (alert SdServingLoraThrashing).",
            ),
            panel(
                "Model versions: generations by outcome",
                [
                    (
                        "sum by (model, version, outcome) "
                        f"(rate(ray_sd_model_requests_total{RATE}))",
                        "{{model}}@{{version}} {{outcome}}/s",
                    ),
                ],
                description="Each model version's generations by outcome (ok, or the error's "
                "reason): a challenger on canary beside its champion. `sd-serving promote` reads "
                "the same series (alert SdServingModelVersionFailing).",
            ),
            panel(
                "Model versions: p95 generation time",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, model, version) "
                        f"(rate(ray_sd_model_request_seconds_bucket{RATE})))",
                        "{{model}}@{{version}} p95",
                    ),
                ],
                unit="s",
                description="p95 time to answer a generation per model version: the challenger's "
                "against the champion's, as `sd-serving promote` compares them.",
            ),
            panel(
                "Feedback: ratings per model version",
                [
                    (
                        "sum by (model, version, rating) (increase(ray_sd_feedback_total[1h]))",
                        "{{model}}@{{version}} rated {{rating}}",
                    ),
                    (
                        "sum by (model, version) "
                        '(increase(ray_sd_feedback_total{corrected="true"}[1h]))',
                        "{{model}}@{{version}} corrected captions",
                    ),
                ],
                description="Ratings clients sent in the last hour (POST /v1/feedback) on each "
                "version's images, 1 (wrong) to 5, and corrected captions: a challenger's against "
                "its champion's. `sd-serving export-feedback` turns them into a tuning batch "
                "(alert SdServingModelVersionRatedLow).",
            ),
            panel(
                "GPU utilisation (DCGM)",
                [("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}")],
                unit="percent",
                description="Needs NVIDIA's dcgm-exporter in the cluster.",
            ),
            panel(
                "Pods per node pool",
                [
                    (
                        'count by (label_sd_serving_pool) (kube_pod_info{namespace=~"$namespace"} '
                        "* on (node) group_left (label_sd_serving_pool) kube_node_labels)",
                        "{{label_sd_serving_pool}}",
                    )
                ],
                description="Needs kube-state-metrics exporting the sd-serving/pool node label.",
            ),
            panel(
                "HPA desired vs current replicas",
                [
                    (
                        "sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas"
                        '{namespace=~"$namespace"})',
                        "{{horizontalpodautoscaler}} desired",
                    ),
                    (
                        "sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas"
                        '{namespace=~"$namespace"})',
                        "{{horizontalpodautoscaler}} current",
                    ),
                ],
                description="Needs kube-state-metrics.",
            ),
        ],
        [
            custom_variable("namespace", "Namespace", ".*", ".*"),
        ],
    )


def drilldown() -> dict[str, Any]:
    deployment = 'deployment="$deployment"'
    return dashboard(
        "sd-serving-stage",
        "sd-serving / stage drill-down",
        [
            panel(
                "Stage time seen from the ingress ($stage)",
                quantiles("ray_sd_stage_duration_seconds", 'stage="$stage"'),
                unit="s",
            ),
            panel(
                "Replica processing latency ($deployment)",
                quantiles(
                    "ray_serve_deployment_processing_latency_ms", f"{APP},{deployment}", "replica"
                ),
                unit="ms",
            ),
            panel(
                "Ongoing requests at replicas ($deployment)",
                [
                    (
                        f"sum by (replica) (ray_serve_replica_processing_queries{{{APP},{deployment}}})",
                        "{{replica}}",
                    )
                ],
            ),
            panel(
                "Queued in the router ($deployment)",
                [(f"sum(ray_serve_deployment_queued_queries{{{APP},{deployment}}})", "queued")],
            ),
            panel(
                "Request batching ($deployment)",
                [
                    (
                        f"sum(rate(ray_serve_actual_batch_size_sum{{{APP},{deployment}}}{RATE})) / "
                        f"clamp_min(sum(rate(ray_serve_actual_batch_size_count{{{APP},{deployment}}}{RATE})), 1e-9)",
                        "mean @serve.batch size",
                    )
                ],
            ),
            panel(
                "Requests handled ($deployment)",
                [
                    (
                        f"sum by (replica) (rate(ray_serve_deployment_request_counter_total{{{APP},{deployment}}}{RATE}))",
                        "{{replica}}",
                    )
                ],
                unit="reqps",
            ),
        ],
        [
            custom_variable("stage", "Stage", "text_encoder,unet,vae,encode", "unet"),
            deployment_variable(),
        ],
    )


DASHBOARDS = {"sd-serving-scaling.json": scaling, "sd-serving-stage.json": drilldown}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python scripts/dashboards.py --write")
    for stale in OUT.glob("*.json"):
        if stale.name not in DASHBOARDS:
            stale.unlink()
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name))
        print(f"wrote {OUT / name}")
