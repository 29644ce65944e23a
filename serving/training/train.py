"""`sd-serving train`: Stable Diffusion's architecture trained from scratch on CPU, on the captioned
world (or any imagefolder dataset with `file_name` and `text`), written as a diffusers directory.

Diffusers' training conventions: first the VAE (reconstruction plus a small KL term), its latent
scaling factor set so latents have unit variance, as SD's 0.18215 was, and checked before the
denoiser sees it (see `check_vae`); then the denoiser and the
text encoder together (the text side must learn, or captions barely differ in embedding space),
with the noise-prediction loss under the model's own DDPM noise schedule, caption dropout for
classifier-free guidance, and an optional EMA of the denoiser. A progress bar and a loss log
(`train-log.jsonl` beside the model) show how it goes: its entries' `stage` is 0 for a VAE step,
1 for a denoiser step, 2 for a conditioning check and 3 for a VAE check.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel, compute_snr
from torch.nn import functional
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from serving.models.embedded import BETAS
from serving.models.tokenizer import write_tokenizer
from serving.training.dataset import pixels, read_examples
from serving.training.evaluator import Adherence, AttributeClassifier, draw, score
from serving.training.world import ATTRIBUTES, batches, every_caption, parse_caption

CHECK_SEED_OFFSET = 10_000  # the VAE check's scenes: a seed no training run uses


class TrainingError(RuntimeError):
    """Training that cannot go on usefully, with the figures that say why."""


@dataclass(frozen=True)
class TrainConfig:
    image_size: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: latents at 1/4 of the image side
    unet_channels: tuple[int, ...] = (64, 128)
    text_width: int = 64
    text_layers: int = 2
    vae_steps: int = 600
    unet_steps: int = 2000  # at least; then on, up to `unet_steps_max`, until the goal is met
    unet_steps_max: int = 4000
    batch_size: int = 32
    learning_rate: float = 3e-4
    caption_dropout: float = 0.1
    kl_weight: float = 1e-6
    # The posterior's initial std (None: diffusers' own initialisation, about 1). Starting it
    # narrow (0.05) cured seed 1's VAE, but the denoiser then learned colour more slowly on both
    # seeds tried (79 % and 62 % at step 1,500 and 1,250), so the default stays diffusers'.
    posterior_std: float | None = None
    # The VAE check before the denoiser trains: fresh scenes encoded to the posterior's mean and
    # decoded must come back within this MSE and, with an evaluator, show their caption's
    # attributes at least this often. Failing, the VAE trains `vae_steps_more` steps more, up to
    # `vae_steps_max` in all, then training stops with the figures.
    vae_max_mse: float = 0.02
    vae_min_adherence: float = 0.95
    vae_steps_more: int = 200
    vae_steps_max: int = 1800
    # Min-SNR loss weighting (diffusers' `--snr_gamma`; None: plain MSE): low-noise timesteps,
    # which refine detail, weigh less against the high-noise ones that decide colour and shape.
    snr_gamma: float | None = 5.0
    ema: bool = True
    seed: int = 0
    # Every this many denoiser steps, the world's 24 captions are drawn with each of the
    # `check_seeds` and scored (0: never): conditioning shows early, not only at the end. Past
    # `unet_steps`, training stops at the first check where every attribute reaches
    # `goal_adherence`; the seeds are not the adherence benchmark's, which stays independent.
    eval_every: int = 250
    check_seeds: tuple[int, ...] = (1000, 1001)
    goal_adherence: float = 0.95
    eval_steps: int = 20  # the service's default steps and guidance
    eval_guidance: float = 7.5
    # Store the UNet and VAE in float16: half the size, and diffusers loads them back as float32.
    # (The text encoder stays float32: transformers would load it as float16.)
    half_weights: bool = False


def read_dataset(directory: Path, size: int) -> list[tuple[np.ndarray, str]]:
    """(image [size, size, 3] uint8, caption) for every row of `metadata.jsonl`."""
    return [(example.image, example.text) for example in read_examples(directory, size)]


def world_batches(config: TrainConfig) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless batches of freshly drawn scenes, in [-1, 1]."""
    for batch, images in batches(config.batch_size, config.image_size, config.seed):
        yield pixels(images), [scene.caption for scene in batch]


