"""`make bench`: the same model, machine and request, served four ways, side by side.

(a) the bare diffusers pipeline alone on the machine, in a process of its own with torch's
    default threads, called in a loop on its main thread (as a user would run it),
(b) a monolithic one-deployment Ray Serve server shaped like Ray's Stable Diffusion example,
(c) this system (four deployments, continuous batching) over HTTP, default settings, no result
    cache (every request renders),
(d) the bare batched loop (text encoder, UNet steps, VAE) at its best batch size: the limit.

Rounds interleave them: each round runs (a) and (d) in a fresh process with no Ray running,
then starts Ray and measures (c) and (b), then stops Ray; each figure is the median over rounds,
so the machine's drift (about +-15 % over minutes here) falls on every server alike.
Throughput and p50/p99 latency at concurrency 1, 4 and 8 for (b) and (c); ratios c/a (latency
at concurrency 1), c/a (throughput at 8 over the bare sequential loop), c/b (throughput at 8)
and c/d (serving efficiency). Writes JSON, Markdown and a PNG plot. This is a benchmark, not a
test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPTS = [
    "a red apple on a wooden table",
    "a lighthouse on a cliff at dusk",
    "a bowl of ramen, studio lighting",
    "a fox in a snowy forest",
]
CONCURRENCIES = (1, 4, 8)
GUIDANCE = 7.5


def scheduler_class(name: str) -> Any:
    """The diffusers scheduler class of one of this system's sampler names."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    return {
        "ddim": DDIMScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
    }[name]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def drive(call: Callable[[int], None], concurrency: int, total: int) -> dict[str, float]:
    """`total` calls from `concurrency` client threads; latency per call and overall throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            started = time.perf_counter()
            call(index)
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": total,
        "images_per_s": total / elapsed,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 99),
    }


def drive_on_main_thread(
    call: Callable[[int], None], concurrency: int, total: int
) -> dict[str, float]:
    """`drive`, with every call run on the main thread, one at a time, as a plain serving loop
    runs a pipeline: client threads queue their requests and wait for them. On these machines
    torch's OpenMP runs a pipeline about 2x slower when it is called from another thread than the
    main one that first used torch, which would flatter any server compared with it."""
    requests: queue.Queue[tuple[int, threading.Event] | None] = queue.Queue()
    measured: dict[str, float] = {}

    def client_call(index: int) -> None:
        done = threading.Event()
        requests.put((index, done))
        done.wait()

    def clients() -> None:
        measured.update(drive(client_call, concurrency, total))
        requests.put(None)

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    while (request := requests.get()) is not None:
        index, done = request
        call(index)
        done.set()
    thread.join()
    return measured


def sweep(
    call: Callable[[int], None],
    per_client: int,
    driver: Callable[..., dict[str, float]] = drive,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    least: int = 6,
) -> list[dict[str, float]]:
    """A warm-up call, then `per_client` calls per client (at least `least`) at each
    concurrency."""
    call(0)  # warm-up
    return [driver(call, c, max(per_client * c, least)) for c in concurrencies]


def load_pipeline(model_dir: str, scheduler: str) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.scheduler = scheduler_class(scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_call(pipe: Any, steps: int, guidance: float = GUIDANCE) -> Callable[[int], None]:
    """Request `index` to a diffusers pipeline: a prompt from PROMPTS and a seeded generator."""
    import torch

    def call(index: int) -> None:
        pipe(
            PROMPTS[index % len(PROMPTS)],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(index),
            output_type="np",
        )

    return call


def bare_pipeline(pipe: Any, steps: int, runs: int) -> dict[str, float]:
    """(a): one request after another on the main thread. Its throughput is what any number of
    clients get from it (they take turns); its p50 is the latency a lone client sees."""
    call = pipeline_call(pipe, steps)
    call(0)  # warm-up
    return drive_on_main_thread(call, 1, runs)


def batched_limit(pipe: Any, steps: int) -> dict[str, Any]:
    """(d): images/s of the bare batched loop, by batch size; the best one is the machine's
    limit."""
    by_batch = {}
    for batch in (1, 2, 4, 8):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="np")
        started = time.perf_counter()
        rounds = 2
        for _ in range(rounds):
            pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="np")
        by_batch[batch] = batch * rounds / (time.perf_counter() - started)
    best = max(by_batch, key=lambda b: by_batch[b])
    return {"images_per_s_by_batch": by_batch, "best_batch": best, "images_per_s": by_batch[best]}


def bare_round(model_dir: str, scheduler: str, steps: int, runs: int) -> dict[str, Any]:
    """(a) and (d) in a fresh process (`--bare-round`), as a user runs the pipeline alone."""
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--bare-round",
            model_dir,
            "--scheduler",
            scheduler,
            "--steps",
            str(steps),
            "--runs",
            str(runs),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def http_sweep(
    url: str, steps: int, scheduler: str, per_client: int, path: str
) -> list[dict[str, float]]:
    import httpx

    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=16))

    def call(index: int) -> None:
        answer = client.post(
            url + path,
            json={
                "prompt": PROMPTS[index % len(PROMPTS)],
                "steps": steps,
                "seed": index,
                "scheduler": scheduler,
                "guidance_scale": GUIDANCE,
            },
            headers={"Accept": "image/png"},
        )
        answer.raise_for_status()

    return sweep(call, per_client)


def served(
    model_dir: str, steps: int, scheduler: str, per_client: int
) -> dict[str, list[dict[str, float]]]:
    """(c) then (b), one after the other on one local Ray cluster started for them."""
    from ray import serve

    from loadtest.monolithic import build_monolithic
    from serving.cli.serve import local_ray, run_app, start_serve
    from serving.settings import Settings

    settings = Settings(
        model=model_dir,
        result_cache_size=0,  # sweeps reuse seeds: every request must render
        http_port=8765,
        grpc_port=8767,
        metrics_port=8766,
        ray_temp_dir=Path("/tmp/sd-bench-ray"),
    )
    with local_ray(settings):
        start_serve(settings)
        run_app(settings, name="sd-serving")
        system = http_sweep(settings.http_url(), steps, scheduler, per_client, "/v1/generate")
        serve.delete("sd-serving")
        serve.run(build_monolithic(model_dir, scheduler), name="monolithic", route_prefix="/mono")
        monolithic = http_sweep(settings.http_url(), steps, scheduler, per_client, "/mono/generate")
        serve.shutdown()
    return {"monolithic": monolithic, "system": system}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def at(rows: list[dict[str, float]], concurrency: int) -> dict[str, float]:
    return next(row for row in rows if row["concurrency"] == concurrency)


def median_rows(rounds: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Per concurrency, the median of each figure over the rounds."""
    merged = []
    for first in rounds[0]:
        same = [at(rows, int(first["concurrency"])) for rows in rounds]
        row = {key: statistics.median(r[key] for r in same) for key in first}
        row["concurrency"] = first["concurrency"]  # a median of two ints is a float
        merged.append(row)
    return merged


