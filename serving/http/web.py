"""The web page at `/`: prompt, parameters, live progress from the job events, a gallery."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE_PATH = "/"


def install_web_page(app: FastAPI) -> None:
    page = resources.files("serving").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get(PAGE_PATH, response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
