"""Every metric the service exports: names, help, tags and buckets, defined once.

Metrics are recorded with `ray.serve.metrics` inside the replicas and exported by Ray's metrics
agent on `SD_METRICS_PORT` (`/metrics`), beside Ray Serve's own series. Ray prefixes every name
with `ray_` and counters end in `_total`, so `sd_requests` below is scraped as
`ray_sd_requests_total`. Ray Serve adds the `application`, `deployment` and `replica` tags.
Replica counts, ongoing requests and autoscaling targets are Ray Serve's own series
(`ray_serve_*`); they are not duplicated here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.serve import metrics as serve_metrics

from serving.errors import ServingError

# Seconds; resolves 50 ms (a cached answer) to 120 s (a large image under load).
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]
QUEUE_BUCKETS_S = [0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]
BATCH_BUCKETS = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0]

# name -> (help, exported series) for the README and the dashboard/alert checks.
EXPORTED: dict[str, str] = {
    "ray_sd_requests_total": "requests by route, protocol and status code",
    "ray_sd_request_duration_seconds": "end-to-end latency at the ingress, by route and protocol",
    "ray_sd_stage_duration_seconds": "time per stage seen from the ingress: text_encoder, unet, "
    "vae, encode",
    "ray_sd_unet_queue_seconds": "time a request waited for a UNet batch slot",
    "ray_sd_unet_active_requests": "requests in the UNet's running batch",
    "ray_sd_unet_queue_depth": "requests waiting for a UNet batch slot",
    "ray_sd_unet_batch_size": "requests per UNet iteration",
    "ray_sd_denoising_steps_total": "denoising steps completed (rate = steps/s)",
    "ray_sd_cache_lookups_total": "cache lookups by cache (embedding) and result (hit/miss)",
    "ray_sd_images_total": "images produced",
    "ray_sd_rejected_requests_total": "requests refused, by reason (e.g. invalid_argument)",
    "ray_sd_max_replicas": "configured max_replicas per stage (tag stage_deployment), for alerts",
}


def _tags(*keys: str) -> Any:
    # Ray annotates tag_keys as Tuple[str] (one element) though it takes any number.
    return keys


@dataclass
class IngressMetrics:
    requests: serve_metrics.Counter
    request_seconds: serve_metrics.Histogram
    stage_seconds: serve_metrics.Histogram
    images: serve_metrics.Counter
    rejected: serve_metrics.Counter

    def record_request(self, route: str, protocol: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "protocol": protocol, "status": str(status)})
        self.request_seconds.observe(seconds, tags={"route": route, "protocol": protocol})

    def record_result(self, timings_ms: dict[str, float], images: int) -> None:
        for stage in ("text_encoder", "unet", "vae", "encode"):
            if stage in timings_ms:
                self.stage_seconds.observe(timings_ms[stage] / 1000, tags={"stage": stage})
        if images:  # Ray's counters refuse an increment of 0 (a result-cache hit)
            self.images.inc(images)

    def record_rejection(self, error: ServingError) -> None:
        self.rejected.inc(tags={"reason": error.reason.value})

    @classmethod
    def create(cls) -> IngressMetrics:
        return cls(
            requests=serve_metrics.Counter(
                "sd_requests",
                description=EXPORTED["ray_sd_requests_total"],
                tag_keys=_tags("route", "protocol", "status"),
            ),
            request_seconds=serve_metrics.Histogram(
                "sd_request_duration_seconds",
                description=EXPORTED["ray_sd_request_duration_seconds"],
                boundaries=LATENCY_BUCKETS_S,
                tag_keys=_tags("route", "protocol"),
            ),
            stage_seconds=serve_metrics.Histogram(
                "sd_stage_duration_seconds",
                description=EXPORTED["ray_sd_stage_duration_seconds"],
                boundaries=LATENCY_BUCKETS_S,
                tag_keys=("stage",),
            ),
            images=serve_metrics.Counter("sd_images", description=EXPORTED["ray_sd_images_total"]),
            rejected=serve_metrics.Counter(
                "sd_rejected_requests",
                description=EXPORTED["ray_sd_rejected_requests_total"],
                tag_keys=("reason",),
            ),
        )


@dataclass
class UNetMetrics:
    active: serve_metrics.Gauge
    queue_depth: serve_metrics.Gauge
    batch_size: serve_metrics.Histogram
    steps: serve_metrics.Counter
    queue_seconds: serve_metrics.Histogram

    @classmethod
    def create(cls) -> UNetMetrics:
        return cls(
            active=serve_metrics.Gauge(
                "sd_unet_active_requests", description=EXPORTED["ray_sd_unet_active_requests"]
            ),
            queue_depth=serve_metrics.Gauge(
                "sd_unet_queue_depth", description=EXPORTED["ray_sd_unet_queue_depth"]
            ),
            batch_size=serve_metrics.Histogram(
                "sd_unet_batch_size",
                description=EXPORTED["ray_sd_unet_batch_size"],
                boundaries=BATCH_BUCKETS,
            ),
            steps=serve_metrics.Counter(
                "sd_denoising_steps", description=EXPORTED["ray_sd_denoising_steps_total"]
            ),
            queue_seconds=serve_metrics.Histogram(
                "sd_unet_queue_seconds",
                description=EXPORTED["ray_sd_unet_queue_seconds"],
                boundaries=QUEUE_BUCKETS_S,
            ),
        )


def max_replicas_publisher(max_replicas: dict[str, int]) -> Callable[[], None]:
    """Autoscaling ceilings as a series, so alerts can tell 'at max replicas' from 'scaling'."""
    gauge = serve_metrics.Gauge(
        "sd_max_replicas",
        description=EXPORTED["ray_sd_max_replicas"],
        tag_keys=("stage_deployment",),
    )

    def publish() -> None:
        for deployment, value in max_replicas.items():
            gauge.set(value, tags={"stage_deployment": deployment})

    return publish


def cache_lookups() -> serve_metrics.Counter:
    return serve_metrics.Counter(
        "sd_cache_lookups",
        description=EXPORTED["ray_sd_cache_lookups_total"],
        tag_keys=_tags("cache", "result"),
    )
