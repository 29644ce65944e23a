"""`sd-serving tune`: a trained model tuned on data that arrived after launch, without forgetting
what it knew and without drowning the new data in the old.

Inputs: the base model (a diffusers directory), the original data and one or more new batches,
all imagefolder datasets whose rows name their `source`. A validation set stratified by source
and class is split off first and never trained on; each strategy (`mixing.py`) then tunes a LoRA
adapter (peft; the UNet's and the text encoder's attention and projections, served per request
like any adapter) or, with `full`, every UNet and text-encoder weight, minimising the loss
`sd-serving train` minimises. Before and after, each source's and each class's validation
captions are drawn and scored by the world's evaluator.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from tqdm import tqdm

from serving.models.embedded import BETAS
from serving.models.random_loras import TEXT_TARGETS, UNET_TARGETS
from serving.training import mixing
from serving.training.dataset import DatasetError, Example, digest, read_examples
from serving.training.evaluator import AttributeClassifier, draw, score
from serving.training.train import TrainConfig, noise_prediction_loss
from serving.training.world import parse_caption


@dataclass(frozen=True)
class TuneConfig:
    strategy: mixing.Strategy = "stratified"
    steps: int = 600
    batch_size: int = 16
    learning_rate: float | None = None  # default: 5e-3 for a LoRA, 1e-4 for a full tune
    rank: int = 8
    full: bool = False
    weights: Mapping[str, float] = field(default_factory=dict)  # per source; default 1 each
    validation_fraction: float = 0.1
    seed: int = 0
    # Validation captions are drawn once per seed, as the service draws them by default.
    eval_seeds: tuple[int, ...] = (0, 1)
    eval_steps: int = 20
    eval_guidance: float = 7.5


@dataclass(frozen=True)
class TuningData:
    """The examples split once, before any strategy trains: every strategy sees the same."""

    training: list[Example]  # in arrival order: the original, then each batch
    validation: list[Example]
    original_sources: list[str]
    new_sources: list[str]
    manifest: list[dict[str, str]]  # each dataset's path, role and sha256

    @property
    def sources(self) -> list[str]:
        return self.original_sources + self.new_sources


def load_data(
    original: Path, new: Sequence[Path], image_size: int, config: TuneConfig
) -> TuningData:
    """Read every dataset (each row must name its source), check the sources apart, and split
    off the validation set."""
    if not new:
        raise DatasetError("no new batch to tune on")
    required = ("file_name", "text", "source")
    first = read_examples(original, image_size, required)
    original_sources = list(dict.fromkeys(example.source for example in first))
    examples = list(first)
    new_sources: list[str] = []
    for directory in new:
        batch = read_examples(directory, image_size, required)
        clashes = sorted({e.source for e in batch} & set(original_sources))
        if clashes:
            raise DatasetError(
                f"{directory}: source {clashes[0]!r} is the original data's; a new batch needs "
                "a source of its own"
            )
        new_sources += [s for s in dict.fromkeys(e.source for e in batch) if s not in new_sources]
        examples += batch
    training, validation = mixing.split(examples, config.validation_fraction, config.seed)
    arrival = {id(example): index for index, example in enumerate(examples)}
    training.sort(key=lambda example: arrival[id(example)])
    manifest = [{"role": "original", "path": str(original), "sha256": digest(original)}] + [
        {"role": "new", "path": str(directory), "sha256": digest(directory)} for directory in new
    ]
    return TuningData(training, validation, original_sources, new_sources, manifest)


@dataclass(frozen=True)
class Evaluation:
    """Adherence per source and per class on the validation set: for each, every attribute's
    accuracy, their mean, and the number of images."""

    sources: dict[str, dict[str, float]]
    classes: dict[str, dict[str, float]]


def evaluate(
    pipeline: StableDiffusionPipeline,
    validation: Sequence[Example],
    evaluator: AttributeClassifier,
    config: TuneConfig,
) -> Evaluation:
    """The validation captions (those of the world) drawn with each eval seed and scored,
    grouped by source and by class."""
    scored = [example for example in validation if parse_caption(example.text) is not None]
    if not scored:
        raise DatasetError("no validation caption the evaluator can score (the world's only)")
    prompts = [example.text for example in scored]
    images = [
        image
        for seed in config.eval_seeds
        for start in range(0, len(prompts), 32)
        for image in draw(
            pipeline, prompts[start : start + 32], seed, config.eval_steps, config.eval_guidance
        )
    ]
    drawn = scored * len(config.eval_seeds)
    by_source: dict[str, list[int]] = defaultdict(list)
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(drawn):
        by_source[example.source].append(index)
        by_class[example.label].append(index)

    def figures(indices: list[int]) -> dict[str, float]:
        adherence = score(evaluator, [images[i] for i in indices], [drawn[i].text for i in indices])
        values = adherence.accuracy
        return {**values, "mean": sum(values.values()) / len(values), "images": len(indices)}

    return Evaluation(
        {source: figures(indices) for source, indices in sorted(by_source.items())},
        {label: figures(indices) for label, indices in sorted(by_class.items())},
    )


def load_base(base: str) -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(
        base, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tune(
    base: str,
    data: TuningData,
    output: Path,
    config: TuneConfig,
    evaluator: AttributeClassifier,
) -> dict[str, Any]:
    """One strategy's tuning run, written to `output` (the adapter, or with `full` the whole
    model, and `tune.json`: the manifest and the validation figures); returns that record."""
    weights = mixing.source_weights(config.weights, data.sources)
    torch.manual_seed(config.seed)
    pipeline = load_base(base)
    unet, text_encoder = pipeline.unet, pipeline.text_encoder
    parameters = _trainable(pipeline, config)
    learning_rate = config.learning_rate or (1e-4 if config.full else 5e-3)
    optimiser = torch.optim.AdamW(parameters, lr=learning_rate)
    stream = mixing.order(config.strategy, data.training, data.new_sources, weights, config.seed)
    batches = mixing.batches(stream, config.batch_size)
    loss_config = TrainConfig()  # the base recipe's caption dropout and Min-SNR weighting
    generator = torch.Generator().manual_seed(config.seed)
    noise_schedule = DDPMScheduler(**BETAS)
    unet.train()
    text_encoder.train()
    started = time.monotonic()
    losses = []
    for _ in tqdm(range(config.steps), desc=f"tune {config.strategy}", unit="step"):
        images, captions = next(batches)
        loss = noise_prediction_loss(
            unet,
            text_encoder,
            pipeline.vae,
            pipeline.tokenizer,
            noise_schedule,
            images,
            captions,
            loss_config,
            generator,
        )
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        losses.append(loss.item())
    seconds = time.monotonic() - started
    unet.eval()
    text_encoder.eval()
    evaluation = evaluate(pipeline, data.validation, evaluator, config)
    _save(pipeline, output, config)
    record = {
        "base": base,
        "strategy": config.strategy,
        "config": {**asdict(config), "weights": weights, "learning_rate": learning_rate},
        "data": data.manifest,
        "training_examples": len(data.training),
        "validation_examples": len(data.validation),
        "seconds": round(seconds, 1),
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "sources": evaluation.sources,
        "classes": evaluation.classes,
    }
    (output / "tune.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _trainable(pipeline: StableDiffusionPipeline, config: TuneConfig) -> list[torch.nn.Parameter]:
    """What the run trains: every UNet and text-encoder weight (`full`), or LoRA adapters added
    to both, everything else frozen."""
    unet, text_encoder = pipeline.unet, pipeline.text_encoder
    pipeline.vae.requires_grad_(False)
    if config.full:
        return [*unet.parameters(), *text_encoder.parameters()]
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=config.rank, lora_alpha=config.rank, target_modules=list(UNET_TARGETS))
    )
    # PEFT directly: transformers' own add_adapter wants a newer PEFT than PyPI has.
    inject_adapter_in_model(
        LoraConfig(r=config.rank, lora_alpha=config.rank, target_modules=list(TEXT_TARGETS)),
        text_encoder,
    )
    return [p for p in (*unet.parameters(), *text_encoder.parameters()) if p.requires_grad]


def _save(pipeline: StableDiffusionPipeline, output: Path, config: TuneConfig) -> None:
    """The whole model (`full`), or the adapters in diffusers' layout, served like any other."""
    output.mkdir(parents=True, exist_ok=True)
    if config.full:
        pipeline.save_pretrained(output)
        return
    StableDiffusionPipeline.save_lora_weights(
        str(output),
        unet_lora_layers=get_peft_model_state_dict(pipeline.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipeline.text_encoder),
        safe_serialization=True,
    )


def compare(
    base: str,
    original: Path,
    new: Sequence[Path],
    output: Path,
    config: TuneConfig,
    strategies: Sequence[mixing.Strategy],
    evaluator: AttributeClassifier,
    parent_adapter: Path | None = None,
) -> dict[str, Any]:
    """The model in service evaluated (the base, with `parent_adapter` if the version served is
    an adapter), then each strategy tuned from the base on the same split (into
    output/<strategy>); the figures of all, as the report reads them. Data and weights are
    checked before any training."""
    pipeline = load_base(base)
    image_size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    data = load_data(original, new, image_size, config)
    mixing.source_weights(config.weights, data.sources)
    if parent_adapter is not None:
        pipeline.load_lora_weights(str(parent_adapter))
    before = evaluate(pipeline, data.validation, evaluator, config)
    runs = {
        strategy: tune(base, data, output / strategy, replace(config, strategy=strategy), evaluator)
        for strategy in strategies
    }
    return {
        "base": base,
        "data": data.manifest,
        "original_sources": data.original_sources,
        "new_sources": data.new_sources,
        "before": {"sources": before.sources, "classes": before.classes},
        "runs": runs,
    }
