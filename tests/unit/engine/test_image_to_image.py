"""Image-to-image in the engine: the VAE encoder's latent distribution, the sample and noise drawn
from the request's generator, the schedule's last `strength` part; equal to
StableDiffusionImg2ImgPipeline's output for the same seed, alone and batched with others."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline
from diffusers.image_processor import VaeImageProcessor

from serving.dataplane.stages import DenoiseJob
from serving.engine.denoiser import _image_start
from serving.engine.encoder import VaeEncoderRunner
from serving.engine.schedulers import SCHEDULER_CLASSES
from serving.errors import InvalidArgument
from tests.helpers.engine import CPU, Components
from tests.helpers.images import as_uint8, max_pixel_difference

PROMPT = "a red circle on a white background"


def input_image(seed: int = 5, size: int = 128) -> np.ndarray:
    """A picture with structure (a gradient and a square), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), rng.uniform(0, 255, (size, size))],
        -1,
    )
    image[size // 4 : size // 2, size // 4 : size // 2] = (200, 30, 30)
    return image.astype(np.uint8)


def reference(
    components: Components, image: np.ndarray, scheduler: str, **args: object
) -> np.ndarray:
    pipe = StableDiffusionImg2ImgPipeline(**components.pipeline.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULER_CLASSES[scheduler].from_config(pipe.scheduler.config)
    output = pipe(
        PROMPT,
        image=image.astype(np.float32)[None] / 255.0,
        strength=args["strength"],
        num_inference_steps=args["steps"],
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(args["seed"]),
        output_type="np",
    )
    return as_uint8(output.images[0])


def edit_job(
    components: Components, image: np.ndarray, scheduler: str, **args: object
) -> DenoiseJob:
    processor = VaeImageProcessor(vae_scale_factor=8)
    pixels = processor.preprocess(image.astype(np.float32)[None] / 255.0)[0].numpy()
    latents = VaeEncoderRunner.load(components.source, CPU).encode([pixels])[0]
    steps, seed = int(args["steps"]), int(args["seed"])  # type: ignore[call-overload]
    job = components.job(PROMPT, steps=steps, seed=seed, scheduler=scheduler)
    return replace(job, init_image=latents, strength=float(args["strength"]))  # type: ignore[arg-type]


def denoised(components: Components, jobs: list[DenoiseJob]) -> list[np.ndarray]:
    engine = components.engine()
    tickets = [engine.submit(job) for job in jobs]
    while not all(ticket.future.done() for ticket in tickets):
        engine.step()
    return components.decoder.decode([ticket.future.result() for ticket in tickets])


def served(components: Components, image: np.ndarray, scheduler: str, **args: object) -> np.ndarray:
    return denoised(components, [edit_job(components, image, scheduler, **args)])[0]


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler", "euler_a", "pndm"])
def test_image_to_image_matches_the_diffusers_pipeline(
    components: Components, scheduler: str
) -> None:
    image = input_image()
    args = {"steps": 10, "seed": 7, "strength": 0.6}
    edited = served(components, image, scheduler, **args)
    assert max_pixel_difference(edited, reference(components, image, scheduler, **args)) <= 1


def test_strength_sets_where_the_schedule_starts_and_how_much_noise_covers_the_image(
    components: Components,
) -> None:
    job = edit_job(components, input_image(), "ddim", steps=10, seed=7, strength=1.0)
    assert job.init_image is not None
    image_latents = torch.from_numpy(job.init_image.mean)
    starts = {}
    for strength in (0.2, 0.6, 1.0):
        scheduler = components.schedulers.create("ddim", 10, CPU.device)
        generator = torch.Generator().manual_seed(7)
        edit = replace(job, strength=strength)
        timesteps, latents = _image_start(edit, job.init_image, scheduler, generator, CPU)
        starts[strength] = (len(timesteps), (latents[0] - image_latents).abs().mean().item())
    assert [count for count, _ in starts.values()] == [2, 6, 10]  # the schedule's last part
    distances = [distance for _, distance in starts.values()]
    assert distances[0] < distances[1] < distances[2], starts  # more noise over the image


def test_edits_batched_with_other_requests_equal_their_solo_results(
    components: Components,
) -> None:
    first, second = input_image(seed=5), input_image(seed=6)[::-1].copy()
    jobs = [
        edit_job(components, first, "euler_a", steps=10, seed=3, strength=0.5),
        components.job("a blue square", steps=10, seed=4, scheduler="euler_a"),
        edit_job(components, second, "euler_a", steps=10, seed=5, strength=0.9),
    ]
    together = denoised(components, jobs)
    alone = [denoised(components, [job])[0] for job in jobs]
    assert all(max_pixel_difference(a, b) <= 1 for a, b in zip(together, alone, strict=True))


def test_a_strength_that_leaves_no_step_is_refused(components: Components) -> None:
    job = edit_job(components, input_image(), "ddim", steps=4, seed=1, strength=0.1)
    engine = components.engine()
    ticket = engine.submit(job)
    engine.step()
    with pytest.raises(ValueError, match="leaves no step"):
        ticket.future.result()


def test_a_vae_with_per_channel_latent_statistics_refuses_a_picture_naming_the_field() -> None:
    vae = AutoencoderKL(
        block_out_channels=(8,),
        norm_num_groups=8,
        latent_channels=4,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    with pytest.raises(InvalidArgument, match="takes no image input") as refused:
        VaeEncoderRunner(vae, CPU).encode([np.zeros((3, 16, 16), np.float32)])
    assert refused.value.field == "image"
