"""`make fuzz`: schemathesis over the REST API's own OpenAPI document (`/openapi.json`).

    python -m loadtest.fuzz [--url http://127.0.0.1:8000] [--examples 100]
                            [--phases examples,coverage,fuzzing] [--seed S]
                            [--grpc-target HOST:9000] [--grpc-examples 1000]

Every operation gets the document's examples, its coverage cases (boundaries, wrong types,
missing and unknown fields) and generated requests, and every response is checked: no 5xx, the
status code, content type, headers and body as documented, malformed input refused, and
nothing slower than 30 s. Without a
service at --url it starts `sd-serving serve` on the default model with tiny limits (at most 2
steps, 64x64, one image), so a case that renders costs milliseconds. Writes
`loadtest/results/cpu/fuzz.{md,json}`. Then the v2 gRPC methods get Hypothesis-generated messages
(loadtest/grpc_fuzz.py): any refusal is fine, INTERNAL or UNKNOWN is a bug, and the server must
stay up.

One check is left out: `positive_data_acceptance` (a request the document allows must succeed).
The document gives each field's type; its range depends on the served model and the operator's
limits (`SD_LIMITS__*`), checked per request with a 422 naming the field and the limit, so a
schema-valid `steps: 10000` is rightly refused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtest.grpc_fuzz import fuzz_grpc
from loadtest.run import is_up, started_service

HERE = Path(__file__).resolve().parent
EXCLUDED_CHECKS = ("positive_data_acceptance",)
# Limits that keep a rendering case to milliseconds (the demo model is 64x64).
TINY_LIMITS = {"max_steps": 2, "max_width": 64, "max_height": 64, "max_num_images": 1}
TINY_DEFAULTS = {"steps": 1}


def tiny_environment() -> dict[str, str]:
    """TINY_LIMITS and TINY_DEFAULTS as the service's environment variables."""
    variables = {f"SD_LIMITS__{key.upper()}": str(value) for key, value in TINY_LIMITS.items()}
    variables |= {f"SD_DEFAULTS__{key.upper()}": str(value) for key, value in TINY_DEFAULTS.items()}
    return variables


def run(url: str, examples: int, phases: str, seed: int | None = None) -> dict[str, Any]:
    """schemathesis against `url`; its JSON run report, trimmed to what the report shows."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{url.rstrip('/')}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            ",".join(EXCLUDED_CHECKS),
            "--phases",
            phases,
            "--max-examples",
            str(examples),
            "--request-timeout",
            "60",
            # Latency is the benchmarks' business; a fuzz case that takes this long is stuck.
            "--max-response-time",
            "30",
            "--no-color",
            "--report-json-path",
            str(report),
        ]
        if seed is not None:
            command += ["--seed", str(seed)]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if not report.exists():
            raise RuntimeError(f"schemathesis wrote no report:\n{finished.stdout}{finished.stderr}")
        full = json.loads(report.read_text())
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "schemathesis": full["schemathesis_version"],
        "seed": full["seed"],
        "examples_per_operation": examples,
        "phases": [name for name, phase in full["phases"].items() if phase["status"] != "skip"],
        "excluded_checks": list(EXCLUDED_CHECKS),
        "running_s": round(full["running_time"], 1),
        "operations": full["operations"]["tested"],
        "cases": full["test_cases"]["generated"],
        "cases_with_failures": full["test_cases"]["with_failures"],
        "failures": full["failures"],
        "errors": full["errors"],
        "exit_code": full["exit_code"],
        "output": finished.stdout[-4000:] if full["exit_code"] else "",
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Fuzzing the REST API (schemathesis)",
        "",
        f"{summary['date']}, schemathesis {summary['schemathesis']}, seed {summary['seed']}: "
        f"{summary['operations']} operations, phases {', '.join(summary['phases'])}, up to "
        f"{summary['examples_per_operation']} generated examples per operation; every check but "
        f"{', '.join(summary['excluded_checks'])} (see loadtest/fuzz.py).",
        "",
        "| cases run | cases with failures | unique failures | errors | seconds |",
        "|---|---|---|---|---|",
        f"| {summary['cases']} | {summary['cases_with_failures']} | {len(summary['failures'])} | "
        f"{len(summary['errors'])} | {summary['running_s']} |",
    ]
    grpc = summary.get("grpc")
    if grpc:
        lines += [
            "",
            f"v2 gRPC, Hypothesis-generated messages (seed {grpc['seed']}): {grpc['infer_cases']} "
            f"ModelInfer calls and as many ModelMetadata and ModelReady calls, {grpc['cases']} "
            f"in all; INTERNAL or UNKNOWN: {grpc['broken_count']}; server up afterwards: "
            f"{'yes' if grpc['server_up'] else 'NO'}.",
            "",
            "| method and status | calls |",
            "|---|---|",
            *(f"| {name} | {count} |" for name, count in grpc["codes"].items()),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fuzz", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--examples", type=int, default=100, help="per operation (fuzzing phase)")
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--grpc-target", help="host:port of v2 gRPC (default: the URL's host:9000)")
    parser.add_argument("--grpc-examples", type=int, default=1000)
    parser.add_argument("--model", default="sd-embedded", help="the served model's name")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu")
    args = parser.parse_args(argv)
    grpc_target = args.grpc_target or f"{urlsplit(args.url).hostname}:9000"
    already_up = is_up(args.url)
    if not already_up:
        os.environ.update(tiny_environment())  # for the service started below
    with started_service(args.url, already_up=already_up):
        summary = run(args.url, args.examples, args.phases, args.seed)
        grpc_seed = args.seed if args.seed is not None else 0
        summary["grpc"] = fuzz_grpc(grpc_target, args.model, args.grpc_examples, grpc_seed)
        summary["grpc"]["seed"] = grpc_seed
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "fuzz.md").write_text(markdown(summary))
    print(markdown(summary))
    if summary["output"]:
        print(summary["output"])
    grpc_ok = summary["grpc"]["broken_count"] == 0 and summary["grpc"]["server_up"]
    return 0 if summary["exit_code"] == 0 and grpc_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
