"""The web page at `/`: prompt, parameters, live progress from the job events, a gallery."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serving.http.middleware import PAGE_PATH


def page_router() -> APIRouter:
    page = resources.files("serving.http").joinpath("index.html").read_text(encoding="utf-8")
    router = APIRouter()

    @router.get(PAGE_PATH, response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return router
