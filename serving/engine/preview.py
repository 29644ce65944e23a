"""A cheap preview of a half-denoised image: latents projected straight to RGB, no VAE.

The 4x3 projection approximates the SD 1.x/2.x VAE decoder at latent resolution (1/8 of the
image side); it costs microseconds, so a progress event can carry one at every step."""

from __future__ import annotations

import numpy as np
import torch

# Least-squares fit of VAE-decoded RGB on latent channels for SD 1.x (as used by ComfyUI and
# A1111's "approximate" previews).
LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def latent_preview(latents: torch.Tensor) -> np.ndarray:
    """[1, 4, h, w] latents → [h, w, 3] uint8 RGB."""
    channels = latents[0, :4].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", channels, LATENT_RGB_FACTORS[: channels.shape[0]])
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
