"""The continuous-batching engine, without Ray: parity, batching, cancellation, isolation."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from serving.dataplane.stages import DenoiseResult, StepProgress
from serving.engine.denoiser import ContinuousBatchingEngine, EngineStats, Ticket
from serving.errors import QueueFull
from serving.metrics import MemoryMeter, UNetMetrics
from tests.helpers.engine import Components
from tests.helpers.images import max_pixel_difference
from tests.helpers.net import wait_until


def run_to_completion(engine: ContinuousBatchingEngine, tickets: list[Ticket]) -> list[int]:
    rows = []
    while not all(t.future.done() for t in tickets):
        rows.append(engine.step())
    return rows


def image_of(components: Components, ticket: Ticket) -> np.ndarray:
    return components.decoder.decode([ticket.future.result()])[0]


def solo_image(components: Components, prompt: str, **args: object) -> np.ndarray:
    engine = components.engine()
    ticket = engine.submit(components.job(prompt, **args))  # type: ignore[arg-type]
    run_to_completion(engine, [ticket])
    return image_of(components, ticket)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler", "euler_a", "pndm"])
def test_engine_matches_stable_diffusion_pipeline(components: Components, scheduler: str) -> None:
    args = {"scheduler": scheduler, "seed": 11, "steps": 10, "negative": "blurry"}
    served = solo_image(components, "a lighthouse at dusk", **args)
    assert (
        max_pixel_difference(served, components.reference_image(args, "a lighthouse at dusk")) <= 1
    )


def test_guidance_off_uses_one_row_and_still_matches(components: Components) -> None:
    args = {"scheduler": "euler", "seed": 3, "steps": 6, "guidance": 1.0}
    engine = components.engine()
    ticket = engine.submit(components.job("a cat", **args))  # type: ignore[arg-type]
    rows = run_to_completion(engine, [ticket])
    assert set(rows) == {1}
    reference = components.reference_image(args, "a cat")
    assert max_pixel_difference(image_of(components, ticket), reference) <= 1


CONCURRENT = [
    ("a red apple on a table", {"scheduler": "ddim", "steps": 12, "seed": 1}),
    ("a dog in the snow", {"scheduler": "dpmpp_2m", "steps": 7, "seed": 2, "guidance": 4.0}),
    ("a city skyline", {"scheduler": "euler_a", "steps": 9, "seed": 3, "negative": "fog"}),
    ("a bowl of soup", {"scheduler": "pndm", "steps": 5, "seed": 4}),
    ("a green field", {"scheduler": "euler", "steps": 10, "seed": 5, "guidance": 1.0}),
]


def test_requests_joining_at_different_steps_equal_their_solo_results(
    components: Components,
) -> None:
    engine = components.engine(max_batch_size=8)
    tickets = []
    rows = []
    for prompt, args in CONCURRENT:  # each joins while the earlier ones are mid-denoising
        tickets.append(engine.submit(components.job(prompt, **args)))  # type: ignore[arg-type]
        rows += [engine.step(), engine.step()]
    rows += run_to_completion(engine, tickets)
    assert max(rows) >= 6, "requests were never batched together"
    for ticket, (prompt, args) in zip(tickets, CONCURRENT, strict=True):
        assert ticket.steps_done == ticket.total_steps
        solo = solo_image(components, prompt, **args)
        assert max_pixel_difference(image_of(components, ticket), solo) <= 1, args


def test_sizes_are_batched_by_latent_shape(components: Components) -> None:
    engine = components.engine()
    square = {"steps": 4, "seed": 7}
    wide = {"steps": 4, "seed": 8, "size": (64, 96)}
    tickets = [
        engine.submit(components.job("a boat", **square)),  # type: ignore[arg-type]
        engine.submit(components.job("a boat", **wide)),  # type: ignore[arg-type]
    ]
    rows = run_to_completion(engine, tickets)
    assert rows == [2] * 8, "each iteration must run one shape only, the two shapes taking turns"
    assert image_of(components, tickets[1]).shape == (64, 96, 3)
    reference = components.reference_image(wide, "a boat")
    assert max_pixel_difference(image_of(components, tickets[1]), reference) <= 1


def test_cancel_frees_the_slot_at_the_next_step(components: Components) -> None:
    engine = components.engine(max_batch_size=1)
    long_job = engine.submit(components.job("long", steps=50))
    waiting = engine.submit(components.job("short", steps=3))
    engine.step()
    engine.step()
    assert engine.stats().active == 1 and engine.stats().queued == 1
    assert long_job.cancel()
    engine.step()
    assert waiting.steps_done == 1, "the waiting job must take the freed slot at the next step"
    assert long_job.steps_done == 2
    run_to_completion(engine, [waiting])
    assert long_job.future.cancelled()
    assert waiting.future.result().shape == (4, 16, 16)


def test_full_queue_is_refused_not_queued_forever(components: Components) -> None:
    engine = components.engine(max_batch_size=1, max_queue=1)
    engine.submit(components.job("one"))
    engine.submit(components.job("two"))
    with pytest.raises(QueueFull, match="limit 2"):
        engine.submit(components.job("three"))


def test_a_failing_job_does_not_disturb_the_batch(components: Components) -> None:
    engine = components.engine()
    good_args = {"steps": 4, "seed": 9}
    good = engine.submit(components.job("a tree", **good_args))  # type: ignore[arg-type]
    broken = engine.submit(components.job("a tree", scheduler="no-such-scheduler"))
    run_to_completion(engine, [good, broken])
    assert isinstance(broken.future.exception(), KeyError)
    reference = components.reference_image(good_args, "a tree")
    assert max_pixel_difference(image_of(components, good), reference) <= 1


def test_background_thread_serves_and_stops(components: Components) -> None:
    engine = components.engine()
    engine.start()
    try:
        ticket = engine.submit(components.job("a kite", steps=3))
        assert ticket.future.result(timeout=60).shape == (4, 16, 16)
    finally:
        engine.stop()
    pending = engine.submit(components.job("never run", steps=3))
    assert not pending.future.done()


def test_the_engine_thread_computes_with_the_threads_it_was_given(
    components: Components,
) -> None:
    """The deployment loads on one thread and gives the engine thread the node's cores: the
    engine thread must apply its own count (torch's threads are set per computing thread)."""
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    engine = components.engine(max_batch_size=2, max_queue=2, torch_threads=wanted)
    seen: list[int] = []
    engine.start()
    try:
        ticket = engine.submit(
            components.job("a kite", steps=2),
            on_step=lambda *_: seen.append(torch.get_num_threads()),
        )
        ticket.future.result(timeout=60)
    finally:
        engine.stop()
        torch.set_num_threads(before)
    assert seen == [wanted, wanted]


def test_the_stream_reports_every_step_then_the_result(components: Components) -> None:
    engine = components.engine()
    engine.start()
    try:

        async def collect() -> list[StepProgress | DenoiseResult]:
            job = components.job("a kite", steps=3)
            return [item async for item in engine.denoise_stream(job, preview=True)]

        *progress, result = asyncio.run(collect())
    finally:
        engine.stop()
    assert [(step.step, step.total) for step in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(step, StepProgress) for step in progress)
    assert progress[-1].preview is not None and progress[-1].preview.shape == (16, 16, 3)
    assert isinstance(result, DenoiseResult) and result.latents.shape == (4, 16, 16)


def test_closing_a_stream_early_frees_its_slot(components: Components) -> None:
    engine = components.engine(max_batch_size=1, max_queue=1)
    engine.start()
    try:

        async def scenario() -> DenoiseResult:
            stream = engine.denoise_stream(components.job("long", steps=150), preview=False)
            await anext(stream)  # running, holding the only slot
            await stream.aclose()  # the caller went away
            return await asyncio.wait_for(engine.denoise(components.job("next", steps=2)), 60)

        assert asyncio.run(scenario()).latents.shape == (4, 16, 16)
    finally:
        engine.stop()
    assert engine.stats() == EngineStats(
        active=0, queued=0, queued_by_priority={"interactive": 0, "batch": 0}
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_engine_thread_fails_the_health_check(components: Components) -> None:
    class Broken:
        def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
            raise RuntimeError("a metrics backend that fails")

    meter = MemoryMeter()
    metrics = UNetMetrics.create(meter)
    metrics.batch_size = Broken()
    engine = components.engine(max_batch_size=2, max_queue=2, metrics=metrics)
    with pytest.raises(RuntimeError, match="not running"):
        engine.check_health()  # never started
    engine.start()
    engine.check_health()
    engine.submit(components.job("a lamp", steps=2))  # its first step kills the thread

    def unhealthy() -> bool:
        try:
            engine.check_health()
        except RuntimeError:
            return True
        return False

    assert wait_until(unhealthy, 60)


def test_a_client_behind_another_clients_flood_is_admitted_next(components: Components) -> None:
    engine = components.engine(max_batch_size=1)
    flood = [
        engine.submit(replace(components.job("a dog", steps=2, seed=n), client="addr:heavy"))
        for n in range(6)
    ]
    light = engine.submit(replace(components.job("a cat", steps=2, seed=9), client="addr:light"))
    finished: list[Ticket] = []
    while not light.future.done():
        engine.step()
        finished += [t for t in flood if t.future.done() and t not in finished]
    assert len(finished) <= 1  # it waited for the request already running, not the flood
    run_to_completion(engine, flood)


def test_interactive_requests_are_admitted_before_batch_ones(components: Components) -> None:
    engine = components.engine(max_batch_size=1)
    running = engine.submit(components.job("first", steps=2))
    batch = engine.submit(replace(components.job("later", steps=2), priority_rank=1))
    interactive = engine.submit(components.job("urgent", steps=2))
    while not interactive.future.done():
        engine.step()
    assert not batch.future.done()
    run_to_completion(engine, [running, batch])


def test_a_full_room_refuses_the_floods_newest_to_admit_another_client(
    components: Components,
) -> None:
    meter = MemoryMeter()
    engine = components.engine(max_batch_size=1, max_queue=3, metrics=UNetMetrics.create(meter))
    flood = [
        engine.submit(replace(components.job("a dog", steps=2, seed=n), client="addr:heavy"))
        for n in range(4)  # one runs (once admitted), three wait: full
    ]
    light = engine.submit(replace(components.job("a cat", steps=2), client="addr:light"))
    with pytest.raises(QueueFull, match="more requests waiting than its share"):
        flood[-1].future.result(timeout=1)
    with pytest.raises(QueueFull, match="the UNet is busy"):  # the flood itself gets no more
        engine.submit(replace(components.job("a dog", steps=2), client="addr:heavy"))
    assert meter.value("sd_unet_pushed_out") == 1
    stats = engine.stats()
    assert stats.waiting_clients == 2 and stats.queued_by_priority == {"interactive": 4, "batch": 0}
    run_to_completion(engine, [*flood[:-1], light])


def engine_of_two_slots(components: Components) -> tuple[ContinuousBatchingEngine, MemoryMeter]:
    meter = MemoryMeter()
    engine = components.engine(max_batch_size=2, max_queue=16, metrics=UNetMetrics.create(meter))
    return engine, meter


def test_a_request_that_would_finish_after_its_deadline_is_refused_at_once(
    components: Components,
) -> None:
    engine, meter = engine_of_two_slots(components)
    tickets = [engine.submit(components.job("busy", steps=8, seed=n)) for n in range(6)]
    engine.step()  # saturated (a full batch, four waiting): the engine measures its rate
    engine.step()
    with pytest.raises(QueueFull, match="after its deadline"):
        engine.submit(replace(components.job("late", steps=8), finish_by=time.time() + 1e-3))
    assert meter.value("sd_unet_refused_past_deadline") == 1
    on_time = engine.submit(replace(components.job("fits", steps=8), finish_by=time.time() + 3600))
    no_deadline = engine.submit(components.job("whenever", steps=8))
    run_to_completion(engine, [*tickets, on_time, no_deadline])
    assert on_time.future.result().shape == no_deadline.future.result().shape


def test_a_waiting_request_whose_deadline_can_no_longer_be_met_is_refused_not_started(
    components: Components,
) -> None:
    engine, meter = engine_of_two_slots(components)
    busy = [engine.submit(components.job("busy", steps=8, seed=n)) for n in range(4)]
    # Accepted on arrival (no pace measured yet), but its deadline passes while it waits.
    late = engine.submit(replace(components.job("late", steps=8), finish_by=time.time() + 0.05))
    run_to_completion(engine, [*busy, late])
    with pytest.raises(QueueFull, match="can no longer finish"):
        late.future.result()
    assert late.steps_done == 0 and meter.value("sd_unet_refused_past_deadline") == 1
    assert all(ticket.future.result().shape == (4, 16, 16) for ticket in busy)
