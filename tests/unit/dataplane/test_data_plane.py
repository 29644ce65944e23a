"""The one generation flow, over a scripted StageClient: result cache, deadline and cancellation,
sibling cancellation, progress, metrics and readiness, in milliseconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from serving.dataplane.checkpoints import Checkpoint
from serving.dataplane.clients import ClientDirectory, KeyBook
from serving.dataplane.model import ServedModel
from serving.dataplane.request import GenerateParams, RequestContext
from serving.dataplane.service import (
    READINESS_TTL_S,
    DataPlane,
    GenerationResult,
    ModelRoute,
    all_or_none,
)
from serving.dataplane.stages import DenoiseJob, DenoiseResult, StepProgress, TextEmbedding
from serving.dataplane.store import InMemoryStore
from serving.errors import DeadlineExceeded, InvalidArgument, QueueFull
from serving.metrics import IngressMetrics, MemoryMeter
from serving.settings import Limits, ModelSpec, Settings


@dataclass
class ScriptedStages:
    """Stages that answer at once with seed-dependent pixels; `block` holds denoise until
    cancelled, `fail_seed` makes that image's denoise refuse."""

    block: bool = False
    fail_seed: int | None = None
    calls: list[str] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    resumed: list[bytes | None] = field(default_factory=list)
    jobs: list[DenoiseJob] = field(default_factory=list)
    probes: int = 0

    async def encode_text(
        self, text: str, loras: tuple[tuple[str, float], ...] = ()
    ) -> TextEmbedding:
        self.calls.append(f"encode:{text}")
        return TextEmbedding(np.zeros((77, 8), np.float32))

    async def denoise(self, job: DenoiseJob) -> DenoiseResult:
        self.calls.append(f"denoise:{job.seed}")
        self.jobs.append(job)
        if job.seed == self.fail_seed:
            await asyncio.sleep(0.01)
            raise QueueFull("the UNet is busy")
        try:
            while self.block or job.seed == (self.fail_seed or -1) + 1:
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.append(job.seed)
            raise
        return DenoiseResult(np.full((4, 16, 16), job.seed % 7, np.float32), queued_ms=1.0)

    async def denoise_stream(
        self, job: DenoiseJob, preview: bool
    ) -> AsyncGenerator[StepProgress | DenoiseResult, None]:
        self.resumed.append(job.resume)
        every = job.checkpoint_every
        for step in range(1, job.steps + 1):
            state = f"{job.seed}@{step}".encode() if every and step % every == 0 else None
            yield StepProgress(step, job.steps, checkpoint=state)
        yield await self.denoise(job)

    async def decode(self, latents: np.ndarray) -> np.ndarray:
        return np.full((128, 128, 3), int(latents.flat[0]) * 30, np.uint8)

    async def readiness(self) -> dict[str, bool]:
        self.probes += 1
        return {"text_encoder": True, "unet": True, "vae": True}


@pytest.fixture(scope="module")
def model(embedded_model_dir: Path) -> ServedModel:
    return ServedModel.load(Settings(), "sd-embedded", ModelSpec(source=str(embedded_model_dir)))


def data_plane(
    model: ServedModel, stages: ScriptedStages, **settings: object
) -> tuple[DataPlane, MemoryMeter]:
    config = Settings(**settings)  # type: ignore[arg-type]
    meter = MemoryMeter()
    routes = {model.name: ModelRoute(model, stages)}
    plane = DataPlane(config, routes, InMemoryStore(config), IngressMetrics.create(meter))
    return plane, meter


def test_a_determined_request_is_answered_from_the_result_cache(model: ServedModel) -> None:
    stages = ScriptedStages()
    plane, meter = data_plane(model, stages)
    params = GenerateParams(prompt="a cat", seed=3, steps=4)

    async def scenario() -> None:
        first = await plane.generate(params, RequestContext())
        stages.calls.clear()
        second = await plane.generate(params, RequestContext(), pixels=True)
        assert first.cached is False and second.cached is True
        assert stages.calls == []  # no stage touched
        assert [i.data for i in second.images] == [i.data for i in first.images]
        assert "result_cache" in second.timings_ms and "unet" not in second.timings_ms
        assert second.pixels is not None and int(second.pixels[0][0, 0, 0]) == 90
        unseeded = await plane.generate(GenerateParams(prompt="a cat", steps=4), RequestContext())
        assert unseeded.cached is False and stages.calls  # never looked up, rendered

    asyncio.run(scenario())
    assert meter.value("sd_cache_lookups", cache="result", result="miss") == 1
    assert meter.value("sd_cache_lookups", cache="result", result="hit") == 1
    model = plane.model().name
    assert meter.value("sd_images", model=model) == 2  # the cached answer produced no image
    for stage in ("text_encoder", "unet", "vae", "encode"):  # two renders, timed per stage
        timed = meter.observations("sd_stage_duration_seconds", stage=stage, model=model)
        assert len(timed) == 2