def dataset_batches(
    rows: list[tuple[np.ndarray, str]], config: TrainConfig
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    rng = np.random.default_rng(config.seed)
    while True:
        chosen = rng.choice(len(rows), size=config.batch_size)
        yield pixels(np.stack([rows[i][0] for i in chosen])), [rows[i][1] for i in chosen]


def build(
    config: TrainConfig, tokenizer: CLIPTokenizer
) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    blocks = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=config.image_size,
    )
    if config.posterior_std is not None:
        # quant_conv's last 4 output channels are the posterior's log-variance: start them
        # constant.
        with torch.no_grad():
            vae.quant_conv.weight[4:].zero_()
            vae.quant_conv.bias[4:].fill_(2 * math.log(config.posterior_std))
    latent = config.image_size // 2 ** (blocks - 1)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=config.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * len(config.unet_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(config.unet_channels),
        cross_attention_dim=config.text_width,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            num_hidden_layers=config.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        )
    )
    return vae, unet, text_encoder


def train_vae(
    vae: AutoencoderKL,
    batches: Iterator[tuple[torch.Tensor, list[str]]],
    config: TrainConfig,
    log: list[dict[str, float]],
    optimiser: torch.optim.Optimizer,
    steps: range,
) -> None:
    """Reconstruction + KL, for `steps`."""
    vae.train().requires_grad_(True)
    for step in tqdm(steps, desc="VAE", unit="step"):
        images, _ = next(batches)
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        mse = functional.mse_loss(reconstruction, images)
        loss = mse + config.kl_weight * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        log.append({"stage": 0, "step": step, "loss": loss.item(), "mse": mse.item()})
    vae.eval().requires_grad_(False)