def summarise(results: dict[str, Any]) -> dict[str, float]:
    bare, mono, system = results["bare"], results["monolithic"], results["system"]
    return {
        "latency_c1": at(system, 1)["p50_s"] / bare["p50_s"],
        "throughput_vs_bare_c8": at(system, 8)["images_per_s"] / bare["images_per_s"],
        "throughput_vs_monolithic_c8": at(system, 8)["images_per_s"] / at(mono, 8)["images_per_s"],
        "serving_efficiency_c8": at(system, 8)["images_per_s"] / results["limit"]["images_per_s"],
    }


def markdown(results: dict[str, Any]) -> str:
    ratios, bare, limit = results["ratios"], results["bare"], results["limit"]
    lines = [
        f"# Benchmark: {results['model']} at {results['size']}x{results['size']}, "
        f"{results['steps']} steps, {results['scheduler']}, guidance {GUIDANCE}",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"GPU {results['machine']['gpu'] or 'none'}, torch {results['machine']['torch']}. "
        f"Run {results['date']}; {results['rounds']} interleaved rounds, medians. "
        "(a) and (d) run in a fresh process with torch's default threads and no Ray running; "
        "(b) and (c) over HTTP on a local Ray cluster started for them; (c) with default "
        "settings and no result cache.",
        "",
        "| server | concurrency | images/s | p50 s | p99 s |",
        "|---|---|---|---|---|",
        f"| (a) bare pipeline, one request at a time | 1 | {bare['images_per_s']:.2f} | "
        f"{bare['p50_s']:.2f} | {bare['p99_s']:.2f} |",
    ]
    for key, name in (("monolithic", "(b) monolithic Ray Serve"), ("system", "(c) sd-serving")):
        for row in results[key]:
            lines.append(
                f"| {name} | {row['concurrency']} | {row['images_per_s']:.2f} | "
                f"{row['p50_s']:.2f} | {row['p99_s']:.2f} |"
            )
    lines += [
        "",
        f"(d) bare batched loop: best batch {limit['best_batch']}, "
        f"{limit['images_per_s']:.2f} images/s "
        f"({', '.join(f'b{b}: {v:.2f}' for b, v in limit['images_per_s_by_batch'].items())})",
        "",
        "| ratio | value | goal |",
        "|---|---|---|",
        f"| latency at concurrency 1, c/a (p50) | {ratios['latency_c1']:.2f}x | <= 1.10x |",
        f"| throughput at 8 over the bare loop, c/a | {ratios['throughput_vs_bare_c8']:.2f}x "
        "| >= 1.3x |",
        f"| throughput at 8 over monolithic, c/b | {ratios['throughput_vs_monolithic_c8']:.2f}x "
        "| >= 1.3x |",
        f"| serving efficiency at 8, c/d | {ratios['serving_efficiency_c8']:.2f} | >= 0.85 |",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("monolithic", "(b) monolithic"), ("system", "(c) sd-serving")):
        rows = results[key]
        left.plot(
            [r["concurrency"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=label
        )
        right.plot([r["concurrency"] for r in rows], [r["p50_s"] for r in rows], "o-", label=label)
    left.axhline(results["bare"]["images_per_s"], color="black", linestyle=":", label="(a) bare")
    right.axhline(results["bare"]["p50_s"], color="black", linestyle=":", label="(a) bare, alone")
    left.axhline(
        results["limit"]["images_per_s"], color="grey", linestyle="--", label="(d) batched limit"
    )
    left.set(xlabel="concurrency", ylabel="images/s", title="Throughput")
    right.set(xlabel="concurrency", ylabel="p50 latency (s)", title="Latency")
    left.legend()
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/cpu"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="ddim", choices=("ddim", "dpmpp_2m", "euler"))
    parser.add_argument("--per-client", type=int, default=3, help="requests per client thread")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=8, help="(a) requests per round")
    parser.add_argument("--bare-round", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bare_round:  # the child process of bare_round(): print (a) and (d) as JSON
        pipe = load_pipeline(args.bare_round, args.scheduler)
        bare = bare_pipeline(pipe, args.steps, args.runs)
        print(json.dumps({"bare": bare, "limit": batched_limit(pipe, args.steps)}))
        return 0

    from serving.models.embedded import NATIVE_SIZE, export

    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = str(export(Path("/tmp/sd-bench-model")))
    rounds: dict[str, list[Any]] = {"bare": [], "limit": [], "system": [], "monolithic": []}
    for number in range(1, args.rounds + 1):
        print(f"round {number}/{args.rounds}: (a) and (d), alone ...", flush=True)
        alone = bare_round(model_dir, args.scheduler, args.steps, args.runs)
        rounds["bare"].append(alone["bare"])
        rounds["limit"].append(alone["limit"])
        print(f"round {number}/{args.rounds}: (c) then (b) ...", flush=True)
        for key, rows in served(model_dir, args.steps, args.scheduler, args.per_client).items():
            rounds[key].append(rows)
    limits = rounds["limit"]
    by_batch = {
        batch: statistics.median(limit["images_per_s_by_batch"][batch] for limit in limits)
        for batch in limits[0]["images_per_s_by_batch"]
    }
    best = max(by_batch, key=lambda b: by_batch[b])
    results: dict[str, Any] = {
        "model": "embedded-sd",  # the random-weight SD 1.x model: figures comparable over time
        "size": NATIVE_SIZE,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance_scale": GUIDANCE,
        "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "bare": median_rows([[row] for row in rounds["bare"]])[0],
        "limit": {
            "images_per_s_by_batch": by_batch,
            "best_batch": best,
            "images_per_s": by_batch[best],
        },
        "system": median_rows(rounds["system"]),
        "monolithic": median_rows(rounds["monolithic"]),
        "rounds_raw": rounds,
    }
    results["ratios"] = summarise(results)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(results))
    plot(results, args.out / "bench.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
