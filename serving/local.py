"""`sd-serving serve`: a local Ray cluster running the app, stopped cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from serving.settings import Settings


def prepare_ray_environment() -> None:
    # Ray 2.60 asks for token auth on new clusters and reports usage; neither fits a local run.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_local(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Start Ray and Serve, run the app until a signal arrives, then tear everything down."""
    prepare_ray_environment()
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.rpc.servicer import SERVICER_FUNCTION

    settings.ray_temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        address="local",
        _temp_dir=str(settings.ray_temp_dir),
        include_dashboard=False,
        _metrics_export_port=settings.metrics_port,
        logging_level=logging.WARNING,
    )
    # After ray.init: Ray installs its own SIGTERM handler there, which would skip our teardown.
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        serve.start(
            http_options={"host": settings.http_host, "port": settings.http_port},
            grpc_options={
                "port": settings.grpc_port,
                "grpc_servicer_functions": [SERVICER_FUNCTION],
            },
        )
        if not stop.is_set():
            serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
            announce(f"sd-serving ready at {settings.http_url()} (model: {settings.model})")
            stop.wait()
        announce("sd-serving shutting down")
        serve.shutdown()
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