@torch.no_grad()
def check_vae(
    vae: AutoencoderKL,
    check: tuple[torch.Tensor, list[str]],
    evaluator: AttributeClassifier | None,
) -> dict[str, float]:
    """Images training does not use, through the posterior's mean and back, as the pipeline
    decodes: their MSE, the posterior's std beside the latents' spread, and (with an evaluator,
    on the world's captions) how often the reconstruction shows its caption's attributes."""
    images, captions = check
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.mean).sample.clamp(-1, 1)
    figures = {
        "mse": functional.mse_loss(reconstruction, images).item(),
        "posterior_std": posterior.std.mean().item(),
        "latent_std": posterior.mean.std().item(),
    }
    worlds = [parse_caption(caption) for caption in captions]
    if evaluator is not None and all(world is not None for world in worlds):
        reconstructed = ((reconstruction + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        figures |= score(evaluator, list(reconstructed.numpy()), captions).accuracy
    return figures


def trained_vae(
    vae: AutoencoderKL,
    batches: Iterator[tuple[torch.Tensor, list[str]]],
    check: tuple[torch.Tensor, list[str]],
    config: TrainConfig,
    log: list[dict[str, float]],
    evaluator: AttributeClassifier | None,
) -> float:
    """The VAE trained until it passes its check (on `check`, a batch from outside the training
    stream, so checking changes nothing training sees); returns the latent scaling factor
    (1 / latent std)."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate * 3)
    done = 0
    steps = config.vae_steps
    while True:
        train_vae(vae, batches, config, log, optimiser, range(done, done + steps))
        done += steps
        figures = check_vae(vae, check, evaluator)
        log.append({"stage": 3, "step": done - 1, **figures})
        summary = ", ".join(f"{name} {value:.4g}" for name, value in figures.items())
        tqdm.write(f"VAE check after {done} steps: {summary}")
        adherence = [value for name, value in figures.items() if name in ATTRIBUTES]
        if figures["mse"] <= config.vae_max_mse and all(
            value >= config.vae_min_adherence for value in adherence
        ):
            break
        steps = min(config.vae_steps_more, config.vae_steps_max - done)
        if steps <= 0:
            raise TrainingError(
                f"the VAE fails its check after {done} steps ({summary}; needs mse ≤ "
                f"{config.vae_max_mse} and each attribute ≥ {config.vae_min_adherence:.0%}): "
                "try another --seed or more --vae-steps"
            )
    with torch.no_grad():
        images, _ = next(batches)
        std = float(vae.encode(images).latent_dist.sample().std())
    return 1.0 / max(std, 1e-6)


def pipeline_of(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def conditioning_check(
    pipeline: StableDiffusionPipeline, evaluator: AttributeClassifier, config: TrainConfig
) -> Adherence:
    """The world's captions drawn once with each check seed, scored by the evaluator."""
    captions = every_caption()
    images = [
        image
        for seed in config.check_seeds
        for image in draw(pipeline, captions, seed, config.eval_steps, config.eval_guidance)
    ]
    return score(evaluator, images, captions * len(config.check_seeds))


def noise_prediction_loss(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    noise_schedule: DDPMScheduler,
    images: torch.Tensor,
    captions: list[str],
    config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """One batch's denoising loss under the model's DDPM schedule, with caption dropout and
    (`config.snr_gamma`) Min-SNR weighting: what training and tuning both minimise."""
    # Caption dropout: the empty prompt learns the unconditional prediction CFG needs.
    drop = torch.rand(len(captions), generator=generator) < config.caption_dropout
    captions = ["" if dropped else text for text, dropped in zip(captions, drop, strict=True)]
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(generator) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(
        0, noise_schedule.config.num_train_timesteps, (len(captions),), generator=generator
    )
    noisy = noise_schedule.add_noise(latents, noise, timesteps)
    tokens = tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    prediction = unet(noisy, timesteps, text_encoder(tokens)[0]).sample
    errors = functional.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
    if config.snr_gamma is not None:
        # For noise prediction: min(SNR, gamma) / SNR, as diffusers' training scripts.
        snr = compute_snr(noise_schedule, timesteps)
        errors = errors * snr.clamp(max=config.snr_gamma) / snr
    return errors.mean()


def train_denoiser(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    batches: Iterator[tuple[torch.Tensor, list[str]]],
    config: TrainConfig,
    log: list[dict[str, float]],
    evaluator: AttributeClassifier | None = None,
) -> None:
    noise_schedule = DDPMScheduler(**BETAS)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate)
    ema = EMAModel(unet.parameters(), decay=0.999) if config.ema else None
    generator = torch.Generator().manual_seed(config.seed)
    unet.train()
    text_encoder.train()
    longest = config.unet_steps_max if evaluator is not None and config.eval_every else 0
    progress = tqdm(range(max(config.unet_steps, longest)), desc="denoiser", unit="step")
    for step in progress:
        images, captions = next(batches)
        loss = noise_prediction_loss(
            unet, text_encoder, vae, tokenizer, noise_schedule, images, captions, config, generator
        )
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        if ema is not None:
            ema.step(unet.parameters())
        log.append({"stage": 1, "step": step, "loss": loss.item()})
        done = step + 1
        if evaluator is not None and config.eval_every and done % config.eval_every == 0:
            adherence = _check_with_ema(unet, text_encoder, vae, tokenizer, ema, evaluator, config)
            log.append({"stage": 2, "step": step, **adherence.accuracy})
            progress.write(f"step {done}: {adherence.summary()}")
            goal = all(value >= config.goal_adherence for value in adherence.accuracy.values())
            if done >= config.unet_steps and goal:
                progress.write(f"step {done}: every attribute ≥ {config.goal_adherence:.0%}")
                break
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    text_encoder.eval()


def _check_with_ema(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    ema: EMAModel | None,
    evaluator: AttributeClassifier,
    config: TrainConfig,
) -> Adherence:
    """The conditioning check on the weights training would write now (the EMA's), after which
    training resumes on its own weights."""
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    text_encoder.eval()
    try:
        return conditioning_check(
            pipeline_of(vae, text_encoder, tokenizer, unet), evaluator, config
        )
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train()
        text_encoder.train()


def train(
    output: Path,
    config: TrainConfig,
    data: Path | None = None,
    evaluator: AttributeClassifier | None = None,
) -> Path:
    """Train and write the pipeline to `output`; `data`: an imagefolder (default: the world).
    With an evaluator, the world's captions are scored every `eval_every` steps."""
    torch.manual_seed(config.seed)
    rows = read_dataset(data, config.image_size) if data is not None else None
    batches = dataset_batches(rows, config) if rows is not None else world_batches(config)
    # The VAE check's batch, drawn from a stream of its own.
    other = replace(config, seed=config.seed + CHECK_SEED_OFFSET)
    check = next(dataset_batches(rows, other) if rows is not None else world_batches(other))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_tokenizer(Path(scratch))
    vae, unet, text_encoder = build(config, tokenizer)
    log: list[dict[str, float]] = []
    scaling = trained_vae(vae, batches, check, config, log, evaluator)
    vae.register_to_config(scaling_factor=scaling)
    train_denoiser(unet, text_encoder, vae, tokenizer, batches, config, log, evaluator)
    if config.half_weights:
        unet, vae = unet.to(torch.float16), vae.to(torch.float16)
    pipeline_of(vae, text_encoder, tokenizer, unet).save_pretrained(output)
    write_tokenizer(output / "tokenizer")  # the classic vocab.json and merges.txt beside it
    (output / "train-log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    (output / "train-config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return output
