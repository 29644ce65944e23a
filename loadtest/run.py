"""`make loadtest`: run a locust profile against a running service, or start one for the run.

    python -m loadtest.run [--profile smoke] [--url http://127.0.0.1:8000] [--out loadtest/out]

Exits with locust's code: non-zero when the profile's SLOs are broken.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

HERE = Path(__file__).resolve().parent


def is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_locust(
    url: str,
    profile: str,
    out: Path,
    grpc_target: str,
    *,
    user_classes: tuple[str, ...] = (),
    environment: dict[str, str] | None = None,
) -> int:
    """Locust headless with the profile; `user_classes` names the users to run (all when
    empty), `environment` adds to this process's (the overload profile's rate and record)."""
    out.mkdir(parents=True, exist_ok=True)
    locust = Path(sys.executable).with_name("locust")
    command = [
        str(locust),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        url,
        "--csv",
        str(out / profile),
        "--html",
        str(out / f"{profile}.html"),
        "--only-summary",
        # When the profile ends, users finish the request they are waiting on: a slow machine
        # still records every protocol the smoke run sent, instead of cutting them off.
        "--stop-timeout",
        "120",
        *user_classes,
    ]
    # Locust patches the standard library with gevent: it gets a process of its own.
    env = {**os.environ, **(environment or {})}
    env |= {"LOADTEST_PROFILE": profile, "LOADTEST_GRPC_TARGET": grpc_target}
    return subprocess.run(command, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__)
    parser.add_argument(
        "--profile", default="smoke", choices=["smoke", "ramp", "spike", "soak", "overload"]
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="overload profile: open-loop arrivals a second (loadtest/overload.py sets 3x the "
        "measured capacity)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="overload profile: duration")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument(
        "--grpc-target", help="host:port of the v2 gRPC API (default: the URL's host, port 9000)"
    )
    args = parser.parse_args(argv)
    grpc_target = args.grpc_target or f"{urlsplit(args.url).hostname}:9000"
    users: tuple[str, ...] = ()
    environment = {}
    if args.profile == "overload":  # its own user, not the protocol mix
        users = ("OverloadUser",)
        environment = {"LOADTEST_RATE": str(args.rate), "LOADTEST_DURATION_S": str(args.seconds)}
    with started_service(args.url, already_up=is_up(args.url)):
        return run_locust(
            args.url,
            args.profile,
            args.out,
            grpc_target,
            user_classes=users,
            environment=environment,
        )


@contextlib.contextmanager
def started_service(
    url: str, *, already_up: bool, environment: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes] | None]:
    """Nothing when a service answers at `url`; else `sd-serving serve` on its port (with
    `environment` over this process's), stopped with SIGTERM afterwards. Yields its process."""
    if already_up:
        yield None
        return
    print(f"no service at {url}: starting `sd-serving serve` for this run", flush=True)
    port = url.rsplit(":", 1)[-1].rstrip("/")
    service = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", port],
        env={**os.environ, **(environment or {})},
    )
    try:
        deadline = time.monotonic() + 300
        while not is_up(url):
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not start")
            time.sleep(1)
        yield service
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)


if __name__ == "__main__":
    sys.exit(main())
