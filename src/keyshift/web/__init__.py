"""The web dashboard: server-rendered pages over the service layer, with htmx (vendored,
no build step) for the live rotation timeline. `install(app)` adds the pages, sign-in
and the static files to the API's application."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from keyshift.web.pages import router

PUBLIC_PATHS = frozenset({"/login"})
"""Pages that answer without a session (the sign-in form and its POST)."""

STATIC = "/static"


def install(app: FastAPI) -> None:
    """Serve the dashboard's pages at `/` and its assets under `/static`."""
    app.include_router(router)
    app.mount(
        STATIC,
        StaticFiles(directory=str(resources.files("keyshift.web") / "static")),
        name="static",
    )
