"""The `sd-serving` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from serving.cli import feedback, promote, tune

# The embedded families, named here so that `--help` needs no torch import.
FAMILY_NAMES = ("sd", "sd-v", "sd-turbo", "lcm", "sdxl", "sdxl-turbo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-serving", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service locally on Ray Serve")
    serve.add_argument(
        "--model",
        help="'embedded' (the demo model), 'embedded-<family>' (random weights), a diffusers "
        "directory or a Hub id (SD_MODEL)",
    )
    serve.add_argument("--host", dest="http_host", help="HTTP host (SD_HTTP_HOST)")
    serve.add_argument("--port", dest="http_port", type=int, help="HTTP port (SD_HTTP_PORT)")
    serve.add_argument("--grpc-port", dest="grpc_port", type=int, help="gRPC port (SD_GRPC_PORT)")

    generate = commands.add_parser("generate", help="ask a running service for an image")
    generate.add_argument("prompt")
    generate.add_argument(
        "--image", type=Path, help="image-to-image: the picture to start from (PNG, JPEG, WebP)"
    )
    _generation_arguments(generate)
    edit = commands.add_parser(
        "edit", help="ask a running service to edit a picture (image-to-image; as generate --image)"
    )
    edit.add_argument("image", type=Path, help="the picture to start from (PNG, JPEG, WebP)")
    edit.add_argument("prompt")
    _generation_arguments(edit)

    gateway = commands.add_parser(
        "gateway", help="forward HTTP to a Serve app elsewhere (the chart's kuberay mode)"
    )
    gateway.add_argument("--upstream", required=True, help="e.g. http://sd-serving-serve-svc:8000")
    gateway.add_argument("--host", default="0.0.0.0")
    gateway.add_argument("--port", type=int, default=8080)

    plan = commands.add_parser(
        "plan", help="size replicas, GPUs, memory and bandwidth for a target load and SLO"
    )
    plan.add_argument("profile", type=Path, help="YAML: load, mix, SLO and per-GPU stage costs")
    plan.add_argument("--rps", type=float, help="override requests_per_s")
    plan.add_argument("--slo", type=float, help="override slo_p95_s (seconds)")

    export = commands.add_parser(
        "export-model", help="write an embedded test model as a diffusers pipeline directory"
    )
    export.add_argument("directory", type=Path)
    export.add_argument(
        "--family",
        default="sd",
        choices=FAMILY_NAMES,
        help="architecture and scheduler config: sd (the default model), sd-v (v-prediction "
        "SD 2.x), sd-turbo, lcm, sdxl, sdxl-turbo",
    )

    lora = commands.add_parser(
        "make-lora",
        help="write a LoRA adapter with random weights for a model (to try the `loras` field)",
    )
    lora.add_argument("path", type=Path, help="the .safetensors file to write (into SD_LORA_DIR)")
    lora.add_argument(
        "--model", default="embedded", help="its source, as SD_MODEL (default: embedded)"
    )
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--rank", type=int, default=4)
    lora.add_argument("--layout", choices=["diffusers", "kohya"], default="diffusers")

    world = commands.add_parser(
        "world",
        help="write the captioned world (coloured shapes, captioned) as an imagefolder dataset",
    )
    world.add_argument("directory", type=Path)
    world.add_argument("--count", type=int, default=2400, help="images (24 captions cycle)")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--size", type=int, default=64, help="pixels per side")
    world.add_argument(
        "--new-concepts",
        action="store_true",
        help="the tuning scenario's new batch instead: crosses (a shape the demo model never "
        "saw; four in five scenes) and yellow shapes, source sd-serving-world-new-concepts",
    )

    train = commands.add_parser(
        "train",
        help="train Stable Diffusion's architecture from scratch on CPU (the captioned world, or "
        "--data) and write a diffusers directory",
    )
    train.add_argument("directory", type=Path)
    train.add_argument("--data", type=Path, help="an imagefolder dataset (default: the world)")
    train.add_argument("--vae-steps", type=int)
    train.add_argument("--unet-steps", type=int, help="denoiser steps at least")
    train.add_argument(
        "--unet-steps-max",
        type=int,
        help="denoiser steps at most: past --unet-steps, training stops at the first check "
        "where every attribute reaches the goal",
    )
    train.add_argument("--batch-size", type=int)
    train.add_argument("--image-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--no-ema", action="store_true", help="keep the last weights, not an EMA")
    train.add_argument(
        "--half",
        action="store_true",
        help="store the UNet and VAE in float16 (half the size; diffusers loads them as float32)",
    )
    train.add_argument(
        "--posterior-std",
        type=float,
        help="start the VAE posterior's std here (e.g. 0.05) rather than diffusers' initialisation",
    )
    train.add_argument(
        "--eval-every",
        type=int,
        help="score the world's captions every N denoiser steps (0: never; the world only)",
    )
    tune.add_parser(commands)
    promote.add_parser(commands)
    feedback.add_parsers(commands)
    images = commands.add_parser(
        "purge-images",
        help="delete stored images (SD_IMAGE_STORE_URL, or the files Redis's index points to) "
        "older than the retention period",
    )
    images.add_argument("--older-than-s", type=float, help="default: SD_IMAGE_RETENTION_S (7 days)")
    return parser


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    """What `generate` and `edit` share: where to send, how to draw, where to write."""
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("image.png"),
        help="file to write; with several images, -1, -2, ... are appended",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--grpc", action="store_true", help="use the KServe v2 gRPC API (no progress bar)"
    )
    parser.add_argument("--grpc-target", default="127.0.0.1:9000", help="host:port for --grpc")
    parser.add_argument(
        "--no-progress", action="store_true", help="one synchronous request, no progress bar"
    )
    parser.add_argument(
        "--model",
        help="served model to use (GET /v1/models lists them), or name@version for one of its "
        "versions; default: the service's default over HTTP, sd-embedded over gRPC (KServe v2 "
        "names the model in every request)",
    )
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--negative-prompt")
    parser.add_argument("--num-images", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance-scale", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--scheduler")
    parser.add_argument(
        "--strength",
        type=float,
        help="with an image: 0 < strength <= 1 (default 0.8; 1 with --mask)",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        help="inpainting, with an image: a picture its size, white where to repaint",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME[:SCALE]",
        help="apply a LoRA adapter (GET /v1/loras lists them), scale 1 unless given; repeat for "
        "several",
    )
    parser.add_argument(
        "--priority",
        choices=["interactive", "batch"],
        help="interactive (the default) is served before batch when the UNet is busy",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command in ("generate", "edit"):
        return _generate(args)
    if args.command == "gateway":
        from serving.cli.gateway import run_gateway

        return run_gateway(args.upstream, args.host, args.port)
    if args.command == "plan":
        from serving.cli.plan import load_request, plan, report

        changes: dict[str, Any] = {}
        if args.rps is not None:
            changes["requests_per_s"] = args.rps
        if args.slo is not None:
            changes["slo_p95_s"] = args.slo
        request = load_request(args.profile, changes)
        print(report(request, plan(request)))
        return 0
    if args.command == "export-model":
        from serving.models.embedded import export

        directory = export(args.directory, args.family)
        print(f"embedded {args.family} model written to {directory}")
        return 0
    if args.command == "make-lora":
        return _make_lora(args)
    if args.command == "world":
        from serving.training.world import NEW_SOURCE, SOURCE, new_concepts, write_dataset

        if args.count < 1 or args.size < 16:
            print("sd-serving: world: --count must be ≥ 1 and --size ≥ 16", file=sys.stderr)
            return 2
        drawn_from, source = (new_concepts(), NEW_SOURCE) if args.new_concepts else (None, SOURCE)
        directory = write_dataset(
            args.directory, args.count, args.seed, args.size, drawn_from, source
        )
        print(f"{args.count} captioned images and metadata.jsonl written to {directory}")
        return 0
    if args.command == "train":
        return _train(args)
    if args.command == "tune":
        return tune.run(args)
    if args.command == "promote":
        return promote.run(args)
    if args.command == "feedback":
        return feedback.run_feedback(args)
    if args.command == "export-feedback":
        return feedback.run_export(args)
    if args.command == "purge-images":
        return _purge_images(args)
    return 2


def _make_lora(args: argparse.Namespace) -> int:
    from serving.models import loader
    from serving.models.random_loras import write_random_lora
    from serving.settings import Settings

    if args.path.suffix != ".safetensors" or args.rank < 1:
        print("sd-serving: make-lora: write a .safetensors file, rank ≥ 1", file=sys.stderr)
        return 2
    source = loader.resolve_source(args.model, Settings())
    path = write_random_lora(source, args.path, seed=args.seed, rank=args.rank, layout=args.layout)
    print(f"adapter {path.stem!r} (rank {args.rank}, {args.layout} layout) written to {path}")
    return 0


def _lora_choice(text: str) -> tuple[str, float]:
    """`name` or `name:scale` → (name, scale)."""
    name, separator, scale = text.rpartition(":")
    if not separator:
        return text, 1.0
    try:
        return name, float(scale)
    except ValueError:
        raise ValueError(f"{text!r}: the scale after ':' must be a number") from None


def _purge_images(args: argparse.Namespace) -> int:
    from serving.dataplane.images import FsspecImages, image_store
    from serving.settings import Settings

    settings = Settings()
    store = image_store(settings, shared=settings.redis_url is not None)
    if not isinstance(store, FsspecImages):
        print(
            "sd-serving: purge-images: images are kept in memory (no SD_IMAGE_STORE_URL or "
            "SD_REDIS_URL): they go with the process",
            file=sys.stderr,
        )
        return 2
    older_than_s = (
        args.older_than_s if args.older_than_s is not None else settings.image_retention_s
    )
    deleted = store.purge(older_than_s)
    print(f"{deleted} images older than {older_than_s:g} s deleted from {store.url}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from serving.training.dataset import DatasetError
    from serving.training.train import TrainConfig, TrainingError, train

    given = {
        key: value
        for key in (
            "vae_steps",
            "unet_steps",
            "unet_steps_max",
            "batch_size",
            "image_size",
            "seed",
            "eval_every",
        )
        if (value := getattr(args, key)) is not None
    }
    if args.posterior_std is not None:
        if not 0 < args.posterior_std <= 1:
            print("sd-serving: train: --posterior-std must be in (0, 1]", file=sys.stderr)
            return 2
        given["posterior_std"] = args.posterior_std
    if any(value < 0 for value in given.values()) or given.get("batch_size", 1) < 1:
        print(
            "sd-serving: train: steps, sizes and seed must be ≥ 0 (batch size ≥ 1)", file=sys.stderr
        )
        return 2
    config = replace(TrainConfig(), **given, ema=not args.no_ema, half_weights=args.half)
    evaluator = None
    if config.eval_every and args.data is None:
        from serving.settings import Settings
        from serving.training.evaluator import cached_evaluator

        evaluator = cached_evaluator(Settings().cache_dir)
    try:
        directory = train(args.directory, config, args.data, evaluator)
    except DatasetError as error:
        print(f"sd-serving: train: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"sd-serving: train: {error}", file=sys.stderr)
        return 1
    print(f"trained model written to {directory} (loss log: {directory / 'train-log.jsonl'})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from serving.cli.kserve_argv import import_kserve
    from serving.settings import Settings

    import_kserve()  # before anything imports it with our flags in sys.argv
    from serving.cli.serve import run_local

    overrides: dict[str, Any] = {
        key: value
        for key in ("model", "http_host", "http_port", "grpc_port")
        if (value := getattr(args, key)) is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:  # a bad or unknown SD_* variable: say which, and stop
        problems = "; ".join(
            ".".join(str(part) for part in (*item["loc"], ""))
            + str(item["msg"]).removeprefix("Value error, ")
            for item in error.errors()
        )
        print(f"sd-serving: settings: {problems}", file=sys.stderr)
        return 2
    return run_local(settings)


class ProgressBar:
    """A tqdm bar on stderr fed by the job's step events."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=None, unit="step", desc="denoising", file=sys.stderr, leave=True)

    def update(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *_: object) -> None:
        self._bar.close()


