"""`create_app`: the FastAPI application behind `keyshift serve`.

Public routes: `/healthz` (the process is up), `/readyz` (the store answers),
`/openapi.json`, `/docs`, and `/.well-known/jwks/{credential}.json` (a signing key's
JWKS document: public keys, which verifiers fetch without a token, as an OIDC JWKS).
Every `/v1` route, and `/metrics`, requires a bearer token whose roles grant that route's
one permission. The dashboard's pages (`keyshift.web`) sit beside them at `/`, behind a
session cookie and the same permissions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from keyshift import __version__, web
from keyshift.api import problems
from keyshift.api.auth import caller
from keyshift.api.routes import ROUTERS
from keyshift.api.runner import BackgroundRotations
from keyshift.context import PluginContext
from keyshift.domain.rbac import Permission
from keyshift.errors import StoreError
from keyshift.service import jwks as jwks_service
from keyshift.service import metrics as metrics_service
from keyshift.service.identities import Identity
from keyshift.store.store import Store

JWKS_PATH = "/.well-known/jwks/{credential}.json"
"""A `jwks_serve` credential's JWKS document (`keyshift.service.jwks`)."""
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", JWKS_PATH}
)
"""Routes that answer without a token. Every other route requires one permission."""

DRAIN_SECONDS = 30.0
"""How long shutdown waits for rotations running in the background (the journal and
lease let `keyshift resume` or a worker continue any that did not finish)."""


def create_app(
    store: Store | None = None,
    *,
    env: Mapping[str, str] | None = None,
    context: PluginContext | None = None,
) -> FastAPI:
    """The API over `store`, or over the store `env` names (opened at startup, closed at
    shutdown). `context` is handed to the rotations the API runs (tests inject a clock)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = None
        if store is None:
            opened = await run_in_threadpool(Store.open, dict(env or {}))
            app.state.store = opened
            app.state.rotations = BackgroundRotations(opened, context)
        try:
            yield
        finally:
            await app.state.rotations.drain(DRAIN_SECONDS)
            if opened is not None:
                opened.close()

    app = FastAPI(
        title="keyshift",
        version=__version__,
        summary="Rotate non-human credentials without outages, with evidence an auditor accepts.",
        lifespan=lifespan,
        redoc_url=None,
    )
    if store is not None:
        app.state.store = store
        app.state.rotations = BackgroundRotations(store, context)
    problems.install(app)
    for router in ROUTERS:
        app.include_router(router)
    web.install(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok", "version": __version__}

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def metrics_text(who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)]) -> Response:
        """Prometheus text format: rotations finished by state, step durations by kind,
        credentials by lifecycle, the fewest days to expiry, the notification outbox's
        depth and dead letters, issuers' 429 answers. Scrape with a viewer's token."""
        current: Store = app.state.store
        return Response(
            metrics_service.exposition(current), media_type=metrics_service.CONTENT_TYPE
        )

    @app.get(
        JWKS_PATH,
        tags=["jwks"],
        responses={
            200: {"content": {"application/jwk-set+json": {}}},
            304: {"description": "unchanged since the ETag given in If-None-Match"},
            404: {"description": "no JWKS is served for this credential"},
        },
    )
    def jwks(credential: str, request: Request) -> Response:
        """The JWKS document of a `jwks_signing_key` credential with a `jwks_serve` action:
        the public keys verifiers must accept now (during a rollover the new and the old
        one, after the old one's withdrawal the current one). No token: it is public key
        material. `Cache-Control: max-age` is the credential's `cache_ttl`."""
        current: Store = app.state.store
        served = jwks_service.served_jwks(current, credential)
        headers = {
            "Cache-Control": f"public, max-age={int(served.cache_ttl.total_seconds())}",
            "ETag": served.etag,
        }
        if served.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(served.body, media_type="application/jwk-set+json", headers=headers)

    @app.get("/readyz", tags=["health"], responses={503: {"description": "store unreachable"}})
    def readyz() -> JSONResponse:
        """The store answers a query."""
        current: Store = app.state.store
        try:
            current.ping()
        except StoreError as exc:
            return problems.from_error(exc)
        return JSONResponse({"status": "ready"})

    return app
