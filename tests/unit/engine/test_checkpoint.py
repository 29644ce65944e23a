"""Denoising checkpoints: a request resumed from one, on another engine (another replica), ends
at the latents an uninterrupted run ends at, for every sampler, alone and batched with others."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from serving.dataplane.stages import DenoiseJob, ImageLatents
from serving.engine import checkpoint
from serving.engine.denoiser import ContinuousBatchingEngine, Ticket
from tests.helpers.engine import Components
from tests.helpers.images import max_pixel_difference

STEPS = 10
EVERY = 3


def run(engine: ContinuousBatchingEngine, tickets: list[Ticket]) -> None:
    while not all(ticket.future.done() for ticket in tickets):
        engine.step()


def checkpointed_run(
    components: Components, job: DenoiseJob
) -> tuple[np.ndarray, dict[int, bytes]]:
    """An uninterrupted run's latents, and the checkpoints it made by step."""
    saved: dict[int, bytes] = {}

    def on_step(done: int, total: int, latents: torch.Tensor, state: bytes | None) -> None:
        if state is not None:
            saved[done] = state

    engine = components.engine()
    ticket = engine.submit(dataclasses.replace(job, checkpoint_every=EVERY), on_step=on_step)
    run(engine, [ticket])
    return ticket.future.result(), saved


@pytest.mark.parametrize(
    "scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "unipc", "lcm"]
)
def test_a_resumed_request_ends_at_the_uninterrupted_latents(
    components: Components, scheduler: str
) -> None:
    job = components.job("a lighthouse at dusk", steps=STEPS, seed=5, scheduler=scheduler)
    uninterrupted, saved = checkpointed_run(components, job)
    total = len(components.schedulers.create(scheduler, STEPS, torch.device("cpu")).timesteps)
    expected = [step for step in range(1, total + 1) if step % EVERY == 0 or step == total]
    assert sorted(saved) == expected

    other_replica = components.engine()
    ticket = other_replica.submit(dataclasses.replace(job, resume=saved[6]))
    assert ticket.steps_done == 0
    run(other_replica, [ticket])
    assert ticket.steps_done == total
    # Bit for bit: the same arithmetic from the same state (ancestral samplers' noise included).
    np.testing.assert_array_equal(ticket.future.result(), uninterrupted)


def test_a_resumed_request_batched_with_others_gives_the_same_image(
    components: Components,
) -> None:
    job = components.job("a red apple", steps=STEPS, seed=8, scheduler="euler_a")
    uninterrupted, saved = checkpointed_run(components, job)
    engine = components.engine()
    others = [
        engine.submit(components.job("a dog", steps=12, seed=1, scheduler="dpmpp_2m")),
        engine.submit(components.job("a city", steps=7, seed=2, scheduler="ddim", guidance=1.0)),
    ]
    engine.step()
    resumed = engine.submit(dataclasses.replace(job, resume=saved[3]))
    run(engine, [*others, resumed])
    image = components.decoder.decode([resumed.future.result()])[0]
    assert max_pixel_difference(image, components.decoder.decode([uninterrupted])[0]) <= 1


def test_a_request_resumed_after_its_last_step_takes_no_step(components: Components) -> None:
    job = components.job("a bowl of soup", steps=STEPS, seed=3)
    uninterrupted, saved = checkpointed_run(components, job)
    engine = components.engine()
    ticket = engine.submit(dataclasses.replace(job, resume=saved[STEPS]))
    assert engine.step() == 0  # resolved at admission: no UNet row computed
    np.testing.assert_array_equal(ticket.future.result(), uninterrupted)


def test_a_checkpoint_that_does_not_fit_the_request_fails_it_clearly(
    components: Components,
) -> None:
    job = components.job("a green field", steps=STEPS, seed=4)
    _, saved = checkpointed_run(components, job)
    engine = components.engine()
    larger = engine.submit(dataclasses.replace(job, height=256, width=256, resume=saved[3]))
    garbage = engine.submit(dataclasses.replace(job, resume=b"not a checkpoint"))
    run(engine, [larger, garbage])
    with pytest.raises(ValueError, match="does not fit this request"):
        larger.future.result()
    with pytest.raises(ValueError, match="not a denoising checkpoint"):
        garbage.future.result()


def test_a_checkpoint_holds_tensors_and_numbers_only(components: Components) -> None:
    job = components.job("a cat", steps=STEPS, seed=6, scheduler="dpmpp_2m")
    _, saved = checkpointed_run(components, job)
    state = checkpoint.read(saved[6])  # weights_only: no pickled objects could load
    assert state.step == 6 and tuple(state.latents.shape) == (1, 4, 16, 16)
    assert len(state.scheduler["model_outputs"]) == 2  # the multistep solver's memory
    assert len(saved[6]) < 64 * 1024


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m", "pndm"])
def test_a_resumed_edit_ends_at_the_uninterrupted_latents(
    components: Components, scheduler: str
) -> None:
    """Image-to-image: the schedule starts part way (its begin index is scheduler state), and
    the checkpoint's step counts from there."""
    rng = np.random.default_rng(2)
    shape = (4, 16, 16)
    picture = ImageLatents(rng.standard_normal(shape, np.float32), np.full(shape, 0.1, np.float32))
    job = components.job("a lighthouse at dusk", steps=STEPS, seed=5, scheduler=scheduler)
    job = dataclasses.replace(job, init_image=picture, strength=0.7)
    uninterrupted, saved = checkpointed_run(components, job)
    assert max(saved) < STEPS  # only the schedule's last 70 % ran
    other_replica = components.engine()
    ticket = other_replica.submit(dataclasses.replace(job, resume=saved[EVERY]))
    run(other_replica, [ticket])
    np.testing.assert_array_equal(ticket.future.result(), uninterrupted)
