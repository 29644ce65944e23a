"""What every deployment's replica does at start, and Ray's side of the metrics protocol."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from ray.serve import metrics as serve_metrics

from serving.metrics import Counter, Gauge, Histogram
from serving.models import loader
from serving.models.device import Placement, choose_placement, configure_threads
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


def prepare_replica(
    settings: Settings, stage: Stage, model: str
) -> tuple[StageSettings, Placement, str]:
    """The stage's settings for this model, torch threads set from them, where the replica runs
    and the model directory it loads from."""
    stage_settings = settings.stage(stage, model)
    configure_threads(settings, stage_settings)
    source = loader.resolve_source(settings.served_models()[model].source, settings)
    return stage_settings, choose_placement(settings), source


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
