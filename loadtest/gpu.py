"""`make bench-gpu`: the GPU profile. SD 1.5 at 512², 50 steps, and SDXL at 1024², 30 steps,
built at full size from their published configs with random weights (throughput does not depend
on the weights), each written as a diffusers directory and loaded the way any checkpoint is.

    python -m loadtest.gpu [--profiles sd15,sdxl] [--out loadtest/results/gpu] [--tiny]

For each profile, in one run on one device:
  * the bare diffusers pipeline at batch 1 (`DiffusionPipeline.from_pretrained`, the device's
    half precision, diffusers' defaults: SDPA attention, no compile), one image after another;
  * the served engine stack — the data plane over the in-process stages, i.e. the engines the
    Ray deployments wrap (step-level batching, the compiled denoiser per SD_COMPILE_MODE), minus
    the HTTP/Ray hop that `make bench` and `make bench-protocols` measure on CPU — at
    concurrency 1 and at saturation, images/s with p50/p99 latency;
  * the fraction of the device's dense bf16 compute ceiling each reaches: images/s x TFLOP per
    image (counted with torch's FlopCounterMode on the UNet at the profile's shape) / peak.

`--tiny` runs the same code on the embedded SD and SDXL models at 128², 4 steps, on whatever
device there is (the CPU here): `make test` runs it so the profile's code stays exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from loadtest.bench import PROMPTS, drive, sweep
from serving.dataplane.request import GenerateParams, RequestContext
from serving.dataplane.services import build_services
from serving.dataplane.store import InMemoryStore
from serving.engine.compiled import warm_up_example
from serving.engine.denoiser import UNetCall
from serving.engine.in_process import InProcessStages
from serving.metrics import MemoryMeter
from serving.models.device import Placement, choose_placement
from serving.models.embedded import BETAS, export
from serving.models.tokenizer import write_tokenizer
from serving.settings import Settings

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
SEED = 20261130
# Dense bf16 TFLOP/s by device name (vendor datasheets, SXM parts); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
# The published anchors, for the report.
PUBLISHED_TFLOP = {"sd15": "≈ 87 per 50-step image", "sdxl": "≈ 13.5 per step"}
GOALS = {"sd15": 4.0, "sdxl": 1.0}  # images/s at saturation


@dataclass(frozen=True)
class Profile:
    name: str
    size: int
    steps: int
    guidance: float
    concurrencies: tuple[int, ...]  # 1, then saturation
    per_client: int  # requests per client at each concurrency
    bare_runs: int


FULL = {
    "sd15": Profile("sd15", 512, 50, 7.5, (1, 8, 16), per_client=3, bare_runs=5),
    "sdxl": Profile("sdxl", 1024, 30, 5.0, (1, 4, 8), per_client=3, bare_runs=3),
}
TINY = {
    "sd15": Profile("sd15", 128, 4, 7.5, (1, 4), per_client=1, bare_runs=2),
    "sdxl": Profile("sdxl", 128, 4, 5.0, (1, 4), per_client=1, bare_runs=2),
}

# -- the published architectures (diffusers' config.json of each checkpoint)

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
CLIP_L: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_BIGG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}


def _clip(vocab: int, projection: bool, **config: Any) -> CLIPTextModel:
    """A CLIP text encoder of the published width and depth; its vocabulary is the embedded
    tokenizer's (the hub's is out of reach), which changes nothing but the embedding table."""
    full = CLIPTextConfig(
        vocab_size=vocab,
        max_position_embeddings=77,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        **config,
    )
    return CLIPTextModelWithProjection(full) if projection else CLIPTextModel(full)


def _damped(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    # Random full-depth UNets drift far from unit variance over 50 steps; a quieter output layer
    # keeps latents (and images) finite in half precision. The compute is unchanged.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    return unet


def build_full(name: str, directory: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """Write the profile's full-size model with random weights (seeded) as a diffusers dir."""
    if (directory / "model_index.json").exists():
        return directory
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_tokenizer(Path(scratch))
    vocab = len(tokenizer)
    with torch.device(device):  # initialising billions of weights is much faster on the GPU
        pipe: DiffusionPipeline
        if name == "sd15":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**VAE, sample_size=512),
                text_encoder=_clip(vocab, projection=False, **CLIP_L),
                tokenizer=tokenizer,
                unet=_damped(UNet2DConditionModel(**SD15_UNET)),
                scheduler=PNDMScheduler(
                    **BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
                ),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(
                    **VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True
                ),
                text_encoder=_clip(vocab, projection=False, **CLIP_L),
                text_encoder_2=_clip(vocab, projection=True, **OPENCLIP_BIGG),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=_damped(UNet2DConditionModel(**SDXL_UNET)),
                scheduler=EulerDiscreteScheduler(
                    **BETAS, steps_offset=1, timestep_spacing="leading"
                ),
                force_zeros_for_empty_prompt=True,
            )
    scratch_dir = directory.with_name(f".{directory.name}-partial")
    pipe.to(dtype=dtype).save_pretrained(scratch_dir)
    scratch_dir.rename(directory)
    return directory


