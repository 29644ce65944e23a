"""The embedded default model: Stable Diffusion's architecture at a CPU-friendly size.

Built offline from a fixed seed, so every machine with the pinned torch gets the same weights.
It is written as a standard diffusers pipeline directory, which is then loaded exactly like any
real checkpoint: the serving code has one loading path.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from filelock import FileLock
from transformers import CLIPTextConfig, CLIPTextModel

from serving.models.tokenizer import write_tokenizer

# Bump when the architecture or seed changes, so caches built by older code are not reused.
EMBEDDED_VERSION = "2"
SEED = 20261124
NATIVE_SIZE = 128
TEXT_WIDTH = 256
# Random weights make DDIM's x0 prediction chaotic: a last-bit difference (another thread
# count, another batch size) grows into a different image within a few steps. Damping the
# UNet's output layer makes the untrained model as smooth as a trained one, so results are
# reproducible to 1/255 across machines and batch shapes, while seeds still give varied images.
UNET_OUTPUT_DAMPING = 0.1


def build_pipeline() -> StableDiffusionPipeline:
    """The embedded pipeline in memory (≈23M-parameter UNet, 128x128 images)."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_tokenizer(Path(scratch))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_WIDTH,
                intermediate_size=4 * TEXT_WIDTH,
                num_hidden_layers=4,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=TEXT_WIDTH,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=NATIVE_SIZE // 8,
            in_channels=4,
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
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=NATIVE_SIZE,
        )
        with torch.no_grad():
            unet.conv_out.weight.mul_(UNET_OUTPUT_DAMPING)
            unet.conv_out.bias.mul_(UNET_OUTPUT_DAMPING)
    finally:
        torch.random.set_rng_state(generator_state)
    # Stable Diffusion 1.x's own scheduler configuration.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for module in (text_encoder, unet, vae):
        module.eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def export(directory: Path) -> Path:
    """Write the embedded model as a diffusers directory that `from_pretrained` loads."""
    pipeline = build_pipeline()
    directory.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(directory), safe_serialization=True)
    # transformers 5 writes tokenizer.json only; keep the classic files real checkpoints have.
    write_tokenizer(directory / "tokenizer")
    return directory


def ensure_cached(cache_dir: Path) -> Path:
    """The embedded model's directory under `cache_dir`, built once (safe across processes)."""
    target = cache_dir / f"embedded-v{EMBEDDED_VERSION}"
    if (target / "model_index.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".embedded-v{EMBEDDED_VERSION}.lock")):
        if (target / "model_index.json").exists():
            return target
        scratch = Path(tempfile.mkdtemp(prefix=".embedded-", dir=cache_dir))
        try:
            export(scratch)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target
