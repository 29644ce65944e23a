"""Images → the VAE's latent distribution, as the diffusers image-to-image pipelines encode them.

The encoder returns the distribution (mean and standard deviation, scaled as the denoiser's
latents are), not a sample: the sample is drawn by the denoiser from the request's generator,
before its noise, in the order StableDiffusionImg2ImgPipeline draws them, so a served edit equals
the pipeline's for the same seed. Images come in as the pipelines' VaeImageProcessor leaves
them: [3, H, W] float32 in [-1, 1], H and W multiples of the VAE's scale factor."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

from serving.dataplane.stages import ImageLatents
from serving.errors import InvalidArgument
from serving.models import loader
from serving.models.device import Placement


class VaeEncoderRunner:
    def __init__(self, vae: AutoencoderKL, placement: Placement) -> None:
        # Latents normalised per channel (not SD 1.x/2.x or SDXL) would need their statistics.
        self._normalised = getattr(vae.config, "latents_mean", None) is not None
        self._vae = vae
        self._placement = placement
        self._scaling = float(vae.config.scaling_factor)

    @classmethod
    def load(cls, source: str, placement: Placement) -> VaeEncoderRunner:
        return cls(loader.load_vae(source, placement), placement)

    @torch.inference_mode()
    def encode(self, images: list[np.ndarray]) -> list[ImageLatents]:
        """Each image's latent distribution, batching images of equal shape."""
        if self._normalised:
            raise InvalidArgument(
                "image", "this model's VAE normalises latents per channel; it takes no image input"
            )
        encoded: list[ImageLatents | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(index)
        for indices in by_shape.values():
            batch = torch.from_numpy(np.stack([images[i] for i in indices]))
            batch = batch.to(device=self._placement.device, dtype=self._vae.dtype)
            distribution = self._vae.encode(batch).latent_dist
            mean = (distribution.mean * self._scaling).float().cpu().numpy()
            std = (distribution.std * self._scaling).float().cpu().numpy()
            for position, index in enumerate(indices):
                encoded[index] = ImageLatents(mean[position], std[position])
        return [item for item in encoded if item is not None]
