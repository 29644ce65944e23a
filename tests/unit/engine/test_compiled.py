"""The denoiser's fast path on CPU: the switches that are for CUDA change nothing here but speed,
and the compiled path (torch.compile per batch-size bucket, padded rows) keeps parity. Compiling
on 2 cores takes seconds only for a tiny UNet, so that is what the compiled path runs here; the
embedded model checks the eager switches against diffusers' pipeline."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from serving.dataplane.stages import DenoiseJob
from serving.engine.compiled import (
    EAGER,
    FastPath,
    batch_buckets,
    bucket_for,
    choose_fast_path,
    prepare_unet,
    warm_up_example,
)
from serving.engine.denoiser import ContinuousBatchingEngine, Ticket, UNetCall
from serving.metrics import MemoryMeter, UNetMetrics
from serving.models.device import Placement
from serving.settings import Settings
from tests.helpers.engine import CPU, Components
from tests.helpers.images import max_pixel_difference

# Compiled kernels reorder float sums, and six DDIM steps amplify that: measured on 2 cores, the
# compiled tiny UNet's latents differ from eager ones by up to 9.4e-5 (values of order 1; up to
# 4.7e-4 with DDIM's clip_sample). Decoded, the images are equal within 1/255.
COMPILED_TOLERANCE = 1e-3


def test_buckets_double_up_to_the_largest_batch() -> None:
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(1) == (1,)
    assert [bucket_for(rows, (1, 2, 4, 8)) for rows in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]


def test_auto_turns_the_fast_path_on_with_cuda_only(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    on_cpu = choose_fast_path(settings, CPU, max_batch_size=8)
    assert not on_cpu.compiled and not on_cpu.channels_last and on_cpu.sdpa
    on_cuda = choose_fast_path(settings, Placement(torch.device("cuda"), torch.bfloat16), 8)
    assert on_cuda.compile_mode == "reduce-overhead" and on_cuda.channels_last
    assert on_cuda.buckets == (1, 2, 4, 8, 16)  # guidance gives 8 requests 16 rows
    assert on_cuda.cache_dir == tmp_path / "torch-compile"
    off = Settings(
        cache_dir=tmp_path, compile_mode="off", channels_last="off", sdpa_attention=False
    )
    forced_off = choose_fast_path(off, Placement(torch.device("cuda"), torch.bfloat16), 8)
    assert (forced_off.compiled, forced_off.channels_last, forced_off.sdpa) == (False, False, False)


def test_attention_is_pytorchs_sdpa_unless_turned_off() -> None:
    processors = prepare_unet(tiny_unet(), EAGER).attn_processors
    assert {type(p).__name__ for p in processors.values()} == {"AttnProcessor2_0"}  # SDPA
    plain = prepare_unet(tiny_unet(), replace(EAGER, sdpa=False)).attn_processors
    assert {type(p).__name__ for p in plain.values()} == {"AttnProcessor"}


def run(engine: ContinuousBatchingEngine, jobs: list[DenoiseJob]) -> list[np.ndarray]:
    tickets: list[Ticket] = [engine.submit(job) for job in jobs]
    while not all(ticket.future.done() for ticket in tickets):
        engine.step()
    return [ticket.future.result() for ticket in tickets]


def test_channels_last_and_plain_attention_keep_parity_with_the_pipeline(
    components: Components,
) -> None:
    """The CUDA-oriented switches forced on CPU: the image is still diffusers' within 1/255."""
    args = {"scheduler": "ddim", "seed": 5, "steps": 6, "negative": "blurry"}
    unet = UNet2DConditionModel.from_pretrained(components.source, subfolder="unet").eval()
    engine = ContinuousBatchingEngine(
        unet,
        components.schedulers,
        CPU,
        vae_scale_factor=8,
        max_batch_size=4,
        max_queue=8,
        fast_path=replace(EAGER, channels_last=True, sdpa=False),
    )
    (latents,) = run(engine, [components.job("a lighthouse at dusk", **args)])  # type: ignore[arg-type]
    image = components.decoder.decode([latents])[0]
    reference = components.reference_image(args, "a lighthouse at dusk")
    assert max_pixel_difference(image, reference) <= 1


