"""Latents → uint8 RGB images, as the diffusers pipelines' VAE decode and postprocess."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

from serving.models import loader
from serving.models.device import Placement


class VaeDecoderRunner:
    def __init__(self, vae: AutoencoderKL, placement: Placement) -> None:
        self._vae = vae
        self._placement = placement
        config = vae.config
        self._scaling = float(config.scaling_factor)
        # Models whose latents are normalised per channel (not SD 1.x/2.x or SDXL) say so.
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        self._mean_std = None
        if mean is not None and std is not None:
            channels = len(mean)
            self._mean_std = (
                torch.tensor(mean).view(1, channels, 1, 1),
                torch.tensor(std).view(1, channels, 1, 1),
            )

    @classmethod
    def load(cls, source: str, placement: Placement) -> VaeDecoderRunner:
        """The VAE of a diffusers directory (in float32 where the model needs it)."""
        return cls(loader.load_vae(source, placement), placement)

    @torch.inference_mode()
    def decode(self, latents: list[np.ndarray]) -> list[np.ndarray]:
        """Decode [C, h, w] latents, batching those of equal shape; returns [H, W, 3] uint8 each."""
        images: list[np.ndarray | None] = [None] * len(latents)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(latents):
            by_shape.setdefault(item.shape, []).append(index)
        for indices in by_shape.values():
            batch = torch.from_numpy(np.stack([latents[i] for i in indices]))
            batch = batch.to(device=self._placement.device, dtype=self._vae.dtype)
            if self._mean_std is None:
                batch = batch / self._scaling
            else:
                mean, std = (t.to(batch.device, batch.dtype) for t in self._mean_std)
                batch = batch * std / self._scaling + mean
            decoded = self._vae.decode(batch, return_dict=False)[0]
            # VaeImageProcessor.postprocess: denormalize, to numpy, round to uint8.
            pixels = (decoded / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
            as_uint8 = (pixels * 255).round().astype(np.uint8)
            for position, index in enumerate(indices):
                images[index] = as_uint8[position]
        return [image for image in images if image is not None]