def test_past_the_deadline_the_stage_work_is_cancelled(model: ServedModel) -> None:
    stages = ScriptedStages(block=True)
    plane, _ = data_plane(model, stages)

    async def scenario() -> None:
        with pytest.raises(DeadlineExceeded, match=r"0\.2 s deadline"):
            await plane.generate(
                GenerateParams(prompt="slow", seed=1, num_images=2), RequestContext(timeout_s=0.2)
            )

    asyncio.run(scenario())
    assert sorted(stages.cancelled) == [1, 2]  # both images' denoise calls were cancelled


def test_the_deadline_counts_from_when_the_request_reached_the_service(
    model: ServedModel,
) -> None:
    """A request that waited 9.8 s in the proxy's queue has 0.2 s of its 10 s left."""
    stages = ScriptedStages(block=True)
    plane, _ = data_plane(model, stages)
    context = RequestContext(timeout_s=10.0, received_at=time.time() - 9.8)

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"10 s deadline"):
            await plane.generate(GenerateParams(prompt="late", seed=1), context)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5.0  # cancelled at 10 s from arrival, not from now
    assert stages.cancelled == [1]


def test_one_image_refused_cancels_its_siblings(model: ServedModel) -> None:
    stages = ScriptedStages(fail_seed=11)
    plane, _ = data_plane(model, stages)

    async def scenario() -> None:
        with pytest.raises(QueueFull):
            await plane.generate(
                GenerateParams(prompt="three", seed=10, num_images=3), RequestContext()
            )

    asyncio.run(scenario())
    assert 12 in stages.cancelled  # the image still denoising was stopped


def test_progress_reports_every_step_of_every_image(model: ServedModel) -> None:
    plane, _ = data_plane(model, ScriptedStages())
    seen: list[tuple[int, int]] = []

    async def sink(step: StepProgress) -> None:
        seen.append((step.image_index, step.step))

    result = asyncio.run(
        plane.generate(
            GenerateParams(prompt="two", seed=5, num_images=2, steps=3),
            RequestContext(),
            progress=sink,
        )
    )
    assert sorted(seen) == [(i, s) for i in (0, 1) for s in (1, 2, 3)]
    assert [image.seed for image in result.images] == [5, 6]


def test_a_prompt_over_the_token_limit_fails_before_any_stage(model: ServedModel) -> None:
    stages = ScriptedStages()
    plane, _ = data_plane(model, stages)
    long_prompt = "mountains " * 100
    with pytest.raises(InvalidArgument, match="rejected, not truncated"):
        plane.prepare(GenerateParams(prompt=long_prompt))
    assert stages.calls == []
    truncating, _ = data_plane(model, stages, limits=Limits(prompt_overflow="truncate"))
    prepared = truncating.prepare(GenerateParams(prompt=long_prompt))
    assert prepared.warnings and "truncated" in prepared.warnings[0]


def test_readiness_is_probed_once_per_interval(model: ServedModel) -> None:
    stages = ScriptedStages()
    plane, _ = data_plane(model, stages)

    async def scenario() -> dict[str, bool]:
        answers = await asyncio.gather(*(plane.readiness() for _ in range(10)))
        await plane.ready()
        return answers[0]

    assert asyncio.run(scenario()) == {
        "text_encoder": True,
        "unet": True,
        "vae": True,
        "result_store": True,
    }
    assert stages.probes == 1


class AwayStore(InMemoryStore):
    async def ready(self) -> bool:
        raise ConnectionError("Redis is away")


def test_the_store_gauge_follows_readiness_probed_on_a_timer(model: ServedModel) -> None:
    meter = MemoryMeter()
    config = Settings()
    store = InMemoryStore(config)
    plane = DataPlane(
        config,
        {model.name: ModelRoute(model, ScriptedStages())},
        store,
        IngressMetrics.create(meter),
    )

    async def watch_for(seconds: float) -> None:
        watching = asyncio.create_task(plane.watch_readiness(interval_s=0.01))
        await asyncio.sleep(seconds)
        watching.cancel()

    asyncio.run(watch_for(0.05))  # nobody asked: the timer probed
    assert meter.value("sd_store_up") == 1.0
    plane.store = AwayStore(config)
    asyncio.run(watch_for(READINESS_TTL_S + 0.2))  # once the last answer is stale
    assert meter.value("sd_store_up") == 0.0


