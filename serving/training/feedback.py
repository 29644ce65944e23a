"""Feedback from production as a data batch `sd-serving tune` accepts: the images clients rated
well (their prompt is the caption) or corrected (their corrected caption is), written as an
imagefolder dataset whose rows name their `source`, beside the prompt, rating and model version
that made each."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FEEDBACK_SOURCE = "production-feedback"
DEFAULT_MIN_RATING = 4


class FeedbackBatchError(ValueError):
    """No batch can be written: a bad source name, or no row to tune on."""


@dataclass(frozen=True)
class ExportSummary:
    directory: Path
    rows: int  # feedback rows read
    written: int  # images in the batch
    corrected: int  # of which the caption is a client's correction
    skipped: dict[str, int]  # why rows were left out


def training_caption(row: dict[str, Any], min_rating: int) -> tuple[str | None, str]:
    """The caption a feedback row trains with, or None and why it does not."""
    if row.get("caption"):
        return str(row["caption"]), "corrected"
    prompt = (row.get("provenance") or {}).get("prompt")
    if not prompt:
        return None, "no prompt recorded"
    if int(row.get("rating", 0)) < min_rating:
        return None, f"rated below {min_rating} without a corrected caption"
    return str(prompt), "rated"


def write_feedback_batch(
    rows: Iterable[dict[str, Any]],
    fetch_image: Callable[[str, str], bytes],
    directory: Path,
    source: str = FEEDBACK_SOURCE,
    min_rating: int = DEFAULT_MIN_RATING,
) -> ExportSummary:
    """One image per rated image (a later row on the same image replaces an earlier one);
    `fetch_image(digest, format)` reads an image's bytes. Refuses, writing nothing, when no row
    qualifies."""
    if not source or "/" in source:
        raise FeedbackBatchError(f"source {source!r}: a batch needs a plain, non-empty source name")
    latest: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}
    read = 0
    for row in rows:
        read += 1
        caption, why = training_caption(row, min_rating)
        if caption is None:
            skipped[why] = skipped.get(why, 0) + 1
            latest.pop(row["image"], None)  # a later low rating withdraws an earlier good one
            continue
        latest[row["image"]] = {**row, "text": caption, "why": why}
    if not latest:
        raise FeedbackBatchError(
            f"no feedback row to tune on among {read} (need a rating of {min_rating} or more, "
            f"or a corrected caption); left out: {skipped or 'none'}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for digest, row in latest.items():
        name = f"{digest}.{row['format']}"
        (directory / name).write_bytes(fetch_image(digest, row["format"]))
        made = row.get("provenance") or {}
        lines.append(
            {
                "file_name": name,
                "text": row["text"],
                "source": source,
                "rating": row["rating"],
                "prompt": made.get("prompt"),
                "model": made.get("model"),
                "model_version": made.get("model_version"),
                "seed": made.get("seed"),
                "feedback_id": row["id"],
            }
        )
    # Last, so a batch that was cut short has no metadata and is refused by tune.
    metadata = "".join(json.dumps(line) + "\n" for line in lines)
    (directory / "metadata.jsonl").write_text(metadata)
    corrected = sum(1 for row in latest.values() if row["why"] == "corrected")
    return ExportSummary(directory, read, len(lines), corrected, skipped)
