"""Every metric the service exports: names, help, tags and buckets, defined once.

Code records through a `Meter`, so nothing here imports Ray. In the Ray app the meter is
`ray.serve.metrics` (serving/deployments/_replica.py): Ray's metrics agent exports the series on
`SD_METRICS_PORT` (`/metrics`) beside Ray Serve's own. Ray prefixes every name with `ray_` and
counters end in `_total`, so `sd_requests` below is scraped as `ray_sd_requests_total`; Ray Serve
adds the `application`, `deployment` and `replica` tags. Replica counts, ongoing requests and
autoscaling targets are Ray Serve's own series (`ray_serve_*`); they are not duplicated here.
In-process (tests, one-process runs) `MemoryMeter` keeps the values for reading back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from serving.errors import ServingError

# Seconds; resolves 50 ms (a cached answer) to 120 s (a large image under load).
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]
QUEUE_BUCKETS_S = [0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]
BATCH_BUCKETS = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0]
STAGES = ("text_encoder", "vae_encode", "unet", "vae", "encode")  # vae_encode: edits only

# Exported series -> help, for the README and the dashboard/alert checks.
EXPORTED: dict[str, str] = {
    "ray_sd_requests_total": "requests by route, protocol and status code",
    "ray_sd_request_duration_seconds": "end-to-end latency at the ingress, by route and protocol",
    "ray_sd_stage_duration_seconds": "time per stage seen from the ingress: text_encoder, "
    "vae_encode (image-to-image), unet, vae, encode",
    "ray_sd_unet_queue_seconds": "time a request waited for a UNet batch slot, by priority "
    "(interactive, batch)",
    "ray_sd_unet_queued_by_priority": "requests waiting for a UNet batch slot, by priority",
    "ray_sd_unet_waiting_clients": "distinct clients (API keys, else addresses) with requests "
    "waiting for a UNet batch slot",
    "ray_sd_unet_pushed_out_total": "waiting requests refused (503) to make room for a client "
    "with less waiting per weight, or for an interactive request",
    "ray_sd_unet_refused_past_deadline_total": "requests refused (503) because the work ahead "
    "of them would end after their deadline",
    "ray_sd_client_request_seconds": "time to answer a generation, by client (the API key's "
    "name; `anonymous` without one) and priority",
    "ray_sd_unet_active_requests": "requests in the UNet's running batch",
    "ray_sd_unet_queue_depth": "requests waiting for a UNet batch slot",
    "ray_sd_unet_batch_size": "requests per UNet iteration",
    "ray_sd_unet_compile_seconds": "seconds a UNet replica spent compiling its batch-size buckets "
    "at start (0: not compiled)",
    "ray_sd_denoising_steps_total": "denoising steps completed (rate = steps/s)",
    "ray_sd_cache_lookups_total": "cache lookups by cache (embedding, result) and result "
    "(hit/miss)",
    "ray_sd_images_total": "images produced",
    "ray_sd_lora_lookups_total": "LoRA adapters a request needed, by stage (unet, "
    "text_encoder) and result: hit (resident) or miss (loaded from SD_LORA_DIR)",
    "ray_sd_lora_load_seconds": "time to load one LoRA adapter into a replica, by stage",
    "ray_sd_lora_evictions_total": "resident LoRA adapters unloaded to make room, by stage",
    "ray_sd_lora_resident": "LoRA adapters loaded in a replica, by stage",
    "ray_sd_lora_resident_bytes": "bytes of LoRA files loaded in a replica, by stage",
    "ray_sd_lora_requests_total": "requests applying a LoRA adapter, by adapter",
    "ray_sd_model_requests_total": "generations by model, version (`none`: unversioned) and "
    "outcome: ok, or the error's reason (e.g. deadline_exceeded, internal); what a promotion "
    "compares",
    "ray_sd_model_request_seconds": "time to answer a generation, by model and version",
    "ray_sd_feedback_total": "ratings clients sent on images (POST /v1/feedback), by the model "
    "and version that made the image, rating (1-5) and whether a corrected caption came with it",
    "ray_sd_rejected_requests_total": "requests refused, by reason (e.g. invalid_argument)",
    "ray_sd_max_replicas": "configured max_replicas per stage (tag stage_deployment), for alerts",
    "ray_sd_jobs_queued": "with Redis: jobs in the durable queue, waiting or running (each "
    "ingress replica reports the whole queue)",
    "ray_sd_jobs_taken_over_total": "with Redis: jobs run again because the replica running them "
    "stopped",
    "ray_sd_jobs_dead_lettered_total": "with Redis: jobs failed after SD_JOB_MAX_ATTEMPTS "
    "attempts lost without progress (kept in sd:v1:jobs:dead)",
    "ray_sd_jobs_resumed_total": "with Redis: jobs taken over that resumed at least one image "
    "from its denoising checkpoint",
    "ray_sd_job_steps_redone_total": "with Redis: denoising steps a taken-over job ran again "
    "(those after its last checkpoint, or all of them without one)",
    "ray_sd_jobs_oldest_waiting_seconds": "with Redis: age of the oldest job no worker has taken "
    "yet (0: none waiting)",
    "ray_sd_job_checkpoint_seconds": "with Redis: time to save one denoising checkpoint",
    "ray_sd_job_checkpoint_failures_total": "with Redis: checkpoints that could not be saved (the "
    "job goes on; a takeover would redo more steps)",
    "ray_sd_store_up": "1 when the shared store (Redis, or the in-memory ResultStore) answers the "
    "ingress's readiness probe, else 0",
}

Tags = dict[str, str]


class Counter(Protocol):
    def inc(self, value: float = ..., tags: Tags = ...) -> Any: ...


class Gauge(Protocol):
    def set(self, value: float, tags: Tags = ...) -> Any: ...


class Histogram(Protocol):
    def observe(self, value: float, tags: Tags = ...) -> Any: ...


class Meter(Protocol):
    """Makes the series; `name` is the unprefixed name (`sd_requests`)."""

    def counter(self, name: str, description: str, tag_keys: Sequence[str] = ()) -> Counter: ...

    def gauge(self, name: str, description: str, tag_keys: Sequence[str] = ()) -> Gauge: ...

    def histogram(
        self, name: str, description: str, boundaries: list[float], tag_keys: Sequence[str] = ()
    ) -> Histogram: ...


def _key(tags: Tags | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((tags or {}).items()))


@dataclass
class _MemorySeries:
    values: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)
    observations: dict[tuple[tuple[str, str], ...], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def inc(self, value: float = 1.0, tags: Tags | None = None) -> None:
        if not value > 0:  # as Ray's counters: what passes here passes in the app
            raise ValueError(f"value must be >0, got {value}")
        self.values[_key(tags)] = self.values.get(_key(tags), 0.0) + value

    def set(self, value: float, tags: Tags | None = None) -> None:
        self.values[_key(tags)] = value

    def observe(self, value: float, tags: Tags | None = None) -> None:
        self.observations[_key(tags)].append(value)


class MemoryMeter:
    """Series kept in memory: `value(name, **tags)` reads a counter or gauge back."""

    def __init__(self) -> None:
        self._series: dict[str, _MemorySeries] = defaultdict(_MemorySeries)

    def counter(self, name: str, description: str, tag_keys: Sequence[str] = ()) -> Counter:
        return self._series[name]

    def gauge(self, name: str, description: str, tag_keys: Sequence[str] = ()) -> Gauge:
        return self._series[name]

    def histogram(
        self, name: str, description: str, boundaries: list[float], tag_keys: Sequence[str] = ()
    ) -> Histogram:
        return self._series[name]

    def value(self, name: str, **tags: str) -> float:
        return self._series[name].values.get(_key(tags), 0.0)

    def observations(self, name: str, **tags: str) -> list[float]:
        return list(self._series[name].observations.get(_key(tags), []))


@dataclass
class IngressMetrics:
    requests: Counter
    request_seconds: Histogram
    stage_seconds: Histogram
    images: Counter
    rejected: Counter
    lookups: Counter
    jobs_queued: Gauge
    jobs_taken_over: Counter
    jobs_dead_lettered: Counter
    jobs_resumed: Counter
    job_steps_redone: Counter
    jobs_oldest_waiting: Gauge
    checkpoint_seconds: Histogram
    checkpoint_failures: Counter
    store_up: Gauge
    client_request_seconds: Histogram
    lora_requests: Counter
    model_requests: Counter
    model_request_seconds: Histogram
    feedback: Counter

    def record_request(self, route: str, protocol: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "protocol": protocol, "status": str(status)})
        self.request_seconds.observe(seconds, tags={"route": route, "protocol": protocol})

    def record_result(self, model: str, timings_ms: dict[str, float], images: int) -> None:
        for stage in STAGES:
            if stage in timings_ms:
                tags = {"stage": stage, "model": model}
                self.stage_seconds.observe(timings_ms[stage] / 1000, tags=tags)
        if images:  # Ray's counters refuse an increment of 0 (a result-cache hit)
            self.images.inc(images, tags={"model": model})

    def record_generation(
        self, model: str, version: str | None, outcome: str, seconds: float | None = None
    ) -> None:
        """One generation's outcome (`ok` or an error's reason), and its time when it ended well."""
        tags = {"model": model, "version": version or "none"}
        self.model_requests.inc(tags={**tags, "outcome": outcome})
        if seconds is not None:
            self.model_request_seconds.observe(seconds, tags=tags)

    def record_feedback(
        self, model: str, version: str | None, rating: int, corrected: bool
    ) -> None:
        tags = {"model": model, "version": version or "none", "rating": str(rating)}
        self.feedback.inc(tags={**tags, "corrected": str(corrected).lower()})

    def record_adapters(self, names: list[str]) -> None:
        for name in names:
            self.lora_requests.inc(tags={"lora": name})

    def record_rejection(self, error: ServingError) -> None:
        self.rejected.inc(tags={"reason": error.reason.value})

    def record_result_lookup(self, hit: bool) -> None:
        self.lookups.inc(tags={"cache": "result", "result": "hit" if hit else "miss"})

    @classmethod
    def create(cls, meter: Meter) -> IngressMetrics:
        return cls(
            requests=meter.counter(
                "sd_requests", EXPORTED["ray_sd_requests_total"], ("route", "protocol", "status")
            ),
            request_seconds=meter.histogram(
                "sd_request_duration_seconds",
                EXPORTED["ray_sd_request_duration_seconds"],
                LATENCY_BUCKETS_S,
                ("route", "protocol"),
            ),
            stage_seconds=meter.histogram(
                "sd_stage_duration_seconds",
                EXPORTED["ray_sd_stage_duration_seconds"],
                LATENCY_BUCKETS_S,
                ("stage", "model"),
            ),
            images=meter.counter("sd_images", EXPORTED["ray_sd_images_total"], ("model",)),
            rejected=meter.counter(
                "sd_rejected_requests", EXPORTED["ray_sd_rejected_requests_total"], ("reason",)
            ),
            lookups=cache_lookups(meter),
            jobs_queued=meter.gauge("sd_jobs_queued", EXPORTED["ray_sd_jobs_queued"]),
            jobs_taken_over=meter.counter(
                "sd_jobs_taken_over", EXPORTED["ray_sd_jobs_taken_over_total"]
            ),
            jobs_dead_lettered=meter.counter(
                "sd_jobs_dead_lettered", EXPORTED["ray_sd_jobs_dead_lettered_total"]
            ),
            jobs_resumed=meter.counter("sd_jobs_resumed", EXPORTED["ray_sd_jobs_resumed_total"]),
            job_steps_redone=meter.counter(
                "sd_job_steps_redone", EXPORTED["ray_sd_job_steps_redone_total"]
            ),
            jobs_oldest_waiting=meter.gauge(
                "sd_jobs_oldest_waiting_seconds", EXPORTED["ray_sd_jobs_oldest_waiting_seconds"]
            ),
            checkpoint_seconds=meter.histogram(
                "sd_job_checkpoint_seconds",
                EXPORTED["ray_sd_job_checkpoint_seconds"],
                QUEUE_BUCKETS_S,
            ),
            checkpoint_failures=meter.counter(
                "sd_job_checkpoint_failures", EXPORTED["ray_sd_job_checkpoint_failures_total"]
            ),
            store_up=meter.gauge("sd_store_up", EXPORTED["ray_sd_store_up"]),
            client_request_seconds=meter.histogram(
                "sd_client_request_seconds",
                EXPORTED["ray_sd_client_request_seconds"],
                LATENCY_BUCKETS_S,
                ("client", "priority"),
            ),
            lora_requests=meter.counter(
                "sd_lora_requests", EXPORTED["ray_sd_lora_requests_total"], ("lora",)
            ),
            model_requests=meter.counter(
                "sd_model_requests",
                EXPORTED["ray_sd_model_requests_total"],
                ("model", "version", "outcome"),
            ),
            model_request_seconds=meter.histogram(
                "sd_model_request_seconds",
                EXPORTED["ray_sd_model_request_seconds"],
                LATENCY_BUCKETS_S,
                ("model", "version"),
            ),
            feedback=meter.counter(
                "sd_feedback",
                EXPORTED["ray_sd_feedback_total"],
                ("model", "version", "rating", "corrected"),
            ),
        )


@dataclass
class UNetMetrics:
    active: Gauge
    queue_depth: Gauge
    batch_size: Histogram
    steps: Counter
    queue_seconds: Histogram
    compile_seconds: Gauge
    queued_by_priority: Gauge
    waiting_clients: Gauge
    pushed_out: Counter
    refused_past_deadline: Counter

    def record_load(
        self, active: int, queued: int, by_priority: dict[str, int], clients: int
    ) -> None:
        self.active.set(active)
        self.queue_depth.set(queued)
        for priority, depth in by_priority.items():
            self.queued_by_priority.set(depth, tags={"priority": priority})
        self.waiting_clients.set(clients)

    @classmethod
    def create(cls, meter: Meter) -> UNetMetrics:
        return cls(
            active=meter.gauge("sd_unet_active_requests", EXPORTED["ray_sd_unet_active_requests"]),
            queue_depth=meter.gauge("sd_unet_queue_depth", EXPORTED["ray_sd_unet_queue_depth"]),
            batch_size=meter.histogram(
                "sd_unet_batch_size", EXPORTED["ray_sd_unet_batch_size"], BATCH_BUCKETS
            ),
            steps=meter.counter("sd_denoising_steps", EXPORTED["ray_sd_denoising_steps_total"]),
            queue_seconds=meter.histogram(
                "sd_unet_queue_seconds",
                EXPORTED["ray_sd_unet_queue_seconds"],
                QUEUE_BUCKETS_S,
                ("priority",),
            ),
            compile_seconds=meter.gauge(
                "sd_unet_compile_seconds", EXPORTED["ray_sd_unet_compile_seconds"]
            ),
            queued_by_priority=meter.gauge(
                "sd_unet_queued_by_priority",
                EXPORTED["ray_sd_unet_queued_by_priority"],
                ("priority",),
            ),
            waiting_clients=meter.gauge(
                "sd_unet_waiting_clients", EXPORTED["ray_sd_unet_waiting_clients"]
            ),
            pushed_out=meter.counter(
                "sd_unet_pushed_out", EXPORTED["ray_sd_unet_pushed_out_total"]
            ),
            refused_past_deadline=meter.counter(
                "sd_unet_refused_past_deadline",
                EXPORTED["ray_sd_unet_refused_past_deadline_total"],
            ),
        )


LORA_LOAD_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


@dataclass
class AdapterMetrics:
    """One stage's LoRA adapters (serving/engine/lora.py records them)."""

    stage: str
    lookups: Counter
    load_seconds: Histogram
    evictions: Counter
    resident: Gauge
    resident_bytes: Gauge

    def record_lookup(self, hit: bool) -> None:
        self.lookups.inc(tags={"stage": self.stage, "result": "hit" if hit else "miss"})

    def record_load(self, seconds: float) -> None:
        self.load_seconds.observe(seconds, tags={"stage": self.stage})

    def record_eviction(self) -> None:
        self.evictions.inc(tags={"stage": self.stage})

    def record_resident(self, count: int, size_bytes: int) -> None:
        self.resident.set(count, tags={"stage": self.stage})
        self.resident_bytes.set(size_bytes, tags={"stage": self.stage})

    @classmethod
    def create(cls, meter: Meter, stage: str) -> AdapterMetrics:
        return cls(
            stage=stage,
            lookups=meter.counter(
                "sd_lora_lookups", EXPORTED["ray_sd_lora_lookups_total"], ("stage", "result")
            ),
            load_seconds=meter.histogram(
                "sd_lora_load_seconds",
                EXPORTED["ray_sd_lora_load_seconds"],
                LORA_LOAD_BUCKETS_S,
                ("stage",),
            ),
            evictions=meter.counter(
                "sd_lora_evictions", EXPORTED["ray_sd_lora_evictions_total"], ("stage",)
            ),
            resident=meter.gauge("sd_lora_resident", EXPORTED["ray_sd_lora_resident"], ("stage",)),
            resident_bytes=meter.gauge(
                "sd_lora_resident_bytes", EXPORTED["ray_sd_lora_resident_bytes"], ("stage",)
            ),
        )


def cache_lookups(meter: Meter) -> Counter:
    return meter.counter(
        "sd_cache_lookups", EXPORTED["ray_sd_cache_lookups_total"], ("cache", "result")
    )


def max_replicas_publisher(meter: Meter, max_replicas: dict[str, int]) -> Callable[[], None]:
    """Autoscaling ceilings as a series, so alerts can tell 'at max replicas' from 'scaling'."""
    gauge = meter.gauge("sd_max_replicas", EXPORTED["ray_sd_max_replicas"], ("stage_deployment",))

    def publish() -> None:
        for deployment, value in max_replicas.items():
            gauge.set(value, tags={"stage_deployment": deployment})

    return publish
