"""What the ticket channels (`jira`, `servicenow`) share: which events open a ticket, the
URL and authentication rules, and how an answer that
retrying cannot change is worded.

A ticket channel opens one ticket for the first event of a rotation that is in its
`open_on` (by default the exception path) and adds every later event of that rotation
to it; the outbox hands it the ticket's reference as `thread`. Events before the first
one that opens a ticket are delivered as "no ticket" and send nothing.

Their answers are judged like every channel's (`base.request_json`): 429 and 5xx are
retried with the server's Retry-After, anything else is refused for good. Errors quote
the status and the names the service gave (field names, its fixed error message), never
a URL, a header or a value the service echoed back.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx

from keyshift.domain import notifications as kinds
from keyshift.domain.location import http_url
from keyshift.notify.base import cut
from keyshift.targets.web import is_loopback

__all__ = [
    "EXCEPTION_PATH",
    "basic_auth",
    "json_object",
    "known_kinds",
    "one_line",
    "refusal",
    "secure_url",
]

EXCEPTION_PATH = [
    kinds.ROTATION_FAILED,
    kinds.ROTATION_ROLLED_BACK,
    kinds.ROTATION_NEEDS_ATTENTION,
    kinds.ROTATION_STUCK,
]
"""The events that open a ticket unless `open_on` says otherwise."""


def known_kinds(open_on: list[str]) -> list[str]:
    """`open_on` if it names only event kinds (ValueError otherwise, for a validator)."""
    unknown = [k for k in open_on if k not in kinds.EVENT_KINDS]
    if unknown:
        raise ValueError(
            f"unknown event kind {', '.join(unknown)}; known: {', '.join(kinds.EVENT_KINDS)}"
        )
    return open_on


def secure_url(url: str) -> str:
    """A service's base URL without its trailing slash: https://, or http:// only to
    this host (credentials go with every request). ValueError otherwise."""
    http_url(url, credentials_message="url must not carry user:password; use the *_from fields")
    parsed = httpx.URL(url)
    if parsed.scheme != "https" and not is_loopback(parsed.host):
        raise ValueError("url must be https:// (http:// only to this host)")
    if parsed.query or parsed.fragment:
        raise ValueError("url must be the service's base URL, without a query or fragment")
    return url.rstrip("/")


def basic_auth(user: str, password: str) -> str:
    """The `Authorization` header value of HTTP basic authentication."""
    pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {pair}"


def one_line(text: str, limit: int) -> str:
    """A summary field: one line, at most `limit` characters."""
    return cut(" ".join(text.split()), limit)


def refusal(
    what: str, *, record: str | None, said: Callable[[Any], str | None]
) -> Callable[[httpx.Response], str]:
    """Words for an answer retrying cannot change: 401/403 are refused credentials, 404
    of `record` (a ticket being added to) is a ticket that is gone, and for other
    statuses `said` picks what may be quoted from the answer's JSON body."""

    def refused(response: httpx.Response) -> str:
        status = response.status_code
        if status in (401, 403):
            reason = "credentials refused"
        elif status == 404 and record is not None:
            reason = f"{record} not found"
        else:
            try:
                body = response.json() if len(response.content) < 20_000 else None
            except ValueError:
                body = None
            reason = said(body) or ""
        return f"{what} answered HTTP {status}{': ' + reason if reason else ''}; not retried"

    return refused


def json_object(response: httpx.Response) -> dict[str, Any]:
    """An answer's JSON object body ({} when it is not one)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
