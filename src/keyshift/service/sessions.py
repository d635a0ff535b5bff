"""Web sessions: a browser signs in once with an API token and then carries a cookie.

The cookie reads `kss_<id>_<secret>`; the store keeps only the SHA-256 of the whole
cookie, as it does for tokens. Every request checks the session *and* the token it was
started with, so a session stops at once when it is revoked, when it is idle longer than
`IDLE_TIMEOUT`, when it reaches `SESSION_LIFETIME`, when its token expires or is revoked,
or when its principal is disabled.

Each session has a CSRF token derived from its secret (an HMAC, so knowing the CSRF
token tells nothing of the cookie); every form that changes something carries it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select

from keyshift.domain.clock import utcnow
from keyshift.domain.secret import Secret
from keyshift.errors import NotFound, Unauthenticated
from keyshift.service import identities
from keyshift.service.identities import Identity
from keyshift.store.models import ApiTokenRow, PrincipalRow, WebSessionRow
from keyshift.store.store import Store

SESSION_PREFIX = "kss_"
SESSION_LIFETIME = timedelta(hours=8)
"""A session ends this long after sign-in, however active it is (a working day)."""
IDLE_TIMEOUT = timedelta(minutes=30)
"""A session with no request for this long ends."""

_COOKIE = re.compile(r"^kss_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewSession:
    """A session just started: the cookie to set (shown once) and when it ends."""

    id: str
    principal: str
    cookie: Secret
    expires_at: datetime


@dataclass(frozen=True)
class WebSession:
    """The session behind a request: who it is and the CSRF token its forms carry."""

    id: str
    identity: Identity
    csrf: str
    expires_at: datetime


@dataclass(frozen=True)
class SessionInfo:
    """A session as listed: never the cookie."""

    id: str
    principal: str
    token_id: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime
    state: str
    """`active`, `idle` (timed out), `expired`, `revoked`, or `token ended` (its token
    was revoked or expired, or its principal disabled)."""


def csrf_of(cookie: str) -> str:
    """The CSRF token of the session whose cookie this is."""
    return hmac.new(cookie.encode(), b"keyshift-csrf", hashlib.sha256).hexdigest()


def sign_in(store: Store, token: str, *, now: datetime | None = None) -> NewSession:
    """Start a session for the holder of a valid API token (Unauthenticated otherwise,
    starting nothing). Audited as `session.started`, with the token's id."""
    now = now or utcnow()
    who = identities.authenticate(store, token, now=now)
    session_id = secrets.token_hex(8)
    cookie = f"{SESSION_PREFIX}{session_id}_{secrets.token_urlsafe(32)}"
    with store.transaction() as s:
        s.add(
            WebSessionRow(
                id=session_id,
                secret_hash=identities.token_hash(cookie),
                token_id=who.token_id,
                created_at=now,
                expires_at=now + SESSION_LIFETIME,
                last_seen_at=now,
                revoked_at=None,
                revoked_by=None,
            )
        )
        store.audit(
            s,
            actor=who.principal,
            action="session.started",
            subject=f"session:{session_id}",
            details={"principal": who.principal, "token": who.token_id},
        )
    return NewSession(session_id, who.principal, Secret(cookie), now + SESSION_LIFETIME)


def _row(store: Store, cookie: str) -> WebSessionRow:
    match = _COOKIE.match(cookie)
    if match is None:
        raise Unauthenticated("the session cookie is not a keyshift session")
    with store.transaction() as s:
        row = s.get(WebSessionRow, match.group(1))
        if row is None or not hmac.compare_digest(row.secret_hash, identities.token_hash(cookie)):
            raise Unauthenticated("unknown session; sign in again")
        s.expunge(row)
        return row


def _state(row: WebSessionRow, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at <= now:
        return "expired"
    if now - row.last_seen_at >= IDLE_TIMEOUT:
        return "idle"
    return "active"


def resume(store: Store, cookie: str, *, now: datetime | None = None) -> WebSession:
    """The session behind a request's cookie; Unauthenticated when it has ended or when
    its token or principal no longer admits it."""
    now = now or utcnow()
    row = _row(store, cookie)
    state = _state(row, now)
    if state != "active":
        raise Unauthenticated(f"session {row.id} has ended ({state}); sign in again")
    with store.transaction() as s:
        token = s.get(ApiTokenRow, row.token_id)
        principal = s.get(PrincipalRow, token.principal_id) if token else None
        if token is None or principal is None:
            raise Unauthenticated(f"session {row.id} has no token; sign in again")
        who = identities.identity_of(token, principal, now)
        if now - row.last_seen_at >= identities.LAST_USED_RESOLUTION:
            live = s.get(WebSessionRow, row.id)
            if live is not None:
                live.last_seen_at = now
    return WebSession(row.id, who, csrf_of(cookie), row.expires_at)


def sign_out(store: Store, cookie: str, *, now: datetime | None = None) -> None:
    """End the session behind `cookie` (audited `session.ended`); an unknown or ended one
    is left as it is."""
    try:
        row = _row(store, cookie)
    except Unauthenticated:
        return
    if row.revoked_at is None:
        _revoke(store, row.id, actor=None, now=now or utcnow())


def _revoke(store: Store, session_id: str, *, actor: str | None, now: datetime) -> SessionInfo:
    with store.transaction() as s:
        row = s.get(WebSessionRow, session_id)
        if row is None:
            raise NotFound(f"no web session {session_id}")
        token = s.get(ApiTokenRow, row.token_id)
        principal = s.get(PrincipalRow, token.principal_id) if token else None
        name = principal.name if principal else "?"
        if row.revoked_at is None:
            row.revoked_at, row.revoked_by = now, actor or name
            store.audit(
                s,
                actor=actor or name,
                action="session.revoked" if actor else "session.ended",
                subject=f"session:{session_id}",
                details={"principal": name, "token": row.token_id},
            )
        return _info(row, name, now)


def revoke(
    store: Store, session_id: str, *, actor: str, now: datetime | None = None
) -> SessionInfo:
    """End a session at once (an admin's action, audited `session.revoked`)."""
    return _revoke(store, session_id, actor=actor, now=now or utcnow())


def _info(row: WebSessionRow, principal: str, now: datetime) -> SessionInfo:
    return SessionInfo(
        row.id,
        principal,
        row.token_id,
        row.created_at,
        row.expires_at,
        row.last_seen_at,
        _state(row, now),
    )


def listing(store: Store, *, now: datetime | None = None) -> list[SessionInfo]:
    """Every web session, newest first, with its state now."""
    now = now or utcnow()
    with store.transaction() as s:
        rows = s.execute(
            select(WebSessionRow, ApiTokenRow, PrincipalRow)
            .join(ApiTokenRow, ApiTokenRow.id == WebSessionRow.token_id)
            .join(PrincipalRow, PrincipalRow.id == ApiTokenRow.principal_id)
            .order_by(WebSessionRow.created_at.desc())
        ).all()
        out = []
        for row, token, principal in rows:
            info = _info(row, principal.name, now)
            if info.state == "active":
                try:
                    identities.identity_of(token, principal, now)
                except Unauthenticated:
                    info = replace(info, state="token ended")
            out.append(info)
        return out
