"""Find a model and load one pipeline component at a time; read what a model is from its configs.

Each stage loads only what it runs (the UNet replica never holds the VAE), from a local diffusers
directory, KServe's /mnt/models, an embedded model built by this project, or a Hub id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from serving.errors import NotFound
from serving.models import embedded
from serving.models.device import Placement
from serving.settings import Settings

SDXL_PIPELINES = ("StableDiffusionXLPipeline",)
SAMPLE = 64 * 1024  # bytes read at each of three places of a weights file for its fingerprint


def resolve_source(source: str, settings: Settings) -> str:
    """A local directory or Hub id for `from_pretrained`, building a random-weight embedded
    model if named. `embedded` (the default model) means /mnt/models when KServe's storage
    initializer put a model there, and the committed demo model otherwise."""
    if source == embedded.DEFAULT_SOURCE:
        if (settings.kserve_model_dir / "model_index.json").exists():
            return str(settings.kserve_model_dir)
        if not (embedded.DEMO_MODEL / "model_index.json").exists():
            raise NotFound(f"the demo model is missing from {embedded.DEMO_MODEL}: make demo-model")
        return str(embedded.DEMO_MODEL)
    if source in embedded.SOURCES:
        return str(embedded.ensure_cached(settings.cache_dir, embedded.SOURCES[source]))
    local = Path(source).expanduser()
    if local.exists():
        if not (local / "model_index.json").exists():
            raise NotFound(f"model directory {local} has no model_index.json")
        return str(local)
    return source  # a Hub id; from_pretrained downloads it where there is network


def weights_fingerprint(source: str) -> str:
    """A short digest that changes when the weights do: each weights file's path, size and
    samples of its bytes (start, middle, end), without reading gigabytes. A Hub id is its own
    fingerprint (its cache path carries the revision)."""
    root = Path(source)
    if not root.is_dir():
        return hashlib.sha256(source.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    files = [p for p in sorted(root.rglob("*")) if p.suffix in (".safetensors", ".bin")]
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}:{size}".encode())
        with path.open("rb") as weights:
            for offset in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
                weights.seek(offset)
                digest.update(weights.read(SAMPLE))
    return digest.hexdigest()[:16]


def _has(source: str, component: str) -> bool:
    index = DiffusionPipeline.load_config(source)
    assert isinstance(index, dict)
    value = index.get(component)
    return isinstance(value, list | tuple) and value[0] is not None


def load_tokenizers(source: str) -> list[CLIPTokenizer]:
    """The model's tokenizers: one (SD 1.x/2.x), or two (SDXL)."""
    names = ["tokenizer", "tokenizer_2"] if _has(source, "tokenizer_2") else ["tokenizer"]
    return [CLIPTokenizer.from_pretrained(source, subfolder=name) for name in names]


def load_text_encoders(source: str, placement: Placement) -> list[torch.nn.Module]:
    """The model's text encoders; SDXL's second one projects a pooled embedding."""
    encoders: list[torch.nn.Module] = [
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=placement.dtype)
    ]
    if _has(source, "text_encoder_2"):
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                source, subfolder="text_encoder_2", dtype=placement.dtype
            )
        )
    return [encoder.to(placement.device).eval() for encoder in encoders]


def load_unet(source: str, placement: Placement) -> UNet2DConditionModel:
    model = UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", torch_dtype=placement.dtype
    )
    return model.to(placement.device).eval()


def load_vae(source: str, placement: Placement) -> AutoencoderKL:
    """The VAE; in float32 when the model says it overflows in half precision (SDXL's
    `force_upcast`), as the diffusers pipelines decode it."""
    config = AutoencoderKL.load_config(source, subfolder="vae")
    assert isinstance(config, dict)
    dtype = placement.dtype
    if config.get("force_upcast") and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    model = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    return model.to(placement.device).eval()


def load_scheduler_config(source: str) -> dict[str, Any]:
    # Any scheduler class reads scheduler_config.json; each sampler is then built from it.
    config = DDIMScheduler.load_config(source, subfolder="scheduler")
    assert isinstance(config, dict)
    return config


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, read from its configs without any weights."""

    family: str  # "sd" (SD 1.x/2.x) or "sdxl": the conditioning the denoiser takes
    native_size: int
    vae_scale_factor: int
    scheduler: str  # the class of the scheduler it ships with
    prediction_type: str  # epsilon, v_prediction, sample
    few_step: bool  # Turbo-style: trailing timesteps, made for a few steps without guidance
    guidance_embedding: bool  # LCM-style: guidance enters as an embedding (time_cond_proj_dim)
    force_zeros_for_empty_prompt: bool  # SDXL: an empty negative prompt is zeros, not encoded
    context_dim: int = 768  # the text-embedding width the UNet's cross-attention takes
    inpainting: bool = False  # a 9-channel UNet: latents, mask and masked picture as input

    @property
    def kind(self) -> str:
        """How the family's users know it: sd, sd-v, sd-turbo, lcm, sdxl, sdxl-turbo."""
        if self.guidance_embedding:
            return "lcm" if self.family == "sd" else f"{self.family}-lcm"
        if self.few_step:
            return f"{self.family}-turbo"
        if self.family == "sd" and self.prediction_type == "v_prediction":
            return "sd-v"
        if self.inpainting:
            return f"{self.family}-inpaint"
        return self.family


def read_model_info(source: str) -> ModelInfo:
    index = DiffusionPipeline.load_config(source)
    unet = UNet2DConditionModel.load_config(source, subfolder="unet")
    vae = AutoencoderKL.load_config(source, subfolder="vae")
    scheduler = load_scheduler_config(source)
    assert isinstance(index, dict) and isinstance(unet, dict) and isinstance(vae, dict)
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    sdxl = index.get("_class_name") in SDXL_PIPELINES or _has(source, "text_encoder_2")
    trailing = scheduler.get("timestep_spacing") == "trailing"
    return ModelInfo(
        family="sdxl" if sdxl else "sd",
        native_size=int(unet["sample_size"]) * scale,
        vae_scale_factor=scale,
        scheduler=str(scheduler.get("_class_name", "")),
        prediction_type=str(scheduler.get("prediction_type", "epsilon")),
        # Zero-terminal-SNR models use trailing timesteps too, for many steps with guidance.
        few_step=trailing and not scheduler.get("rescale_betas_zero_snr", False),
        guidance_embedding=unet.get("time_cond_proj_dim") is not None,
        force_zeros_for_empty_prompt=sdxl and bool(index.get("force_zeros_for_empty_prompt", True)),
        context_dim=_context_dim(unet["cross_attention_dim"]),
        inpainting=int(unet.get("in_channels", 4)) == 9,
    )


def _context_dim(value: int | list[int]) -> int:
    """UNet configs give one width, or one per block (all equal in the Stable Diffusion
    families)."""
    return int(value[0] if isinstance(value, list) else value)