def tiny_unet() -> UNet2DConditionModel:
    """diffusers' own test-sized UNet: two blocks, 32/64 channels, 8x8 latents."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    ).eval()


def tiny_job(seed: int, guided: bool = True) -> DenoiseJob:
    rng = np.random.default_rng(seed)

    def row() -> dict[str, np.ndarray]:
        return {"encoder_hidden_states": rng.standard_normal((77, 32)).astype(np.float32)}

    return DenoiseJob(
        conditioning=row(),
        negative_conditioning=row() if guided else None,
        height=64,
        width=64,
        steps=6,
        guidance_scale=5.0,
        seed=seed,
        scheduler="ddim",
    )


METER = MemoryMeter()  # the compiled engine's metrics


@pytest.fixture(scope="module")
def compiled_and_eager(
    components: Components, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ContinuousBatchingEngine, ContinuousBatchingEngine]:
    unet = tiny_unet()
    engines = []
    for mode in ("default", None):
        fast = FastPath(
            mode,
            channels_last=False,
            sdpa=True,
            buckets=(4,) if mode else (),
            cache_dir=tmp_path_factory.mktemp("inductor"),
        )
        engines.append(
            ContinuousBatchingEngine(
                unet,
                components.schedulers,
                CPU,
                vae_scale_factor=8,
                max_batch_size=2,
                max_queue=4,
                fast_path=fast,
                metrics=UNetMetrics.create(METER) if mode else None,
            )
        )
    return engines[0], engines[1]


def test_compiled_engine_matches_eager_batched_and_padded(
    components: Components,
    compiled_and_eager: tuple[ContinuousBatchingEngine, ContinuousBatchingEngine],
) -> None:
    """Two guided requests fill the one bucket (4 rows); then one guided request alone (2 rows)
    and one unguided (1 row) are padded up to it: each equals the eager engine's latents, and
    decoded (by the embedded model's VAE) the same image within 1/255."""
    compiled, eager = compiled_and_eager
    for jobs in ([tiny_job(1), tiny_job(2)], [tiny_job(3)], [tiny_job(4, guided=False)]):
        for fast, slow in zip(run(compiled, jobs), run(eager, jobs), strict=True):
            assert np.abs(fast - slow).max() <= COMPILED_TOLERANCE
            images = components.decoder.decode([fast, slow])
            assert max_pixel_difference(images[0], images[1]) <= 1


def test_start_compiles_every_bucket_before_it_returns(
    compiled_and_eager: tuple[ContinuousBatchingEngine, ContinuousBatchingEngine],
) -> None:
    compiled, eager = compiled_and_eager
    compiled.start()
    try:
        (served,) = asyncio.run(_denoise(compiled, tiny_job(5)))
    finally:
        compiled.stop()
    (reference,) = run(eager, [tiny_job(5)])
    assert np.abs(served.latents - reference).max() <= COMPILED_TOLERANCE
    assert METER.value("sd_unet_compile_seconds") > 0  # the warm-up, on the dashboard


async def _denoise(engine: ContinuousBatchingEngine, job: DenoiseJob) -> list:  # type: ignore[type-arg]
    return [await engine.denoise(job)]


@pytest.mark.parametrize(
    ("family", "inputs"),
    [
        ("sd-turbo", {"encoder_hidden_states"}),
        ("lcm", {"encoder_hidden_states", "timestep_cond"}),
        ("sdxl", {"encoder_hidden_states", "text_embeds", "time_ids"}),
    ],
)
def test_the_warm_up_example_covers_every_input_the_unet_takes(
    family_dirs: dict[str, Path], family: str, inputs: set[str]
) -> None:
    """Read from the UNet's config alone: the compiled graphs exist before any request."""
    unet = UNet2DConditionModel.from_pretrained(family_dirs[family], subfolder="unet").eval()
    example = warm_up_example(unet, torch.device("cpu"), torch.float32)
    assert set(example["conditioning"]) == inputs
    size = unet.config.sample_size
    assert example["sample"].shape == (1, unet.config.in_channels, size, size)
    with torch.inference_mode():
        UNetCall(unet)(example["sample"], example["timesteps"], example["conditioning"])
