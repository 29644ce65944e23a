"""The tuning comparison as a report: Markdown tables and a PNG plot of each strategy's adherence
per source and per class against the base's, and the bias question answered in two figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# The default strategy's goals: original-data adherence within this many points of the base's,
# new-data adherence at least this share of what `new-only` reaches.
KEEP_POINTS = 2.0
REACH_SHARE = 0.9


def _mean(figures: dict[str, dict[str, float]], sources: list[str]) -> float:
    """Mean adherence over `sources`, weighted by their images."""
    images = sum(figures[source]["images"] for source in sources)
    return sum(figures[s]["mean"] * figures[s]["images"] for s in sources) / images


def verdict(results: dict[str, Any], strategy: str = "stratified") -> dict[str, float | bool]:
    """How `strategy` answers the bias question: its original-data adherence against the
    base's (points) and its new-data adherence as a share of `new-only`'s."""
    runs = results["runs"]
    original, new = results["original_sources"], results["new_sources"]
    base_original = _mean(results["before"]["sources"], original)
    kept = _mean(runs[strategy]["sources"], original)
    answer: dict[str, float | bool] = {
        "original_points_vs_base": round(100 * (kept - base_original), 1),
        "kept": 100 * (base_original - kept) <= KEEP_POINTS,
    }
    if "new-only" in runs:
        reached = _mean(runs[strategy]["sources"], new) / _mean(runs["new-only"]["sources"], new)
        answer["new_share_of_new_only"] = round(reached, 3)
        answer["reached"] = reached >= REACH_SHARE
    return answer


def markdown(results: dict[str, Any]) -> str:
    runs: dict[str, Any] = results["runs"]
    first = next(iter(runs.values()))
    config = first["config"]
    sources = results["original_sources"] + results["new_sources"]
    columns = [("base", results["before"]), *runs.items()]
    lines = [
        "# Tuning after launch: new data without bias toward old or new",
        "",
        f"Base model `{results['base']}`; original source(s) {results['original_sources']}, "
        f"new {results['new_sources']}. {first['training_examples']} training and "
        f"{first['validation_examples']} validation examples (stratified by source and class, "
        "split off before any training). "
        f"{'Full tune' if config['full'] else 'LoRA rank ' + str(config['rank'])}, "
        f"{config['steps']} steps of {config['batch_size']}, learning rate "
        f"{config['learning_rate']:g}, seed {config['seed']}; validation captions drawn with "
        f"seeds {config['eval_seeds']}, {config['eval_steps']} steps, guidance "
        f"{config['eval_guidance']:g}, scored by the world's evaluator.",
        "",
        "## Adherence per source (mean of colour, shape, background)",
        "",
        "| model | " + " | ".join(sources) + " | tuning s |",
        "|---|" + "---:|" * (len(sources) + 1),
    ]
    for name, figures in columns:
        cells = [f"{100 * figures['sources'][s]['mean']:.1f} %" for s in sources]
        seconds = f"{figures['seconds']:.0f}" if "seconds" in figures else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds} |")
    classes = list(results["before"]["classes"])
    lines += [
        "",
        "## Adherence per class (every source)",
        "",
        "| model | " + " | ".join(classes) + " |",
        "|---|" + "---:|" * len(classes),
    ]
    for name, figures in columns:
        cells = [f"{100 * figures['classes'][c]['mean']:.1f} %" for c in classes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per attribute", "", "| model | source | colour | shape | background |"]
    lines.append("|---|---|---:|---:|---:|")
    for name, figures in columns:
        for source in sources:
            f = figures["sources"][source]
            lines.append(
                f"| {name} | {source} | {100 * f['colour']:.0f} % | {100 * f['shape']:.0f} % | "
                f"{100 * f['background']:.0f} % |"
            )
    if "stratified" in runs:
        answer = verdict(results)
        lines += [
            "",
            "## The bias question",
            "",
            f"* Original data: `stratified` is {answer['original_points_vs_base']:+.1f} points "
            f"from the base (goal: within {KEEP_POINTS:g}): "
            f"{'met' if answer['kept'] else 'not met'}.",
        ]
        if "new_share_of_new_only" in answer:
            lines.append(
                f"* New data: `stratified` reaches {100 * answer['new_share_of_new_only']:.0f} % "
                f"of the adherence `new-only` reaches (goal: {100 * REACH_SHARE:.0f} %): "
                f"{'met' if answer['reached'] else 'not met'}."
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: adherence per source (left) and per class (right), base and strategies."""
    columns = [("base", results["before"]), *results["runs"].items()]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), width_ratios=(1, 2))
    for axis, key in zip(axes, ("sources", "classes"), strict=True):
        groups = list(results["before"][key])
        width = 0.8 / len(columns)
        for offset, (name, figures) in enumerate(columns):
            heights = [100 * figures[key][group]["mean"] for group in groups]
            positions = [i + (offset - (len(columns) - 1) / 2) * width for i in range(len(groups))]
            axis.bar(positions, heights, width, label=name)
        axis.set_xticks(range(len(groups)), [g.removeprefix("sd-serving-") for g in groups])
        axis.set_ylim(0, 100)
        axis.set_ylabel("adherence, % (mean of colour, shape, background)")
        axis.set_title({"sources": "per source", "classes": "per class"}[key])
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncol=len(columns), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