def test_all_or_none_returns_in_order_or_cancels_the_rest() -> None:
    cancelled = []

    async def value(delay: float, result: int) -> int:
        await asyncio.sleep(delay)
        return result

    async def failing() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("no")

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 0

    assert asyncio.run(all_or_none([value(0.02, 1), value(0.0, 2)])) == [1, 2]
    with pytest.raises(ValueError):
        asyncio.run(all_or_none([failing(), slow()]))
    assert cancelled == [True]


@dataclass
class ListedCheckpoints:
    """Checkpoints in a dict; `broken` makes every save fail (Redis away)."""

    saved: dict[int, Checkpoint] = field(default_factory=dict)
    broken: bool = False
    every: int = 2

    async def load(self) -> dict[int, Checkpoint]:
        return dict(self.saved)

    async def save(self, image_index: int, checkpoint: Checkpoint) -> None:
        if self.broken:
            raise ConnectionError("Redis is away")
        self.saved[image_index] = checkpoint


async def as_job(
    plane: DataPlane,
    params: GenerateParams,
    progress: Callable[[StepProgress], Awaitable[None]],
    checkpoints: ListedCheckpoints,
) -> GenerationResult:
    """What a durable job's worker calls."""
    prepared = plane.prepare(params)
    return await plane.run(prepared, RequestContext(), progress=progress, checkpoints=checkpoints)


def test_a_job_resumes_each_image_from_its_checkpoint_and_saves_new_ones(
    model: ServedModel,
) -> None:
    stages = ScriptedStages()
    plane, _ = data_plane(model, stages)
    checkpoints = ListedCheckpoints(saved={1: Checkpoint(2, b"image 1 at 2")})
    steps: list[StepProgress] = []

    async def progress(step: StepProgress) -> None:
        steps.append(step)

    params = GenerateParams(prompt="a cat", seed=5, steps=5, num_images=2)
    asyncio.run(as_job(plane, params, progress, checkpoints))
    assert stages.resumed == [None, b"image 1 at 2"]
    assert checkpoints.saved == {0: Checkpoint(4, b"5@4"), 1: Checkpoint(4, b"6@4")}
    assert all(step.checkpoint is None for step in steps)  # the bytes never reach the board


def test_a_checkpoint_that_cannot_be_saved_is_counted_and_the_job_goes_on(
    model: ServedModel,
) -> None:
    stages = ScriptedStages()
    plane, meter = data_plane(model, stages)
    steps: list[StepProgress] = []

    async def progress(step: StepProgress) -> None:
        steps.append(step)

    params = GenerateParams(prompt="a cat", seed=5, steps=5)
    result = asyncio.run(as_job(plane, params, progress, ListedCheckpoints(broken=True)))
    assert len(result.images) == 1 and len(steps) == 5
    assert meter.value("sd_job_checkpoint_failures") == 2


def test_each_image_waits_as_its_callers_share(model: ServedModel, tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k-night name=nightly weight=2 priority=batch\n")
    stages = ScriptedStages()
    meter = MemoryMeter()
    config = Settings()
    plane = DataPlane(
        config,
        {model.name: ModelRoute(model, stages)},
        InMemoryStore(config),
        IngressMetrics.create(meter),
        ClientDirectory(KeyBook.load(tmp_path / "keys")),
    )
    context = RequestContext(authorization="Bearer k-night", address="10.1.1.1")
    asked = GenerateParams(prompt="a cat", steps=2, num_images=2, priority="interactive")
    result = asyncio.run(plane.generate(asked, context))
    assert any("it ran as 'batch'" in warning for warning in result.warnings)
    assert [(j.client, j.weight, j.priority_rank) for j in stages.jobs] == [
        ("key:nightly", 2.0, 1)
    ] * 2
    assert (
        len(meter.observations("sd_client_request_seconds", client="nightly", priority="batch"))
        == 1
    )
    with pytest.raises(InvalidArgument) as caught:
        plane.prepare(GenerateParams(prompt="a cat", priority="urgent"))
    assert caught.value.field == "priority" and "interactive, batch" in caught.value.message


def test_a_stopping_service_answers_not_ready_at_once(model: ServedModel, tmp_path: Path) -> None:
    marker = tmp_path / "draining"
    plane, _ = data_plane(model, ScriptedStages(), drain_marker=marker)

    async def scenario() -> tuple[bool, bool]:
        before = await plane.ready()
        marker.touch()  # `sd-serving serve` got SIGTERM
        return before, await plane.ready()  # within the readiness cache's second

    assert asyncio.run(scenario()) == (True, False)
