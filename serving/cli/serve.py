"""`sd-serving serve`: a local Ray cluster running the app, stopped cleanly on Ctrl-C or SIGTERM.

`local_ray` and `start_serve` are the one way this project starts Ray and Serve on a machine (the
command, and the benchmark's in-process servers)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from serving.settings import Settings


def ray_local_env() -> None:
    """Ray 2.60 asks for token auth on new clusters and reports usage; neither fits a local run
    (a pod's image sets the same two variables for `ray start`)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@contextlib.contextmanager
def local_ray(settings: Settings, **options: Any) -> Iterator[None]:
    """A Ray cluster on this machine for the duration, its session files under ray_temp_dir."""
    ray_local_env()
    import ray

    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        address="local",
        _temp_dir=str(settings.ray_temp_dir),
        include_dashboard=False,
        _metrics_export_port=settings.metrics_port,
        logging_level=logging.WARNING,
        **options,
    )
    try:
        yield
    finally:
        ray.shutdown()


def start_serve(settings: Settings) -> None:
    """Serve's HTTP proxy and its gRPC proxy (with the v2 servicer) on the settings' ports."""
    from ray import serve

    from serving.grpc.servicer import SERVICER_FUNCTION

    serve.start(
        http_options={"host": settings.http_host, "port": settings.http_port},
        grpc_options={"port": settings.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]},
        logging_config=serve_logging(settings),
    )


def serve_logging(settings: Settings) -> dict[str, bool]:
    """Serve's per-call access log lines from every replica, when the settings ask for them."""
    return {"enable_access_log": settings.access_log}


def run_app(settings: Settings, name: str | None = None) -> None:
    """The sd-serving application on the running Serve instance, at the root route."""
    from ray import serve

    from serving.app import build_app

    serve.run(
        build_app(settings),
        name=name or settings.app_name,
        route_prefix="/",
        logging_config=serve_logging(settings),
    )


def run_local(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Start Ray and Serve, run the app until a signal arrives, then tear everything down."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    try:
        with local_ray(settings):
            from ray import serve

            # After ray.init, which installs a SIGTERM handler of its own that skips teardown;
            # ours stay until Ray has shut down.
            previous = {
                sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            start_serve(settings)
            if not stop.is_set():
                run_app(settings)
                served = ", ".join(
                    f"{name}: {spec.source}" for name, spec in settings.served_models().items()
                )
                announce(f"sd-serving ready at {settings.http_url()} (models: {served})")
                stop.wait()
            announce("sd-serving shutting down")
            serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
