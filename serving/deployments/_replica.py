"""What every deployment's replica does at start, and Ray's side of the metrics protocol."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, cast

import ray
import torch
from ray.serve import metrics as serve_metrics

from serving.metrics import Counter, Gauge, Histogram
from serving.models import loader
from serving.models.device import Placement, choose_placement, configured_threads
from serving.settings import Settings, Stage, StageSettings


class RayMeter:
    """serving.metrics' Meter over `ray.serve.metrics` (exported by Ray's metrics agent)."""

    def counter(self, name: str, description: str, tag_keys: Sequence[str] = ()) -> Counter:
        return serve_metrics.Counter(name, description=description, tag_keys=_tags(tag_keys))

    def gauge(self, name: str, description: str, tag_keys: Sequence[str] = ()) -> Gauge:
        return serve_metrics.Gauge(name, description=description, tag_keys=_tags(tag_keys))

    def histogram(
        self, name: str, description: str, boundaries: list[float], tag_keys: Sequence[str] = ()
    ) -> Histogram:
        return serve_metrics.Histogram(
            name, description=description, boundaries=boundaries, tag_keys=_tags(tag_keys)
        )


def _tags(keys: Sequence[str]) -> tuple[str]:
    # Ray annotates tag_keys as Tuple[str] (one element) though it takes any number.
    return cast(tuple[str], tuple(keys))


class Replica(NamedTuple):
    stage: StageSettings
    placement: Placement
    source: str  # the model directory to load from
    engine_threads: int | None  # the UNet engine thread's torch threads (other stages: None)


def prepare_replica(settings: Settings, stage: Stage, model: str) -> Replica:
    """The stage's settings for this model, where the replica runs, the model directory it loads
    from, and torch's threads.

    The UNet's engine thread owns torch's threads: on CPU it gets the node's cores by default (it
    is the stage that works longest; the short stages keep Ray's one thread), and every other
    thread of the replica, this one included (loading), computes on one thread. libgomp gives
    each thread that runs a parallel region a team of its own and throttles the spinning of all
    of them once they outnumber the cores: a second team made the engine ~2x slower on 2 cores."""
    stage_settings = settings.stage(stage, model)
    placement = choose_placement(settings)
    threads = configured_threads(settings, stage_settings)
    engine_threads = None
    if stage == "unet":
        cpu = placement.device.type == "cpu"
        engine_threads = threads or (node_cpus() if cpu else None)
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    source = loader.resolve_source(settings.served_models()[model].source, settings)
    return Replica(stage_settings, placement, source, engine_threads)


def node_cpus() -> int:
    """The CPUs Ray counts on this replica's node (KubeRay sets them from the pod's limits)."""
    node = ray.get_runtime_context().get_node_id()
    for entry in ray.nodes():
        if entry.get("NodeID") == node and entry.get("Resources", {}).get("CPU"):
            return max(1, int(entry["Resources"]["CPU"]))
    return len(os.sched_getaffinity(0))


class _TunableBatch(Protocol):
    def set_max_batch_size(self, size: int) -> None: ...
    def set_batch_wait_timeout_s(self, timeout_s: float) -> None: ...


def tune_batching(method: object, max_batch_size: int, wait_s: float) -> None:
    """Request batching sizes from settings, applied to a `@serve.batch` method at start."""
    batched = cast(_TunableBatch, method)  # serve.batch's wrapper carries these setters
    batched.set_max_batch_size(max_batch_size)
    batched.set_batch_wait_timeout_s(wait_s)


def keep_publishing(publish: Callable[[], None], interval_s: float = 5.0) -> threading.Event:
    """Call `publish` now and every `interval_s` in a daemon thread; set the event to stop.
    Ray's metrics agent drops series that stop being recorded, and an idle replica must still
    report its queue (0) and its configuration."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            publish()
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="metrics-refresh", daemon=True).start()
    return stop
