"""`sd-serving promote`: move a model's `champion` alias to its challenger, or refuse naming
the source or live signal that regressed (serving/training/promotion.py). A refusal leaves the
registry as it was."""

from __future__ import annotations

import argparse
import sys
import time

from serving.training.promotion import GateLimits

DEFAULTS = GateLimits()


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    promote = commands.add_parser(
        "promote",
        help="make a model's challenger its champion if it is no worse per source and live "
        "(Prometheus), else refuse naming what regressed",
    )
    promote.add_argument("name", help="the registered model (sd-serving tune --register NAME)")
    promote.add_argument(
        "--challenger", default="challenger", help="the version to promote (default: the alias)"
    )
    promote.add_argument(
        "--prometheus-url", required=True, help="where the service's metrics are scraped"
    )
    promote.add_argument(
        "--served-model",
        help="the model's name in the service, as Prometheus labels it (default: NAME)",
    )
    promote.add_argument(
        "--window", default=DEFAULTS.window, help="how far back live traffic counts (PromQL)"
    )
    promote.add_argument(
        "--max-source-drop",
        type=float,
        default=DEFAULTS.max_source_drop,
        help="points of adherence any source may lose",
    )
    promote.add_argument(
        "--max-error-increase",
        type=float,
        default=DEFAULTS.max_error_increase,
        help="points of failed generations over the champion's",
    )
    promote.add_argument(
        "--max-latency-ratio",
        type=float,
        default=DEFAULTS.max_latency_ratio,
        help="the challenger's p95 over the champion's",
    )
    promote.add_argument(
        "--min-requests",
        type=float,
        default=DEFAULTS.min_requests,
        help="the challenger's generations in the window needed to judge it",
    )
    promote.add_argument("--registry-uri", help="MLflow tracking URI (SD_REGISTRY_URI)")


def run(args: argparse.Namespace) -> int:
    from serving.settings import Settings
    from serving.training.promotion import (
        PrometheusError,
        compare_live,
        compare_sources,
        live,
    )
    from serving.training.registry import CHALLENGER, CHAMPION, Registry, RegistryError, default_uri

    def fail(message: str, status: int = 2) -> int:
        print(f"sd-serving: promote: {message}", file=sys.stderr)
        return status

    if args.max_source_drop < 0 or args.max_error_increase < 0 or args.min_requests < 0:
        return fail("--max-source-drop, --max-error-increase and --min-requests must be ≥ 0")
    if not args.max_latency_ratio >= 1:
        return fail("--max-latency-ratio must be ≥ 1")
    limits = GateLimits(
        args.max_source_drop,
        args.max_error_increase,
        args.max_latency_ratio,
        args.min_requests,
        args.window,
    )
    settings = Settings()
    registry = Registry(
        args.registry_uri or settings.registry_uri or default_uri(settings.cache_dir)
    )
    try:
        champion = registry.get(args.name, CHAMPION)
        challenger = registry.get(args.name, args.challenger)
    except RegistryError as error:
        return fail(str(error))
    if challenger.version == champion.version:
        return fail(f"version {challenger.version} of {args.name} is already the champion")
    verdict = compare_sources(champion, challenger, limits)
    served = args.served_model or args.name
    now = time.time()  # both versions over the same window
    try:
        compare_live(
            live(args.prometheus_url, served, champion.version, limits.window, now),
            live(args.prometheus_url, served, challenger.version, limits.window, now),
            limits,
            verdict,
        )
    except PrometheusError as error:
        verdict.refuse(f"live signals unread: {error}")
    print(f"{args.name}: champion {champion.version}, challenger {challenger.version}")
    for line in verdict.lines:
        print(f"  {line}")
    if not verdict.promote:
        for reason in verdict.reasons:
            print(f"sd-serving: promote: refused: {reason}", file=sys.stderr)
        print(f"champion stays version {champion.version}", file=sys.stderr)
        return 1
    try:
        on_canary = registry.get(args.name, CHALLENGER).version
    except RegistryError:
        on_canary = None
    registry.alias(args.name, CHAMPION, challenger.version)
    if on_canary == challenger.version:
        registry.remove_alias(args.name, CHALLENGER)  # no version is under canary now
    print(
        f"promoted: {args.name} version {challenger.version} is the champion (was "
        f"{champion.version}); set the served rollout's champion to {challenger.version!r} and "
        "its canary_percent to 0"
    )
    return 0
