"""`make bench-families`: each model family's test model, served by this system next to its bare
diffusers pipeline, at concurrency 1 and 8.

For every family (sd, sd-v, sd-turbo, lcm, sdxl, sdxl-turbo) the embedded test model is exported
and served alone, the way `SD_MODEL=<dir> make serve` serves it (default settings, no result
cache), and every request uses the model's own defaults (steps, guidance, shipped sampler). The
baseline is the family's diffusers pipeline (`DiffusionPipeline.from_pretrained`, its default
torch threads) alone on the machine, run on the main thread as a plain serving loop runs it,
with the same client threads queueing requests and taking turns. Rounds alternate between the
two (all pipelines, then all served models) so that both see the machine in the same state; each
figure is the median over rounds. This is a benchmark, not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.bench import PROMPTS, drive, drive_on_main_thread, machine, pipeline_call, sweep

FAMILIES = ("sd", "sd-v", "sd-turbo", "lcm", "sdxl", "sdxl-turbo")
CONCURRENCIES = (1, 8)


def family_pipeline_call(model_dir: Path, steps: int, guidance: float) -> Callable[[int], None]:
    """The family's own pipeline; called on the main thread, clients taking turns
    (drive_on_main_thread)."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(str(model_dir))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline_call(pipeline, steps, guidance)


def service_call(url: str, model: str) -> Callable[[int], None]:
    import httpx

    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))

    def call(index: int) -> None:
        answer = client.post(
            url + "/v1/generate",
            json={"model": model, "prompt": PROMPTS[index % len(PROMPTS)], "seed": index},
            headers={"Accept": "image/png"},
        )
        answer.raise_for_status()

    return call


def run_round(
    call: Callable[[int], None],
    per_client: int,
    into: dict[int, list[dict[str, float]]],
    driver: Callable[..., dict[str, float]] = drive,
) -> None:
    for row in sweep(call, per_client, driver, CONCURRENCIES, least=4):
        into[int(row["concurrency"])].append(row)


def medians(runs: dict[int, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        str(c): {
            key: statistics.median(run[key] for run in measured)
            for key in ("images_per_s", "p50_s", "p99_s")
        }
        for c, measured in runs.items()
    }


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "# Model families: sd-serving next to each family's diffusers pipeline",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, GPU {info['gpu'] or 'none'}, torch "
        f"{info['torch']}. Run {results['date']}; {results['rounds']} interleaved rounds, "
        "medians. Embedded test models (random weights, 128x128), each model's own defaults "
        "(steps, guidance, shipped sampler). The pipeline runs alone with torch's default "
        "threads; the served model runs with default settings (its UNet engine thread takes the "
        "node's cores).",
        "",
        "| family | steps | guidance | concurrency | pipeline images/s | served images/s | "
        "throughput ratio | pipeline p50 s | served p50 s | served p99 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, row in results["families"].items():
        for c in CONCURRENCIES:
            bare, served = row["pipeline"][str(c)], row["served"][str(c)]
            lines.append(
                f"| {family} | {row['steps']} | {row['guidance_scale']} | {c} | "
                f"{bare['images_per_s']:.2f} | {served['images_per_s']:.2f} | "
                f"{served['images_per_s'] / bare['images_per_s']:.2f}x | {bare['p50_s']:.2f} | "
                f"{served['p50_s']:.2f} | {served['p99_s']:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.families", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/cpu"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-client", type=int, default=2, help="requests per client thread")
    args = parser.parse_args(argv)

    from ray import serve

    from serving.cli.serve import local_ray, run_app, start_serve
    from serving.dataplane.model import ServedModel
    from serving.models.embedded import export
    from serving.settings import ModelSpec, Settings

    base = Settings(
        http_port=8775, grpc_port=8777, metrics_port=8776, ray_temp_dir=Path("/tmp/sd-bench-ray")
    )
    dirs = {f: export(Path("/tmp/sd-bench-families") / f, f) for f in args.families}
    profiles = {
        f: ServedModel.load(base, f, ModelSpec(source=str(d))).profile for f, d in dirs.items()
    }
    pipelines = {
        f: family_pipeline_call(dirs[f], profiles[f].steps, profiles[f].guidance_scale)
        for f in args.families
    }
    runs: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {
        f: {name: {c: [] for c in CONCURRENCIES} for name in ("pipeline", "served")}
        for f in args.families
    }
    for round_index in range(args.rounds):
        # The pipelines alone on the machine (no Ray: its idle processes would slow them), then
        # the served models, one app at a time, as `SD_MODEL=<dir> make serve` runs each.
        for family in args.families:
            print(f"round {round_index + 1}: {family} pipeline ...", flush=True)
            pipeline = pipelines[family]
            run_round(pipeline, args.per_client, runs[family]["pipeline"], drive_on_main_thread)
        with local_ray(base):
            start_serve(base)
            for family in args.families:
                print(f"round {round_index + 1}: {family} served ...", flush=True)
                settings = base.model_copy(
                    update={
                        "model": str(dirs[family]),
                        "model_name": family,
                        "result_cache_size": 0,
                    }
                )
                run_app(settings, name="sd-serving")
                call = service_call(base.http_url(), family)
                run_round(call, args.per_client, runs[family]["served"])
                serve.delete("sd-serving")
            serve.shutdown()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "rounds": args.rounds,
        "families": {
            f: {
                "steps": profiles[f].steps,
                "guidance_scale": profiles[f].guidance_scale,
                "sampler": profiles[f].scheduler,
                "pipeline": medians(runs[f]["pipeline"]),
                "served": medians(runs[f]["served"]),
            }
            for f in args.families
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "families.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "families.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
