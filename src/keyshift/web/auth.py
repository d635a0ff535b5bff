"""Who is looking at a page, and whether they may.

`Page(permission)` is the only way a page route gets its viewer, as `Require` is for
the REST routes: it resumes the web session from its cookie, checks the permission (the
same `Permission` the matching REST route requires), and on every POST checks the CSRF
token the form carries. `Page(None)` admits any signed-in viewer (logout).

Sign-in itself is guarded by a login CSRF cookie: the form carries an HMAC of it, so a
page elsewhere cannot sign a browser in with someone else's token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from keyshift.api.auth import StoreDep
from keyshift.domain.rbac import Permission
from keyshift.errors import CsrfRefused, Unauthenticated
from keyshift.service import sessions
from keyshift.service.identities import Identity

SESSION_COOKIE = "keyshift_session"
LOGIN_COOKIE = "keyshift_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Viewer:
    """The signed-in person behind a request, as the templates see them."""

    identity: Identity
    csrf: str
    session_id: str

    @property
    def name(self) -> str:
        return self.identity.principal

    def can(self, permission: Permission | str) -> bool:
        """Whether a button that needs `permission` is shown (its route checks again)."""
        return Permission(permission) in self.identity.permissions


def is_tls(request: Request) -> bool:
    """Whether the browser reached us over TLS (uvicorn behind TLS, or its proxy headers)."""
    return request.url.scheme == "https"


async def _sent_csrf(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def same(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


class Page:
    """A dependency granting a page to a signed-in viewer whose roles hold `permission`
    (PermissionDenied otherwise); Unauthenticated without a live session; CsrfRefused on
    a POST without the session's CSRF token."""

    def __init__(self, permission: Permission | None) -> None:
        self.permission = permission

    async def __call__(self, request: Request, store: StoreDep) -> Viewer:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthenticated("sign in to see this page")
        session = await run_in_threadpool(sessions.resume, store, cookie)
        if request.method == "POST" and not same(await _sent_csrf(request), session.csrf):
            raise CsrfRefused("the form's CSRF token is missing or not this session's; reload")
        if self.permission is not None:
            session.identity.require(self.permission)
        return Viewer(session.identity, session.csrf, session.id)


def viewer(permission: Permission | None) -> object:
    """`who: Annotated[Viewer, viewer(Permission.X)]` in a page route's signature."""
    return Depends(Page(permission))


SignedIn = Annotated[Viewer, viewer(None)]


def login_nonce() -> str:
    return secrets.token_urlsafe(24)


def login_csrf(nonce: str) -> str:
    """The token the sign-in form carries for the browser holding login cookie `nonce`."""
    return hmac.new(nonce.encode(), b"keyshift-login", hashlib.sha256).hexdigest()
