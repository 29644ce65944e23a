"""LoRA adapters with random weights for a model, written as users' files are: diffusers' layout
(`save_lora_weights`) or kohya's (A1111). The parity tests and the adapter benchmark use them;
`sd-serving make-lora` writes one for trying the `loras` field on a model without adapters.

Every adapter is built from a seed with PEFT (`LoraConfig`, rank and targets as asked), its
up-projections drawn non-zero so that it visibly changes the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from serving.models import loader
from serving.models.device import Placement

UNET_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
CPU = Placement(torch.device("cpu"), torch.float32)


def write_random_lora(
    source: str,
    path: Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: int | None = None,
    std: float = 0.25,
    text_encoder: bool = False,
    layout: Literal["diffusers", "kohya"] = "diffusers",
) -> Path:
    """An adapter for the UNet (and the first text encoder, with `text_encoder`) of the
    diffusers directory `source`, written to `path` (a `.safetensors` file)."""
    generator = torch.Generator().manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(UNET_TARGETS))
    unet: UNet2DConditionModel = loader.load_unet(source, CPU)
    unet.add_adapter(config, adapter_name="random")
    layers = {"unet_lora_layers": _drawn(unet, generator, std)}
    if text_encoder:
        encoder = loader.load_text_encoders(source, CPU)[0]
        text_config = LoraConfig(
            r=rank, lora_alpha=alpha or rank, target_modules=list(TEXT_TARGETS)
        )
        # PEFT directly: transformers' own add_adapter wants a newer PEFT than PyPI has.
        inject_adapter_in_model(text_config, encoder, adapter_name="random")
        layers["text_encoder_lora_layers"] = _drawn(encoder, generator, std)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "kohya":
        # diffusers' own conversion to kohya's names (lora_unet_…, lora_te_…, with alphas).
        prefixed = {
            f"{'unet' if part == 'unet_lora_layers' else 'text_encoder'}.{key}": value
            for part, weights in layers.items()
            for key, value in weights.items()
        }
        save_file(convert_state_dict_to_kohya(prefixed), str(path))
        return path
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), weight_name=path.name, safe_serialization=True, **layers
    )
    return path


def _drawn(
    model: torch.nn.Module, generator: torch.Generator, std: float
) -> dict[str, torch.Tensor]:
    """The adapter's weights with non-zero up-projections (PEFT starts them at zero)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif "lora_A" in name:
                scale = parameter.shape[1] ** -0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    state: dict[str, torch.Tensor] = get_peft_model_state_dict(model, adapter_name="random")
    return {key: value.contiguous() for key, value in state.items()}
