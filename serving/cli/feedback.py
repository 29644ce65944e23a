"""`sd-serving feedback`: rate an image a service made (`POST /v1/feedback`), and
`sd-serving export-feedback`: the service's feedback written as a data batch for `sd-serving tune`
(serving/training/feedback.py)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from serving.training.feedback import DEFAULT_MIN_RATING, FEEDBACK_SOURCE

DIGEST_IN_URL = re.compile(r"([0-9a-f]{40})(?:\.\w+)?$")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rate = commands.add_parser(
        "feedback", help="rate an image the service made, optionally with the caption it deserved"
    )
    rate.add_argument(
        "image", nargs="?", help="the image's digest or URL (/v1/images/<digest>.png)"
    )
    rate.add_argument("--job", help="rate an async job's image instead (see --image-index)")
    rate.add_argument("--image-index", type=int, default=0, help="which of the job's images")
    rate.add_argument("--rating", type=int, required=True, help="1 (wrong) to 5 (exactly right)")
    rate.add_argument("--caption", help="what the image really shows, when the prompt missed")
    _service_arguments(rate)

    export = commands.add_parser(
        "export-feedback",
        help="write the service's feedback as an imagefolder batch sd-serving tune --new accepts",
    )
    export.add_argument("directory", type=Path)
    export.add_argument(
        "--source", default=FEEDBACK_SOURCE, help="the batch's source name (one of its own)"
    )
    export.add_argument(
        "--min-rating",
        type=int,
        default=DEFAULT_MIN_RATING,
        help="rows rated lower train only with a corrected caption",
    )
    _service_arguments(export)


def _service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key-file", type=Path)


def run_feedback(args: argparse.Namespace) -> int:
    from serving.client import Client, ClientError

    if (args.image is None) == (args.job is None):
        print(
            "sd-serving: feedback: name an image (digest or URL) or --job, not both",
            file=sys.stderr,
        )
        return 2
    image = args.image
    if image is not None:
        found = DIGEST_IN_URL.search(image)
        image = found.group(1) if found else image
    with Client(args.url, api_key=_api_key(args)) as client:
        try:
            row = client.feedback(
                image,
                rating=args.rating,
                caption=args.caption,
                job_id=args.job,
                image_index=args.image_index,
            )
        except ClientError as error:
            print(f"sd-serving: feedback: {error}", file=sys.stderr)
            return 1
    made = row["provenance"]
    version = f"@{made['model_version']}" if made.get("model_version") else ""
    print(
        f"feedback {row['id']} kept: rating {row['rating']} for image {row['image']} "
        f"({made.get('model', '?')}{version}, prompt {made.get('prompt')!r})"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from serving.client import Client, ClientError
    from serving.training.feedback import FeedbackBatchError, write_feedback_batch

    with Client(args.url, api_key=_api_key(args)) as client:
        try:
            rows = []
            offset: int | None = 0
            while offset is not None:
                page = client.feedback_rows(offset)
                rows += page["feedback"]
                offset = page["next_offset"]
            summary = write_feedback_batch(
                rows,
                lambda digest, fmt: client.image(f"/v1/images/{digest}.{fmt}"),
                args.directory,
                args.source,
                args.min_rating,
            )
        except (ClientError, FeedbackBatchError) as error:
            print(f"sd-serving: export-feedback: {error}", file=sys.stderr)
            return 1
    left_out = ", ".join(f"{count} {why}" for why, count in summary.skipped.items()) or "none"
    print(
        f"{summary.written} images ({summary.corrected} with corrected captions) from "
        f"{summary.rows} feedback rows written to {summary.directory} as source "
        f"{args.source!r}; left out: {left_out}"
    )
    return 0


def _api_key(args: argparse.Namespace) -> str | None:
    return args.api_key_file.read_text().strip() if args.api_key_file else None
