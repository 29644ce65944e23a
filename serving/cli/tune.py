"""`sd-serving tune`: tune a model on data that arrived after launch, one strategy or several
compared, with a report (Markdown, PNG and JSON) beside the tuned adapters."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from serving.training.mixing import Strategy
    from serving.training.registry import Registry

# mixing.STRATEGIES, named here so that `--help` needs no torch import.
STRATEGY_NAMES = ("new-only", "concat", "stratified")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tune = commands.add_parser(
        "tune",
        help="tune a model on new data batches (LoRA) without forgetting the original: one "
        "strategy or several compared, with a report",
    )
    tune.add_argument("output", type=Path, help="folder: <strategy>/ per run, and report.*")
    tune.add_argument(
        "--base", help="the model tuned: a diffusers directory (default: the demo model)"
    )
    tune.add_argument(
        "--original", type=Path, required=True, help="the data the base was trained on"
    )
    tune.add_argument(
        "--new",
        type=Path,
        action="append",
        required=True,
        help="a new batch (imagefolder; rows name their source); repeat for several",
    )
    tune.add_argument(
        "--strategy",
        action="append",
        choices=STRATEGY_NAMES,
        help="stratified (the default: mixed by source and class, with replay), concat (all, in "
        "arrival order) or new-only; repeat to compare",
    )
    tune.add_argument("--compare", action="store_true", help="every strategy, in one report")
    tune.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="a source's mixing weight for stratified (default 1 each; the original's is its "
        "replay share)",
    )
    tune.add_argument("--steps", type=int)
    tune.add_argument("--batch-size", type=int)
    tune.add_argument("--learning-rate", type=float)
    tune.add_argument("--rank", type=int, help="LoRA rank")
    tune.add_argument(
        "--full", action="store_true", help="tune every UNet and text-encoder weight, not a LoRA"
    )
    tune.add_argument("--validation-fraction", type=float)
    tune.add_argument(
        "--eval-seeds",
        type=int,
        help="seeds each validation caption is drawn with (default 2; fewer is faster, noisier)",
    )
    tune.add_argument("--eval-steps", type=int, help="denoising steps per validation image (20)")
    tune.add_argument("--seed", type=int)
    tune.add_argument(
        "--register",
        metavar="NAME",
        help="record the stratified run (or the one strategy run) as a new version of NAME in "
        "the registry, alias challenger; the first time, the base becomes version 1, champion",
    )
    tune.add_argument("--registry-uri", help="MLflow tracking URI (SD_REGISTRY_URI)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from serving.models.embedded import DEMO_MODEL
    from serving.settings import Settings
    from serving.training.dataset import DatasetError
    from serving.training.evaluator import cached_evaluator
    from serving.training.tune import TuneConfig, compare
    from serving.training.tune_report import markdown, plot

    def refuse(message: str) -> int:
        print(f"sd-serving: tune: {message}", file=sys.stderr)
        return 2

    weights: dict[str, float] = {}
    for given in args.weight:
        source, _, value = given.rpartition("=")
        try:
            weights[source] = float(value)
        except ValueError:
            return refuse(f"--weight {given!r}: expected SOURCE=NUMBER")
    changes: dict[str, Any] = {
        key: value
        for key in (
            "steps",
            "batch_size",
            "learning_rate",
            "rank",
            "validation_fraction",
            "seed",
            "eval_steps",
        )
        if (value := getattr(args, key)) is not None
    }
    if args.eval_seeds is not None:
        if args.eval_seeds < 1:
            return refuse("--eval-seeds must be ≥ 1")
        changes["eval_seeds"] = tuple(range(args.eval_seeds))
    if any(changes.get(key, 1) < 1 for key in ("steps", "batch_size", "rank", "eval_steps")):
        return refuse("--steps, --batch-size, --rank and --eval-steps must be ≥ 1")
    if not changes.get("learning_rate", 1) > 0:
        return refuse("--learning-rate must be > 0")
    if not 0 < changes.get("validation_fraction", 0.1) < 1:
        return refuse("--validation-fraction must be between 0 and 1")
    config = replace(TuneConfig(), **changes, weights=weights, full=args.full)
    registry, parent, parent_adapter = None, None, None
    if args.register:
        from serving.training.registry import CHAMPION, Registry, RegistryError, default_uri

        settings = Settings()
        registry = Registry(
            args.registry_uri or settings.registry_uri or default_uri(settings.cache_dir)
        )
        try:
            registered = registry.versions(args.register)
        except RegistryError as error:
            return refuse(str(error))
        if registered:
            try:
                champion = registry.get(args.register, CHAMPION)
            except RegistryError as error:
                return refuse(str(error))
            parent = champion.version
            if champion.strategy != "base":  # the version served is an adapter: compare with it
                parent_adapter = registry.download(
                    args.register, CHAMPION, args.output / "champion"
                )
    strategies = cast(
        "list[Strategy]", list(STRATEGY_NAMES) if args.compare else args.strategy or ["stratified"]
    )
    base = args.base or os.path.relpath(DEMO_MODEL)
    try:
        results = compare(
            base,
            args.original,
            args.new,
            args.output,
            config,
            list(dict.fromkeys(strategies)),
            cached_evaluator(Settings().cache_dir),
            parent_adapter,
        )
    except (DatasetError, ValueError) as error:
        return refuse(str(error))
    if registry is not None:
        chosen = "stratified" if "stratified" in results["runs"] else next(iter(results["runs"]))
        version = register(registry, args.register, results, chosen, args.output, parent)
        print(f"registered {args.register} version {version} ({chosen}) as challenger")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "report.md").write_text(markdown(results))
    plot(results, args.output / "report.png")
    print(markdown(results))
    print(f"tuned into {', '.join(str(args.output / s) for s in results['runs'])}")
    return 0


def register(
    registry: Registry,
    name: str,
    results: dict[str, Any],
    chosen: str,
    output: Path,
    parent: str | None,
) -> str:
    """The chosen run as a new version (challenger) whose parent is the champion; the first
    time, the base is recorded first as version 1 (champion)."""
    from serving.training.registry import CHALLENGER, CHAMPION

    before = results["before"]["sources"]
    if parent is None:
        base = {"base": results["base"], "sources": before, "data": results["data"]}
        parent = registry.register(name, base, None, None).version
        registry.alias(name, CHAMPION, parent)
    record = {**results["runs"][chosen], "parent_sources": before}
    version = registry.register(name, record, output / chosen, parent).version
    registry.alias(name, CHALLENGER, version)
    return version
