"""The web console: static files (app/console/) at /console, and `/` pointing to it and to /docs.

The console is a plain page that calls the public API with the key the user signs in with; it has no
endpoints of its own."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    """Browsers land on the console; the API reference is at /docs."""
    return RedirectResponse("/console/", status_code=307)


@router.get("/console")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


def mount_console(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, html=True), name="console")
