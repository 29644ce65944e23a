"""The embedded models: the trained demo model, and each family's architecture at a CPU-friendly
size with random weights.

`embedded`, the service's default model, is the demo model in `serving/models/demo/`: Stable
Diffusion's architecture trained from scratch on the captioned world (`sd-serving train`, `make
demo-model`), committed as a diffusers directory. It draws what it is asked ("a red circle on a
white background") at 64x64.

The random-weight models are built offline from a fixed seed, so every machine with the pinned
torch gets the same weights; they exist for parity tests and benchmarks, one per family the
service serves. Each is written as a standard diffusers pipeline directory and then loaded exactly
like any real checkpoint: the serving code has one loading path.

| source                | like         | what differs                                             |
|-----------------------|--------------|----------------------------------------------------------|
| `embedded-sd`         | SD 1.5       | (random weights at 128x128: parity tests, `make bench`)  |
| `embedded-sd-v`       | SD 2.x-v     | v-prediction, zero-terminal-SNR betas, trailing steps    |
| `embedded-sd-turbo`   | SD-Turbo     | trailing timesteps, Euler; few steps without guidance    |
| `embedded-lcm`        | LCM (SD 1.5) | a guidance embedding (`time_cond_proj_dim`), LCM sampler |
| `embedded-sdxl`       | SDXL base    | two text encoders, pooled text and time ids as inputs    |
| `embedded-sdxl-turbo` | SDXL-Turbo   | SDXL with trailing timesteps, Euler ancestral            |
| `embedded-sd-inpaint` | SD 1.5 inp.  | a 9-channel inpainting UNet (latents, mask, masked image) |
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from filelock import FileLock
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from serving.models.tokenizer import write_tokenizer

# Bump when the architecture or seed changes, so caches built by older code are not reused.
EMBEDDED_VERSION = "2"
SEED = 20261124
NATIVE_SIZE = 128
TEXT_WIDTH = 256
SDXL_TEXT_WIDTH = 128  # each of SDXL's two encoders; the UNet sees both, concatenated
SDXL_TIME_EMBED = 32  # per time id (6 of them)
LCM_GUIDANCE_EMBED = 32
# Random weights make DDIM's x0 prediction chaotic: a last-bit difference (another thread
# count, another batch size) grows into a different image within a few steps. Damping the
# UNet's output layer makes the untrained model as smooth as a trained one, so results are
# reproducible to 1/255 across machines and batch shapes, while seeds still give varied images.
UNET_OUTPUT_DAMPING = 0.1
# Stable Diffusion's noise schedule, shared by every family here.
BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def _text_encoder(tokenizer_size: int, width: int, projection: bool) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=tokenizer_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer_size - 2,
        eos_token_id=tokenizer_size - 1,
        pad_token_id=tokenizer_size - 1,
        projection_dim=width,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _sd_unet(in_channels: int = 4, **extra: Any) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 256, 256),
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
        **extra,
    )


def _sdxl_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=NATIVE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * SDXL_TEXT_WIDTH,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED + SDXL_TEXT_WIDTH,
        norm_num_groups=32,
    )


def _vae(**config: Any) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=NATIVE_SIZE,
        **config,
    )


def _damped(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    with torch.no_grad():
        unet.conv_out.weight.mul_(UNET_OUTPUT_DAMPING)
        unet.conv_out.bias.mul_(UNET_OUTPUT_DAMPING)
    return unet.eval()


def _seeded(seed: int, build: Callable[[], DiffusionPipeline]) -> DiffusionPipeline:
    """`build()` with the global RNG seeded, and left as it was found."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def _stable_diffusion(
    scheduler: Any, pipeline_class: type = StableDiffusionPipeline, **unet: Any
) -> DiffusionPipeline:
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_tokenizer(Path(scratch))
    text_encoder = _text_encoder(len(tokenizer), TEXT_WIDTH, projection=False).eval()
    unet_model = _damped(_sd_unet(**unet))
    vae = _vae().eval()
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet_model,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _stable_diffusion_xl(scheduler: Any) -> DiffusionPipeline:
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_tokenizer(Path(scratch))
    text_encoder = _text_encoder(len(tokenizer), SDXL_TEXT_WIDTH, projection=False).eval()
    text_encoder_2 = _text_encoder(len(tokenizer), SDXL_TEXT_WIDTH, projection=True).eval()
    unet = _damped(_sdxl_unet())
    # SDXL's VAE overflows in half precision: pipelines decode in float32 (force_upcast).
    vae = _vae(scaling_factor=0.13025, force_upcast=True).eval()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


# Stable Diffusion 1.x's own scheduler configuration.
def _sd_scheduler() -> Any:
    return PNDMScheduler(**BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


def _sd_v_scheduler() -> Any:
    return DDIMScheduler(
        **BETAS,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "sd": lambda: _stable_diffusion(_sd_scheduler()),
    "sd-v": lambda: _stable_diffusion(_sd_v_scheduler()),
    "sd-turbo": lambda: _stable_diffusion(
        EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing", steps_offset=1)
    ),
    "lcm": lambda: _stable_diffusion(
        LCMScheduler(**BETAS, set_alpha_to_one=True, steps_offset=1),
        LatentConsistencyModelPipeline,
        time_cond_proj_dim=LCM_GUIDANCE_EMBED,
    ),
    "sdxl": lambda: _stable_diffusion_xl(
        EulerDiscreteScheduler(**BETAS, timestep_spacing="leading", steps_offset=1)
    ),
    "sdxl-turbo": lambda: _stable_diffusion_xl(
        EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="trailing", steps_offset=1)
    ),
    # An inpainting UNet (9 input channels: latents, mask, masked picture), as SD 1.5's.
    "sd-inpaint": lambda: _stable_diffusion(
        _sd_scheduler(), StableDiffusionInpaintPipeline, in_channels=9
    ),
}
# The text-to-image families (an inpainting model draws only over a picture).
FAMILIES = tuple(family for family in BUILDERS if family != "sd-inpaint")
# The default model: the trained demo model, committed with the code.
DEFAULT_SOURCE = "embedded"
DEMO_MODEL = Path(__file__).resolve().parent / "demo"
# Model sources that name a random-weight model, by family.
SOURCES = {f"embedded-{family}": family for family in BUILDERS}


def build_pipeline(family: str = "sd") -> DiffusionPipeline:
    """The family's embedded pipeline in memory (128x128 images)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(BUILDERS)}")
    # Each family its own seed (the default model keeps the one it always had).
    return _seeded(SEED + list(BUILDERS).index(family), BUILDERS[family])


def export(directory: Path, family: str = "sd") -> Path:
    """Write an embedded model as a diffusers directory that `from_pretrained` loads."""
    pipeline = build_pipeline(family)
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    # transformers 5 writes tokenizer.json only; keep the classic files real checkpoints have.
    for name in ("tokenizer", "tokenizer_2"):
        if (directory / name).exists():
            write_tokenizer(directory / name)
    return directory


def ensure_cached(cache_dir: Path, family: str = "sd") -> Path:
    """The embedded model's directory under `cache_dir`, built once (safe across processes)."""
    name = f"embedded-{family}"
    target = cache_dir / f"{name}-v{EMBEDDED_VERSION}"
    if (target / "model_index.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{name}-v{EMBEDDED_VERSION}.lock")):
        if (target / "model_index.json").exists():
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
        try:
            export(scratch, family)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target
