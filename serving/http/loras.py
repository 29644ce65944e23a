"""`GET /v1/loras`: the LoRA adapters requests may apply (SD_LORA_DIR), with what each is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from serving.http.dependencies import DataPlaneDep
from serving.http.models import ERRORS

router = APIRouter(tags=["adapters"])


class LoraListing(BaseModel):
    loras: list[dict[str, Any]] = Field(
        description="each adapter: name, family, rank, context_dim, text_encoder, layout, "
        "size_bytes and the served models it fits; `error` says why one cannot be applied"
    )


@router.get("/v1/loras", responses=ERRORS)
async def loras(data_plane: DataPlaneDep) -> LoraListing:
    return LoraListing(loras=data_plane.adapters())
