"""`make bench-adapters`: LoRA adapters in the UNet's step-level batch, and image-to-image latency.

    python -m loadtest.adapters [--rounds 5] [--steps 10] [--skip-edits]

1. **Adapters in one batch** (the UNet stage's own work: the engine, plain torch, no Ray). Eight
   requests denoised together (`SD_UNET__MAX_BATCH_SIZE` 8, guidance on: 16 UNet rows) on the
   random-weight SD model at 128x128, with
   * no adapter, on a UNet that never loaded one,
   * no adapter (adapters resident in the UNet, unused by these requests),
   * one adapter for all eight,
   * four adapters, two requests each (the mixed batch),
   * and, as the way a server without mixed batches serves the same mix, diffusers'
     StableDiffusionPipeline with the adapters loaded: one call of 8 images with one adapter, and
     four calls of 2 images, one per adapter (`set_adapters` between them).
   Images per second of denoising (UNet steps only for the engine; the pipeline's calls include
   their text encoding and VAE decode, a few per cent here).
2. **Image-to-image latency**: one edit at a time of the default model's picture, through a
   running service (`sd-serving serve`, started here unless one answers at --url) next to the bare
   StableDiffusionImg2ImgPipeline in this process, requests taking turns; fresh seeds, so the
   result cache never answers.

Rounds alternate between the configurations so that all see the machine in the same state;
each figure is the median over rounds. Writes loadtest/results/cpu/adapters.{json,md}. A
benchmark, not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench import machine

OUT = Path(__file__).parent / "results" / "cpu"
PROMPT = "a red circle on a white background"
ADAPTERS = ("style-a", "style-b", "style-c", "style-d")
BATCH = 8


def engine_setup(
    steps: int,
) -> tuple[Callable[[str], float], Callable[[str], float], Callable[[], float]]:
    """Timed runs of one configuration: (the engine's 8-request batch, the pipeline's way, and
    an engine that never loaded an adapter)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from serving.engine.denoiser import ContinuousBatchingEngine
    from serving.engine.lora import unet_adapters
    from serving.engine.schedulers import SchedulerFactory
    from serving.engine.text import TextEncoderRunner
    from serving.models import embedded, loader
    from serving.models.device import Placement
    from serving.models.loras import LoraLibrary
    from serving.models.random_loras import write_random_lora

    cpu = Placement(torch.device("cpu"), torch.float32)
    source = str(embedded.ensure_cached(Path(tempfile.gettempdir()) / "sd-bench-adapters", "sd"))
    directory = Path(tempfile.mkdtemp(prefix="sd-bench-loras-"))
    for seed, name in enumerate(ADAPTERS, start=1):
        write_random_lora(source, directory / f"{name}.safetensors", seed=seed)
    library = LoraLibrary(directory)
    text = TextEncoderRunner.load(source, cpu, cache_size=16)
    positive, negative = text.encode([PROMPT, ""])

    def new_engine(adapters: Any = None) -> ContinuousBatchingEngine:
        return ContinuousBatchingEngine(
            loader.load_unet(source, cpu),
            SchedulerFactory(loader.load_scheduler_config(source)),
            cpu,
            vae_scale_factor=8,
            max_batch_size=BATCH,
            max_queue=BATCH,
            adapters=adapters,
        )

    plain = new_engine()  # never loads an adapter
    engine = new_engine(
        unet_adapters(library, "sd", max_resident=8, max_resident_bytes=1 << 30, context_dim=256)
    )
    from serving.dataplane.stages import DenoiseJob

    template = DenoiseJob(
        conditioning={"encoder_hidden_states": positive.hidden},
        negative_conditioning={"encoder_hidden_states": negative.hidden},
        height=128,
        width=128,
        steps=steps,
        guidance_scale=7.5,
        seed=0,
        scheduler="ddim",
    )

    def adapters_of(configuration: str, index: int) -> tuple[tuple[str, float], ...]:
        if configuration == "none":
            return ()
        if configuration == "one":
            return ((ADAPTERS[0], 1.0),)
        return ((ADAPTERS[index % len(ADAPTERS)], 1.0),)  # mixed: two requests per adapter

    def timed(on: ContinuousBatchingEngine, configuration: str) -> float:
        jobs = [
            replace(template, seed=index, loras=adapters_of(configuration, index))
            for index in range(BATCH)
        ]
        tickets = [on.submit(job) for job in jobs]
        on.step()  # admits all eight (and loads adapters on the first round) untimed
        started = time.perf_counter()
        while not all(ticket.future.done() for ticket in tickets):
            on.step()
        return BATCH / (time.perf_counter() - started)

    def engine_run(configuration: str) -> float:
        return timed(engine, configuration)

    def plain_run() -> float:
        return timed(plain, "none")

    pipe = StableDiffusionPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    from serving.engine.schedulers import SCHEDULER_CLASSES

    pipe.scheduler = SCHEDULER_CLASSES["ddim"].from_config(pipe.scheduler.config)
    for name in ADAPTERS:
        pipe.load_lora_weights(str(library.get(name).path), adapter_name=name.replace("-", "_"))

    def pipeline_run(configuration: str) -> float:
        calls = [(ADAPTERS[0], BATCH)] if configuration == "one" else []
        if configuration == "mixed":
            calls = [(name, BATCH // len(ADAPTERS)) for name in ADAPTERS]
        started = time.perf_counter()
        for name, images in calls:
            pipe.set_adapters([name.replace("-", "_")])
            pipe(
                [PROMPT] * images,
                num_inference_steps=steps,
                guidance_scale=7.5,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
            )
        return BATCH / (time.perf_counter() - started)

    return engine_run, pipeline_run, plain_run


def adapter_rounds(steps: int, rounds: int) -> dict[str, Any]:
    engine_run, pipeline_run, plain_run = engine_setup(steps)
    for configuration in ("none", "one", "mixed"):  # warm-up, adapters loaded
        engine_run(configuration)
    pipeline_run("one")
    plain_run()
    measured: dict[str, list[float]] = {}
    for round_number in range(rounds):
        print(f"adapters: round {round_number + 1}/{rounds}", flush=True)
        for name, run in (
            ("engine without adapters loaded", plain_run),
            ("engine, no adapter", lambda: engine_run("none")),
            ("engine, one adapter", lambda: engine_run("one")),
            ("engine, 4 adapters mixed", lambda: engine_run("mixed")),
            ("diffusers, one adapter, 1 call of 8", lambda: pipeline_run("one")),
            ("diffusers, 4 adapters, 4 calls of 2", lambda: pipeline_run("mixed")),
        ):
            measured.setdefault(name, []).append(run())
    medians = {name: statistics.median(values) for name, values in measured.items()}
    single = medians["engine, one adapter"]
    return {
        "steps": steps,
        "rounds": rounds,
        "images_per_s": medians,
        "all_rounds": measured,
        "mixed_over_single": medians["engine, 4 adapters mixed"] / single,
        "single_over_none": single / medians["engine, no adapter"],
        "resident_unused_over_plain": medians["engine, no adapter"]
        / medians["engine without adapters loaded"],
        "mixed_over_diffusers_grouped": medians["engine, 4 adapters mixed"]
        / medians["diffusers, 4 adapters, 4 calls of 2"],
    }


def edit_rounds(url: str, rounds: int) -> dict[str, Any]:
    """p50 of one edit at a time: served (default model and settings) vs the bare pipeline."""
    import httpx
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    from loadtest.run import is_up, started_service
    from serving.models import loader
    from serving.settings import Settings

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    source = loader.resolve_source("embedded", Settings())
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    first = secrets.randbelow(2**31)
    seeds = iter(range(first, first + 10_000_000))

    def bare() -> None:
        pipe(
            PROMPT,
            image=picture,
            strength=0.8,
            num_inference_steps=20,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(next(seeds)),
        )

    with started_service(url, already_up=is_up(url)), httpx.Client(timeout=600) as http:

        def served() -> None:
            answer = http.post(
                url + "/v1/generate",
                json={"prompt": PROMPT, "image": encoded, "seed": next(seeds), "steps": 20},
                headers={"Accept": "image/png"},
            )
            answer.raise_for_status()

        bare()
        served()
        latencies: dict[str, list[float]] = {"bare img2img pipeline": [], "served edit": []}
        for round_number in range(rounds):
            print(f"edits: round {round_number + 1}/{rounds}", flush=True)
            for name, call in (("bare img2img pipeline", bare), ("served edit", served)):
                started = time.perf_counter()
                call()
                latencies[name].append(time.perf_counter() - started)
    p50 = {name: statistics.median(values) for name, values in latencies.items()}
    return {
        "model": "embedded (the demo model), 64x64 picture, 20 steps, strength 0.8",
        "rounds": rounds,
        "p50_s": p50,
        "served_over_bare": p50["served edit"] / p50["bare img2img pipeline"],
    }


def markdown(results: dict[str, Any]) -> str:
    info, adapters = results["machine"], results["adapters"]
    lines = [
        "# LoRA adapters in the step-level batch, and image-to-image latency",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}. "
        f"`make bench-adapters`, {results['date']}.",
        "",
        f"## Adapters: 8 requests in one UNet batch (random-weight SD, 128x128, "
        f"{adapters['steps']} DDIM steps, guidance 7.5; median of {adapters['rounds']} rounds)",
        "",
        "| configuration | images/s |",
        "|---|---|",
    ]
    for name, value in adapters["images_per_s"].items():
        lines.append(f"| {name} | {value:.3f} |")
    lines += [
        "",
        f"* mixed batch (4 adapters) / one adapter: **{adapters['mixed_over_single']:.2f}x** "
        "(the goal: at least 0.7x)",
        f"* one adapter / no adapter: {adapters['single_over_none']:.2f}x",
        f"* no adapter, with adapters resident / an engine that never loaded one: "
        f"{adapters['resident_unused_over_plain']:.2f}x (PEFT's wrappers around the adapted "
        "layers)",
        f"* mixed batch / diffusers serving the same mix one adapter at a time: "
        f"{adapters['mixed_over_diffusers_grouped']:.2f}x",
    ]
    edits = results.get("edits")
    if edits:
        p50 = edits["p50_s"]
        lines += [
            "",
            f"## Image-to-image, one at a time ({edits['model']}; median of {edits['rounds']})",
            "",
            "| path | p50 s |",
            "|---|---|",
            *(f"| {name} | {value:.3f} |" for name, value in p50.items()),
            "",
            f"Served / bare: {edits['served_over_bare']:.2f}x.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--skip-edits", action="store_true", help="only the adapter batches")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "adapters": adapter_rounds(args.steps, args.rounds),
    }
    if not args.skip_edits:
        results["edits"] = edit_rounds(args.url, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapters.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.out / "adapters.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
