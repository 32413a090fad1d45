"""The dashboard: hand-written HTML, CSS and JavaScript in ``pgqueue/web/static`` (shipped in the wheel), no
build step and no framework. The pages hold no data: their script asks the API for it with the token the user
gives (kept in the browser's localStorage), or reads without one on localhost under ``--local-read``, and
stays live through the server-sent events of /api/v1/events.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


def _page(name: str) -> FileResponse:
    # The pages change with the package, not per request; a short cache keeps reloads honest during upgrades.
    return FileResponse(STATIC / name, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/")
async def index() -> FileResponse:
    return _page("index.html")


@router.get("/docs")
async def docs() -> FileResponse:
    """The API's docs page, drawn from /openapi.json by a small script of ours (no CDN, works offline)."""
    return _page("docs.html")
