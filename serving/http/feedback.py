"""`POST /v1/feedback`: a client's rating of an image (and the caption it deserved), and
`GET /v1/feedback`: the rows kept, for `sd-serving export-feedback`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.dataplane.feedback import MAX_PAGE, FeedbackPage, FeedbackParams
from serving.http.dependencies import ContextDep, DataPlaneDep
from serving.http.models import ERRORS

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback", status_code=201, responses=ERRORS)
async def send_feedback(
    params: FeedbackParams, data_plane: DataPlaneDep, context: ContextDep
) -> dict[str, Any]:
    """The row kept: the rating, the caption, and the prompt and parameters that made the image."""
    return await data_plane.feedback(params, context)


@router.get("/v1/feedback", responses=ERRORS)
async def read_feedback(
    data_plane: DataPlaneDep, offset: int = 0, limit: int = MAX_PAGE
) -> FeedbackPage:
    return await data_plane.feedback_page(offset, limit)
