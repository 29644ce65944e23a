"""`sd-serving serve`: a local Ray cluster running the app, stopped cleanly on Ctrl-C or SIGTERM.

`local_ray` and `start_serve` are the one way this project starts Ray and Serve on a machine (the
command, and the benchmark's in-process servers)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from serving.http.proxy import CALLBACK_IMPORT_PATH as PROXY_CALLBACK
from serving.settings import Settings


def ray_local_env() -> None:
    """Ray 2.60 asks for token auth on new clusters and reports usage; neither fits a local run.
    Serve's HTTP proxy answers a request whose ingress replica died through our middleware (a
    503 with Retry-After, not a bare 500). A pod's image and the chart set the same three
    variables for `ray start`."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)


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


def drain(settings: Settings, quiet_polls: int = 3, interval_s: float = 0.5) -> None:
    """Until no ingress replica has a generation under way (`quiet_polls` zeros in a row: the
    handle picks a replica per call), or SD_DRAIN_TIMEOUT_S."""
    from ray import serve

    handle = serve.get_deployment_handle("Ingress", settings.app_name)
    deadline = time.monotonic() + settings.drain_timeout_s
    quiet = 0
    while quiet < quiet_polls and time.monotonic() < deadline:
        try:
            busy = handle.in_flight.remote().result(timeout_s=5.0)
        except Exception:  # no ingress answers: nothing to wait for
            return
        quiet = 0 if busy else quiet + 1
        time.sleep(interval_s)


def run_local(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Start Ray and Serve, run the app until a signal arrives, then drain and tear everything
    down: readiness answers not-ready at once (the drain marker), requests in flight get
    SD_DRAIN_TIMEOUT_S to finish, then Serve and Ray stop."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    marker: Path | None = None
    try:
        with local_ray(settings):
            import ray
            from ray import serve

            # In this Ray session's folder: the replicas of this service, and no other, see it.
            session = settings.ray_temp_dir / ray.get_runtime_context().get_session_name()
            marker = session / "sd-serving-draining"
            settings = settings.model_copy(update={"drain_marker": marker})

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
            marker.touch()
            announce(f"sd-serving shutting down (draining up to {settings.drain_timeout_s:g} s)")
            # Stages stop together, so the ingress must hold nothing that still needs one: wait
            # for its generations to finish (up to the drain timeout), then the app, then Serve.
            drain(settings)
            with contextlib.suppress(Exception):
                serve.delete(settings.app_name)
            serve.shutdown()
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