def _generate(args: argparse.Namespace) -> int:
    import grpc
    import httpx

    from serving.client import Client, ClientError, GrpcClient

    fields = {
        key: getattr(args, key)
        for key in (
            "negative_prompt",
            "num_images",
            "width",
            "height",
            "steps",
            "guidance_scale",
            "seed",
            "scheduler",
            "priority",
            "image",
            "strength",
            "mask",
        )
    }
    try:
        fields["loras"] = [_lora_choice(text) for text in args.lora] or None
    except ValueError as error:
        print(f"error: --lora {error}", file=sys.stderr)
        return 2
    if args.model and not args.grpc:
        fields["model"] = args.model
    suffix = args.output.suffix.lstrip(".").lower()
    fields["output_format"] = {"jpg": "jpeg"}.get(suffix, suffix) or "png"
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
    try:
        if args.grpc:
            model = {"model": args.model} if args.model else {}
            with GrpcClient(args.grpc_target, api_key=api_key, **model) as grpc_client:
                result = grpc_client.generate(args.prompt, **fields)
        else:
            with Client(args.url, api_key=api_key) as client:
                if args.no_progress:
                    result = client.generate(args.prompt, **fields)
                else:
                    with ProgressBar() as bar:
                        result = client.generate_with_progress(
                            args.prompt, on_progress=bar.update, **fields
                        )
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (httpx.TransportError, grpc.RpcError) as error:  # connection refused, DNS, timeouts
        where = args.grpc_target if args.grpc else args.url
        print(f"error: cannot reach {where}: {error}", file=sys.stderr)
        return 1
    for index, image in enumerate(result.images):
        path = args.output
        if len(result.images) > 1:
            path = path.with_name(f"{path.stem}-{index + 1}{path.suffix}")
        image.save(path)
        total = result.timings_ms.get("total")  # gRPC answers carry no timings
        took = "" if total is None else f"  {total / 1000:.2f} s"
        version = "" if result.model_version is None else f"  version {result.model_version}"
        cached = "  (cached)" if result.cached else ""
        # The digest names the image to `sd-serving feedback`.
        print(f"{path}  seed {image.seed}{version}{took}{cached}  image {image.digest}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
