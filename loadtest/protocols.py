"""`make bench-protocols`: what each protocol costs over the bare generation, one request at a time.

    python -m loadtest.protocols [--url http://127.0.0.1:8000] [--grpc-target 127.0.0.1:9000]

The bare diffusers pipeline (same model, steps, scheduler) runs in this process, taking turns
with every protocol of a running service (started here when none answers), with fresh seeds so
the result cache never answers. Prints and writes p50 latency and overhead per protocol (JSON +
Markdown). A benchmark, not a test: nothing asserts on time.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from loadtest.bench import PROMPTS, load_pipeline, machine, pipeline_call
from loadtest.run import is_up, started_service

Call = Callable[[int], None]
BARE = "bare StableDiffusionPipeline (in this process)"


def bare_call(steps: int) -> Call:
    from serving.models.embedded import export

    pipe = load_pipeline(str(export(Path("/tmp/sd-bench-model"))), "dpmpp_2m")
    return pipeline_call(pipe, steps)


def interleaved_p50(calls: dict[str, Call], runs: int) -> dict[str, float]:
    """Round-robin over the protocols, so the machine's drift spreads over all of them. Seeds
    never repeat: every request runs all the stages (no result-cache answers)."""
    first = secrets.randbelow(2**31)  # fresh across runs too: a reused seed is a cache hit
    seeds = iter(range(first, first + 10_000_000))
    for call in calls.values():
        call(next(seeds))  # warm-up
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for round_number in range(runs):
        print(f"round {round_number + 1}/{runs}", flush=True)
        for name, call in calls.items():
            started = time.perf_counter()
            call(next(seeds))
            latencies[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in latencies.items()}


def protocol_calls(url: str, grpc_target: str, steps: int) -> dict[str, Call]:
    from serving.client import Client, GrpcClient

    http = httpx.Client(base_url=url, timeout=600)
    jobs = Client(url)
    grpc_client = GrpcClient(grpc_target)

    def fields(index: int) -> dict[str, Any]:
        return {"prompt": PROMPTS[index % 4], "steps": steps, "seed": index}

    def checked(answer: httpx.Response) -> httpx.Response:
        answer.raise_for_status()
        return answer

    def v2_body(index: int, **parameters: Any) -> dict[str, Any]:
        values = fields(index)
        return {
            "inputs": [
                {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [values["prompt"]]},
                {"name": "steps", "datatype": "INT32", "shape": [1], "data": [steps]},
                {"name": "seed", "datatype": "INT64", "shape": [1], "data": [index]},
            ],
            **parameters,
        }

    return {
        "/v1/generate (raw PNG)": lambda i: checked(
            http.post("/v1/generate", json=fields(i), headers={"Accept": "image/png"})
        ),
        "/v1/generate (JSON, base64)": lambda i: checked(http.post("/v1/generate", json=fields(i))),
        "OpenAI /v1/images/generations": lambda i: checked(
            http.post(
                "/v1/images/generations",
                json={**fields(i), "size": "128x128", "response_format": "b64_json"},
            )
        ),
        "KServe v1 :predict": lambda i: checked(
            http.post("/v1/models/sd-embedded:predict", json={"instances": [fields(i)]})
        ),
        "KServe v2 REST (PNG, JSON base64)": lambda i: base64.b64decode(
            checked(
                http.post(
                    "/v2/models/sd-embedded/infer",
                    json=v2_body(i, parameters={"output_format": "png"}),
                )
            ).json()["outputs"][0]["data"][0]
        ),
        "KServe v2 REST (UINT8, binary)": lambda i: checked(
            http.post(
                "/v2/models/sd-embedded/infer",
                json=v2_body(
                    i,
                    parameters={"binary_data_output": True},
                    outputs=[{"name": "image", "parameters": {"binary_data": True}}],
                ),
            )
        ),
        "KServe v2 gRPC (PNG, raw_output_contents)": lambda i: grpc_client.generate(
            PROMPTS[i % 4], steps=steps, seed=i
        ),
        "async job + SSE + image GET": lambda i: jobs.generate_with_progress(
            PROMPTS[i % 4], steps=steps, seed=i
        ),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Protocol overhead ({results['date']})",
        "",
        f"Embedded model, {results['size']}x{results['size']}, {results['steps']} steps "
        f"DPM-Solver++, one request at a time, {results['runs']} interleaved rounds; "
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores.",
        "",
        f"Bare `StableDiffusionPipeline`: p50 **{results['bare_p50_s']:.3f} s**.",
        "",
        "| protocol | p50 (s) | over bare |",
        "|---|---:|---:|",
    ]
    for name, value in results["protocols"].items():
        overhead = value / results["bare_p50_s"] - 1
        lines.append(f"| {name} | {value:.3f} | {overhead:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.protocols", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--grpc-target", default="127.0.0.1:9000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("loadtest/results/cpu"))
    args = parser.parse_args(argv)

    from serving.models.embedded import NATIVE_SIZE

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "size": NATIVE_SIZE,
        "steps": args.steps,
        "runs": args.runs,
    }
    with started_service(args.url, already_up=is_up(args.url)):
        # The bare pipeline takes its turn in every round too: this shared machine drifts by
        # ±15 % over minutes, and a bare figure from another minute would measure the drift.
        calls = {BARE: bare_call(args.steps)}
        calls.update(protocol_calls(args.url, args.grpc_target, args.steps))
        p50s = interleaved_p50(calls, args.runs)
    results["bare_p50_s"] = p50s.pop(BARE)
    results["protocols"] = p50s
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocols.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "protocols.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
