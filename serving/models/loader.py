"""Find the model the settings name and load one pipeline component at a time.

Each stage loads only what it runs (the UNet replica never holds the VAE), from a local
diffusers directory, KServe's /mnt/models, or a Hub id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from serving.errors import NotFound
from serving.models import embedded
from serving.models.device import Placement
from serving.settings import Settings


def resolve_model_source(settings: Settings) -> str:
    """A local directory or Hub id for `from_pretrained`, building the embedded model if needed."""
    if settings.model != "embedded":
        local = Path(settings.model).expanduser()
        if local.exists():
            if not (local / "model_index.json").exists():
                raise NotFound(f"model directory {local} has no model_index.json")
            return str(local)
        return settings.model  # a Hub id; from_pretrained downloads it where there is network
    if (settings.kserve_model_dir / "model_index.json").exists():
        return str(settings.kserve_model_dir)
    return str(embedded.ensure_cached(settings.cache_dir))


def load_tokenizer(source: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")


def load_text_encoder(source: str, placement: Placement) -> CLIPTextModel:
    model = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=placement.dtype)
    return model.to(placement.device).eval()


def load_unet(source: str, placement: Placement) -> UNet2DConditionModel:
    model = UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", torch_dtype=placement.dtype
    )
    return model.to(placement.device).eval()


def load_vae(source: str, placement: Placement) -> AutoencoderKL:
    model = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=placement.dtype)
    return model.to(placement.device).eval()


def load_scheduler_config(source: str) -> dict[str, Any]:
    # Any scheduler class reads scheduler_config.json; each sampler is then built from it.
    config = DDIMScheduler.load_config(source, subfolder="scheduler")
    assert isinstance(config, dict)
    return config


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to validate requests, read from the configs without any weights."""

    native_size: int
    vae_scale_factor: int


def read_model_info(source: str) -> ModelInfo:
    unet_config = UNet2DConditionModel.load_config(source, subfolder="unet")
    vae_config = AutoencoderKL.load_config(source, subfolder="vae")
    assert isinstance(unet_config, dict) and isinstance(vae_config, dict)
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    return ModelInfo(native_size=int(unet_config["sample_size"]) * scale, vae_scale_factor=scale)
