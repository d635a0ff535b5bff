"""Errors as problem JSON (RFC 9457): `type`, `title`, `status`, `detail`, and a stable `code`.

Clients branch on `code`; `detail` is for people and may change. Messages carry ids,
never values; a validation error names the field, never the value sent.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyshift.errors import (
    ApprovalRefused,
    ApprovalRequired,
    ConfigError,
    Conflict,
    CsrfRefused,
    DecryptionError,
    EstateInvalid,
    EventInvalid,
    KeyshiftError,
    LeaseHeld,
    NotFound,
    PermissionDenied,
    PluginError,
    PolicyRefused,
    PolicyViolation,
    RateLimited,
    RollbackRefused,
    RotationInProgress,
    StoreError,
    Unauthenticated,
)

MEDIA_TYPE = "application/problem+json"

# Most specific first: the first class an error is an instance of decides.
ERROR_CODES: list[tuple[type[KeyshiftError], int, str, str]] = [
    (EstateInvalid, 422, "estate-invalid", "The estate document was refused"),
    (ConfigError, 422, "invalid-request", "A field of the request is invalid"),
    (EventInvalid, 422, "invalid-event", "The event's body was refused"),
    (RateLimited, 429, "rate-limited", "Too many events for this trigger now"),
    (NotFound, 404, "not-found", "Not found"),
    (Unauthenticated, 401, "unauthenticated", "A valid API token is required"),
    (PermissionDenied, 403, "forbidden", "The token's roles lack the permission"),
    (CsrfRefused, 403, "csrf-refused", "The form's CSRF token is missing or wrong"),
    (LeaseHeld, 409, "lease-held", "Another worker is running this rotation"),
    (RotationInProgress, 409, "rotation-in-progress", "A rotation is already in progress"),
    (RollbackRefused, 409, "rollback-refused", "The rotation cannot be rolled back"),
    (Conflict, 409, "conflict", "The request conflicts with the current state"),
    (PolicyViolation, 409, "policy-violation", "A policy refuses the rotation"),
    (PolicyRefused, 409, "policy-refused", "Governance refuses the rotation now"),
    (ApprovalRefused, 409, "approval-refused", "The decision may not be taken"),
    (ApprovalRequired, 409, "approval-required", "The rotation waits for an approval"),
    (DecryptionError, 500, "store-integrity", "A stored value did not decrypt"),
    (StoreError, 503, "store-unavailable", "The store cannot be reached"),
    (PluginError, 502, "upstream-failed", "A system keyshift talks to failed"),
    (KeyshiftError, 409, "refused", "The operation was refused"),
]
"""Every keyshift error class mapped to its HTTP status and stable code."""

STATUS_CODES = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    415: "unsupported-media-type",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": f"urn:keyshift:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def classify(exc: KeyshiftError) -> tuple[int, str, str]:
    """The HTTP status, stable code and title of an error."""
    return next((s, c, t) for cls, s, c, t in ERROR_CODES if isinstance(exc, cls))


def from_error(exc: KeyshiftError) -> JSONResponse:
    status, code, title = classify(exc)
    extra: dict[str, Any] = {}
    headers: dict[str, str] | None = None
    if isinstance(exc, EstateInvalid):
        extra["problems"] = [{"path": p.path, "message": p.message} for p in exc.problems]
        detail = f"{len(exc.problems)} problem(s) in the estate document"
    elif isinstance(exc, EventInvalid):
        extra["problems"] = [{"path": p.path, "message": p.message} for p in exc.problems]
        detail = f"{len(exc.problems)} problem(s) in the event"
    else:
        detail = str(exc)
    if isinstance(exc, ConfigError):
        extra["problems"] = [{"path": exc.path, "message": exc.message}]
    if isinstance(exc, PermissionDenied):
        extra["permission"] = exc.permission
    if isinstance(exc, PolicyRefused):
        extra["reasons"] = list(exc.reasons)
    if isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="keyshift"'}
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    return problem(status, code, title, detail, headers=headers, **extra)


EXTENSIONS: dict[str, tuple[frozenset[str], dict[str, Any]]] = {
    "permission": (
        frozenset({"forbidden"}),
        {"type": "string", "description": "The permission the caller's roles lack."},
    ),
    "reasons": (
        frozenset({"policy-refused"}),
        {
            "type": "array",
            "items": {"type": "string"},
            "description": "Every governance rule that refuses the rotation, with why.",
        },
    ),
    "problems": (
        frozenset({"estate-invalid", "invalid-request", "invalid-event"}),
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
            "description": "One entry per bad field: its path and what is wrong.",
        },
    ),
}
"""Extension members of the problem body: the codes that add each, and its schema."""


def responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route that may answer with these problem codes: one
    entry per status, listing its codes, with the problem+json schema."""
    by_status: dict[int, list[tuple[str, str]]] = {}
    known = {code: (status, title) for _cls, status, code, title in ERROR_CODES}
    for code in codes:
        status, title = known[code]
        by_status.setdefault(status, []).append((code, title))
    out: dict[int | str, dict[str, Any]] = {}
    for status, entries in sorted(by_status.items()):
        schema = {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string", "examples": [f"urn:keyshift:problem:{entries[0][0]}"]},
                "title": {"type": "string"},
                "status": {"type": "integer", "enum": [status]},
                "detail": {"type": "string"},
                "code": {"type": "string", "enum": [code for code, _ in entries]},
                **{
                    member: member_schema
                    for member, (adders, member_schema) in EXTENSIONS.items()
                    if adders & {code for code, _ in entries}
                },
            },
        }
        out[status] = {
            "description": "; ".join(f"`{code}`: {title}" for code, title in entries),
            "content": {MEDIA_TYPE: {"schema": schema}},
        }
    return out


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_problems(exc: RequestValidationError) -> list[dict[str, str]]:
    """One entry per bad field of a request: its path and what is wrong (not the value)."""
    return [
        {"path": _location(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem JSON."""

    async def keyshift_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KeyshiftError)  # noqa: S101 (registered for this class only)
        return from_error(exc)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 (registered for it only)
        problems = validation_problems(exc)
        return problem(
            422,
            "invalid-request",
            "A field of the request is invalid",
            f"{len(problems)} problem(s) in the request",
            problems=problems,
        )

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 (registered for it only)
        code = STATUS_CODES.get(exc.status_code, "http-error")
        return problem(
            exc.status_code,
            code,
            str(exc.detail),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    app.add_exception_handler(KeyshiftError, keyshift_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
