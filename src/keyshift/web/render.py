"""How pages are rendered: the Jinja2 environment (autoescaped, the templates shipped in
the package), the filters the templates share (dates, durations, days left), and the
route class that turns a keyshift error into an HTML error page instead of problem JSON.

An error page shows the error's message, which by keyshift's rule names ids and fields,
never a value; a validation error names the field, never what was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from keyshift import __version__
from keyshift.api import problems
from keyshift.domain.clock import utcnow
from keyshift.errors import KeyshiftError, PolicyRefused, Unauthenticated

TEMPLATES = resources.files("keyshift.web") / "templates"


def _date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value is not None else "—"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _duration(value: timedelta | float | None) -> str:
    """A step's duration: `840 ms`, `12.3 s`, `4 min 05 s`."""
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _days(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value}d" if value >= 0 else f"{-value}d ago"


def _css(value: object) -> str:
    """A state or lifecycle as a CSS class: `Grace Period` -> `grace-period`."""
    return str(value).lower().replace(" ", "-").replace("_", "-")


environment = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(
    date=_date, time=_time, duration=_duration, days=_days, css=_css, quote=quote
)
environment.globals.update(version=__version__)


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """`template` rendered with `context` (plus the request and the signed-in viewer, if
    any) as an HTML response."""
    body = environment.get_template(template).render(
        {"viewer": None, "now": utcnow(), **context, "request": request}
    )
    response = HTMLResponse(body, status_code=status_code, headers=dict(headers or {}))
    # Pages show the estate's state at one moment; a browser must not serve them stale
    # from its cache, nor keep them after sign-out.
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    code: str,
    reasons: list[str] | None = None,
) -> Response:
    """The error page: what was refused and why, with the REST API's status and code."""
    return page(
        request,
        "error.html",
        {"title": title, "detail": detail, "code": code, "status": status, "reasons": reasons},
        status_code=status,
    )


def _signed_out(request: Request, exc: Unauthenticated) -> Response:
    """Unauthenticated: a page sends the browser to sign in and back; a fragment (htmx)
    or a form tells htmx to load the sign-in page instead of swapping an error in."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"/login?next={quote(target, safe='')}"
    if request.headers.get("HX-Request"):
        return Response(status_code=401, headers={"HX-Redirect": login})
    if request.method == "GET":
        return RedirectResponse(login, status_code=303)
    return error_page(request, 401, "Sign in again", str(exc), code="unauthenticated")


class PageRoute(APIRoute):
    """A page route: keyshift errors and invalid input answer as HTML error pages (with
    the same status and code the REST API gives them), never as problem JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthenticated as exc:
                return _signed_out(request, exc)
            except KeyshiftError as exc:
                status, code, title = problems.classify(exc)
                reasons = list(exc.reasons) if isinstance(exc, PolicyRefused) else None
                return error_page(request, status, title, str(exc), code=code, reasons=reasons)
            except RequestValidationError as exc:
                bad = [f"{p['path']}: {p['message']}" for p in problems.validation_problems(exc)]
                return error_page(
                    request,
                    422,
                    "A field of the form is invalid",
                    "; ".join(bad),
                    code="invalid-request",
                )

        return guarded