def model_dir(name: str, tiny: bool, root: Path, placement: Placement) -> Path:
    if tiny:
        return export(root / f"tiny-{name}", "sd" if name == "sd15" else "sdxl")
    return build_full(name, root / name, placement.device, placement.dtype)


def synchronize(placement: Placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize()


# -- (a) the bare pipeline, batch 1


def unet_tflop_per_image(config: dict[str, Any], latent: int, guided: bool, steps: int) -> float:
    """The UNet's FLOPs for one image (a forward of 2 rows when guided, per step), counted by
    torch's FlopCounterMode on a meta-device copy called as the engine calls it: shapes only,
    nothing computed or allocated."""
    rows = 2 if guided else 1
    meta = torch.device("meta")
    with meta:
        unet = UNet2DConditionModel.from_config(config)
        example = warm_up_example(unet, meta, torch.float32, size=latent)
        conditioning = {k: v.expand(rows, *v.shape[1:]) for k, v in example["conditioning"].items()}
        counter = FlopCounterMode(display=False)
        with counter:
            UNetCall(unet)(
                example["sample"].expand(rows, *example["sample"].shape[1:]),
                example["timesteps"].expand(rows),
                conditioning,
            )
    return float(counter.get_total_flops()) * steps / 1e12


def bare(directory: Path, profile: Profile, placement: Placement) -> dict[str, Any]:
    pipe = DiffusionPipeline.from_pretrained(directory, torch_dtype=placement.dtype)
    pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    flops = unet_tflop_per_image(
        dict(pipe.unet.config),
        profile.size // pipe.vae_scale_factor,
        profile.guidance > 1,
        profile.steps,
    )

    def call(index: int) -> None:
        pipe(
            PROMPTS[index % len(PROMPTS)],
            num_inference_steps=profile.steps,
            guidance_scale=profile.guidance,
            height=profile.size,
            width=profile.size,
            generator=torch.Generator().manual_seed(index),
            output_type="np",
        )
        synchronize(placement)

    call(0)  # warm-up
    return {"tflop_per_image": flops, **drive(call, 1, profile.bare_runs)}


def release(placement: Placement) -> None:
    gc.collect()
    if placement.device.type == "cuda":
        torch.cuda.empty_cache()


# -- (b) the served engine stack


class LoopThread:
    """An asyncio loop in a thread, for blocking clients (bench.drive's threads)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def served(directory: Path, profile: Profile, placement: Placement) -> dict[str, Any]:
    largest = max(profile.concurrencies)
    settings = Settings(
        model=str(directory),
        model_name=profile.name,
        device=placement.device.type,
        result_cache_size=0,
        unet={"max_batch_size": largest},
    )
    meter = MemoryMeter()
    started = time.monotonic()
    stages = {profile.name: InProcessStages.load(settings, profile.name, meter)}
    ready_s = time.monotonic() - started  # loading, and compiling when SD_COMPILE_MODE says so
    data_plane = build_services(settings, dict(stages), InMemoryStore(settings), meter).data_plane
    loop = LoopThread()

    def call(index: int) -> None:
        params = GenerateParams(
            prompt=PROMPTS[index % len(PROMPTS)],
            steps=profile.steps,
            guidance_scale=profile.guidance,
            width=profile.size,
            height=profile.size,
            seed=index,
        )
        loop.run(data_plane.generate(params, RequestContext()))

    try:
        rows = sweep(call, profile.per_client, concurrencies=profile.concurrencies, least=1)
    finally:
        loop.stop()
        for stage in stages.values():
            stage.close()
        release(placement)
    return {"ready_s": ready_s, "compile_mode": settings.compile_mode, "sweep": rows}


# -- the report


def describe_device(placement: Placement) -> dict[str, Any]:
    about: dict[str, Any] = {"torch": torch.__version__, "dtype": str(placement.dtype)}
    if placement.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        about |= {
            "device": props.name,
            "memory_gib": round(props.total_memory / 2**30),
            "cuda": torch.version.cuda,
            "sms": props.multi_processor_count,
        }
    else:
        about |= {"device": f"CPU {platform.processor() or platform.machine()}",
                  "cores": os.cpu_count()}  # fmt: skip
    return about


def peak_tflops(device: dict[str, Any], given: float | None) -> float | None:
    if given is not None:
        return given
    name = str(device.get("device", ""))
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def fraction(images_per_s: float, tflop: float, peak: float | None) -> float | None:
    return None if peak is None else images_per_s * tflop / peak


def profile_report(name: str, result: dict[str, Any], peak: float | None) -> dict[str, Any]:
    tflop = result["bare"]["tflop_per_image"]
    saturation = max(result["served"]["sweep"], key=lambda row: row["images_per_s"])
    lone = result["served"]["sweep"][0]
    return {
        "tflop_per_image": tflop,
        "bare_images_per_s": result["bare"]["images_per_s"],
        "bare_p50_s": result["bare"]["p50_s"],
        "served_c1_images_per_s": lone["images_per_s"],
        "served_c1_p50_s": lone["p50_s"],
        "saturation_concurrency": saturation["concurrency"],
        "saturation_images_per_s": saturation["images_per_s"],
        "saturation_p50_s": saturation["p50_s"],
        "saturation_p99_s": saturation["p99_s"],
        "bare_ceiling_fraction": fraction(result["bare"]["images_per_s"], tflop, peak),
        "saturation_ceiling_fraction": fraction(saturation["images_per_s"], tflop, peak),
        "goal_images_per_s": GOALS.get(name),
    }


def markdown(results: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    device = results["device"]
    lines = [
        f"# GPU profile{' (--tiny)' if results['tiny'] else ''}",
        "",
        f"Device: {device['device']}, torch {device['torch']}, {device['dtype']}; "
        f"dense bf16 peak {results['peak_tflops'] or 'unknown'} TFLOP/s. {results['date']}.",
        "",
        "| profile | UNet TFLOP/image (published) | bare b=1 img/s (p50) | served c=1 img/s (p50) "
        "| served saturation img/s (c, p50/p99) | share of peak: bare / saturated | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["summary"].items():
        spec = results["profiles"][name]
        lines.append(
            f"| {name} {spec['size']}², {spec['steps']} steps | {row['tflop_per_image']:.3g} "
            f"({PUBLISHED_TFLOP.get(name, '')}) | {row['bare_images_per_s']:.2f} "
            f"({row['bare_p50_s']:.2f} s) | {row['served_c1_images_per_s']:.2f} "
            f"({row['served_c1_p50_s']:.2f} s) | {row['saturation_images_per_s']:.2f} "
            f"(c={row['saturation_concurrency']}, {row['saturation_p50_s']:.2f}/"
            f"{row['saturation_p99_s']:.2f} s) | {pct(row['bare_ceiling_fraction'])} / "
            f"{pct(row['saturation_ceiling_fraction'])} | ≥ {row['goal_images_per_s']} img/s |"
        )
    lines += [
        "",
        "Served = the data plane over the in-process stages (the engines the Ray deployments "
        f"wrap), SD_COMPILE_MODE={results['compile_mode']}; bare = diffusers' pipeline, batch 1. "
        "Reproduce: `make bench-gpu` on the device.",
    ]
    return "\n".join(lines) + "\n"


def run(names: list[str], tiny: bool, out: Path, root: Path, peak: float | None) -> dict[str, Any]:
    placement = choose_placement(Settings())  # the service's own choice (SD_DEVICE, SD_DTYPE)
    profiles = TINY if tiny else FULL
    device = describe_device(placement)
    results: dict[str, Any] = {
        "tiny": tiny,
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "peak_tflops": peak_tflops(device, peak),
        "compile_mode": Settings().compile_mode,
        "profiles": {name: asdict(profiles[name]) for name in names},
        "runs": {},
        "summary": {},
    }
    for name in names:
        profile = profiles[name]
        directory = model_dir(name, tiny, root, placement)
        print(f"{name}: bare pipeline, batch 1", flush=True)
        result = {"bare": bare(directory, profile, placement)}
        release(placement)  # the pipeline went with bare()'s frame
        print(f"{name}: served, concurrency {profile.concurrencies}", flush=True)
        result["served"] = served(directory, profile, placement)
        results["runs"][name] = result
        results["summary"][name] = profile_report(name, result, results["peak_tflops"])
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-tiny" if tiny else "gpu"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu", description=__doc__)
    parser.add_argument("--profiles", default="sd15,sdxl")
    parser.add_argument("--tiny", action="store_true", help="embedded models, 128², 4 steps")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu")
    parser.add_argument(
        "--models", type=Path, default=Path(tempfile.gettempdir()) / "sd-serving-bench-gpu",
        help="where the random-weight models are written (reused by later runs)",
    )  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 TFLOP/s")
    args = parser.parse_args(argv)
    names = [name for name in args.profiles.split(",") if name]
    run(names, args.tiny, args.out, args.models, args.peak_tflops)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
