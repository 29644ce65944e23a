"""Feedback from production: a client rates an image the service made (by its digest, or by the
async job that made it) and, when the image missed, gives the caption it deserved. Each row keeps
what made the image (its prompt and parameters, recorded when it was stored), so rows become a
data batch `sd-serving tune` accepts (serving/training/feedback.py writes it out)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.dataplane.store import Store
from serving.errors import InvalidArgument, NotFound

MAX_RATING = 5
MAX_CAPTION_CHARS = 1000
MAX_PAGE = 1000  # rows one `GET /v1/feedback` answers


class FeedbackParams(BaseModel):
    """`POST /v1/feedback`: one image, by `image` (its digest) or `job_id` (+ `image_index`)."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        None,
        description="the image's digest: its `digest` field, its ETag, or the name in its URL "
        "(`/v1/images/<digest>.png`)",
    )
    job_id: str | None = Field(None, description="an async job whose image is rated")
    image_index: int = Field(0, ge=0, description="which of the job's images (from 0)")
    rating: int = Field(ge=1, le=MAX_RATING, description="1 (wrong) to 5 (exactly right)")
    caption: str | None = Field(
        None,
        max_length=MAX_CAPTION_CHARS,
        description="what the image really shows, when the prompt missed: it becomes the "
        "training caption",
    )


class FeedbackPage(BaseModel):
    """`GET /v1/feedback`: rows oldest first; `next_offset` is null after the last."""

    feedback: list[dict[str, Any]]
    next_offset: int | None


async def record_feedback(
    store: Store,
    params: FeedbackParams,
    client: str,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The stored row. NotFound for an image or job this service does not hold; a job that has
    no such image (not finished, failed, or fewer images) is an InvalidArgument."""
    if (params.image is None) == (params.job_id is None):
        raise InvalidArgument("image", "give exactly one of image (a digest) and job_id")
    if params.caption is not None and not params.caption.strip():
        raise InvalidArgument("caption", "must not be blank (leave it out instead)")
    digest = params.image
    if params.job_id is not None:
        job = await store.get_job(params.job_id)
        if job is None:
            raise NotFound(f"no job {params.job_id!r} (unknown, or expired)", field="job_id")
        if job.result is None:
            raise InvalidArgument("job_id", f"the job is {job.status.value}: it has no image yet")
        if params.image_index >= len(job.result.images):
            raise InvalidArgument(
                "image_index",
                f"is {params.image_index}; the job made {len(job.result.images)} image(s)",
            )
        digest = job.result.images[params.image_index].digest
    assert digest is not None  # one of the two, by FeedbackParams
    stored = await store.get_image(digest)
    if stored is None:
        raise NotFound(
            f"no image {digest!r} here (never made, or past its retention)", field="image"
        )
    row = {
        "id": uuid.uuid4().hex,
        "created_at": clock(),
        "image": digest,
        "format": stored.output_format,
        "job_id": params.job_id,
        "rating": params.rating,
        "caption": params.caption,
        "client": client,
        "provenance": stored.provenance or {},
    }
    await store.add_feedback(row)
    return row


async def feedback_page(store: Store, offset: int, limit: int) -> FeedbackPage:
    if offset < 0:
        raise InvalidArgument("offset", f"is {offset}; it must be 0 or more")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument("limit", f"is {limit}; it must be 1 to {MAX_PAGE}")
    rows = await store.feedback(offset, limit)
    return FeedbackPage(
        feedback=rows, next_offset=offset + len(rows) if len(rows) == limit else None
    )
