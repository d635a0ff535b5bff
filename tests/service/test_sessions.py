"""Web sessions: started with an API token, stored as a hash, ended by idleness, by their
lifetime, by sign-out or an admin's revocation, and at once when their token or principal
stops admitting them. Every start and end is audited, never with the cookie."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from keyshift.domain.clock import utcnow
from keyshift.domain.rbac import Permission, permissions_of
from keyshift.domain.secret import Secret
from keyshift.errors import NotFound, Unauthenticated
from keyshift.service import identities, sessions
from keyshift.store.models import AuditEntry, WebSessionRow
from keyshift.store.store import Store
from tests.api.conftest import role_tokens

MINUTE = timedelta(minutes=1)


@pytest.fixture
def tokens(store: Store) -> dict[str, str]:
    """{role: token}: `root` is the admin, `<role>-1` holds each other role."""
    return role_tokens(store)


def _token_id(token: str) -> str:
    return token.split("_")[1]


def _entries(store: Store, action: str) -> list[dict[str, Any]]:
    return [e for e in store.audit_entries() if e["action"] == action]


def _audit_count(store: Store) -> int:
    with store.transaction() as s:
        return len(s.execute(select(AuditEntry.seq)).all())


def _session_count(store: Store) -> int:
    with store.transaction() as s:
        return len(s.execute(select(WebSessionRow.id)).all())


def _row(store: Store, session_id: str) -> WebSessionRow:
    with store.transaction() as s:
        row = s.get(WebSessionRow, session_id)
        assert row is not None
        s.expunge(row)
        return row


def _stored_text(store: Store, *tables: str) -> str:
    """Every column of every row of `tables` (all tables if none), as one string."""
    chunks: list[str] = []
    with store.engine.connect() as conn:
        for table in tables or inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608 (names from the schema)
                chunks += [str(v) for v in row]
    return "\n".join(chunks)


def _refused(store: Store, cookie: str, now: datetime) -> str:
    """The message of the Unauthenticated that resuming `cookie` at `now` raises."""
    with pytest.raises(Unauthenticated) as caught:
        sessions.resume(store, cookie, now=now)
    return str(caught.value)


def test_sign_in_gives_a_cookie_stored_only_as_a_hash_and_resume_gives_the_identity(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    new = sessions.sign_in(store, tokens["admin"], now=t0)
    cookie = new.cookie.reveal()
    match = re.fullmatch(r"kss_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", cookie)
    assert match is not None, "the cookie is not kss_<16 hex>_<secret>"
    assert match.group(1) == new.id
    assert new.principal == "root"
    assert new.expires_at == t0 + sessions.SESSION_LIFETIME

    row = _row(store, new.id)
    assert row.secret_hash == hashlib.sha256(cookie.encode()).hexdigest()
    assert row.token_id == _token_id(tokens["admin"])
    assert row.created_at == t0
    assert row.last_seen_at == t0
    assert row.expires_at == t0 + sessions.SESSION_LIFETIME
    assert row.revoked_at is None
    secret = match.group(2)
    for where in (_stored_text(store, "web_sessions", "audit_entries"), _stored_text(store)):
        assert cookie not in where
        assert secret not in where

    started = _entries(store, "session.started")
    assert len(started) == 1
    assert started[0]["actor"] == "root"
    assert started[0]["subject"] == f"session:{new.id}"
    assert started[0]["details"] == {"principal": "root", "token": _token_id(tokens["admin"])}

    resumed = sessions.resume(store, cookie, now=t0 + MINUTE)
    assert resumed.id == new.id
    assert resumed.identity.principal == "root"
    assert resumed.identity.roles == ("admin",)
    assert resumed.identity.permissions == frozenset(Permission)
    assert resumed.identity.token_id == _token_id(tokens["admin"])
    assert resumed.csrf == sessions.csrf_of(cookie)
    assert resumed.expires_at == t0 + sessions.SESSION_LIFETIME

    viewer = sessions.resume(
        store, sessions.sign_in(store, tokens["viewer"], now=t0).cookie.reveal(), now=t0
    )
    assert viewer.identity.principal == "viewer-1"
    assert viewer.identity.permissions == permissions_of(("viewer",))
    assert Permission.ADMIN not in viewer.identity.permissions
    assert viewer.csrf != resumed.csrf
    assert secret not in resumed.csrf  # the CSRF token is not a piece of the cookie


def test_two_sessions_of_one_token_have_their_own_cookie_and_csrf_token(
    store: Store, tokens: dict[str, str]
) -> None:
    first = sessions.sign_in(store, tokens["operator"])
    second = sessions.sign_in(store, tokens["operator"])
    assert first.id != second.id
    assert first.cookie != second.cookie
    a = sessions.resume(store, first.cookie.reveal())
    b = sessions.resume(store, second.cookie.reveal())
    assert (a.id, b.id) == (first.id, second.id)
    assert a.csrf != b.csrf
    assert a.csrf == sessions.csrf_of(first.cookie.reveal())
    assert b.csrf == sessions.csrf_of(second.cookie.reveal())


@pytest.mark.parametrize(
    "bad",
    ["", "not-a-token", "ks_0123456789abcdef_" + "A" * 43, "kss_0123456789abcdef_" + "A" * 43],
)
def test_sign_in_with_a_bad_token_is_refused_and_starts_no_session(
    store: Store, tokens: dict[str, str], bad: str
) -> None:
    with pytest.raises(Unauthenticated) as caught:
        sessions.sign_in(store, bad)
    if bad:
        assert bad not in str(caught.value)
    # A real token with its secret changed is refused too, without quoting it.
    forged = tokens["admin"][:-1] + ("B" if tokens["admin"][-1] != "B" else "C")
    with pytest.raises(Unauthenticated) as caught:
        sessions.sign_in(store, forged)
    assert forged not in str(caught.value)
    assert _session_count(store) == 0
    assert _entries(store, "session.started") == []
    audit = _stored_text(store, "audit_entries")
    assert forged.split("_", 2)[2] not in audit
    if bad.count("_") == 2:
        assert bad.split("_", 2)[2] not in audit


def test_sign_in_with_a_revoked_token_or_of_a_disabled_principal_is_refused(
    store: Store, tokens: dict[str, str]
) -> None:
    identities.revoke_token(store, _token_id(tokens["rotator"]), actor="root")
    with pytest.raises(Unauthenticated, match="revoked"):
        sessions.sign_in(store, tokens["rotator"])
    identities.disable_principal(store, "auditor-1", actor="root")
    with pytest.raises(Unauthenticated, match="disabled"):
        sessions.sign_in(store, tokens["auditor"])
    assert _session_count(store) == 0


def test_an_idle_session_ends_after_thirty_minutes_without_a_request(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    cookie = sessions.sign_in(store, tokens["viewer"], now=t0).cookie.reveal()
    new_id = cookie.split("_")[1]
    assert sessions.resume(store, cookie, now=t0 + 29 * MINUTE).identity.principal == "viewer-1"
    assert _row(store, new_id).last_seen_at == t0 + 29 * MINUTE
    # 58 minutes after sign-in, but 29 after the last request: still signed in.
    assert sessions.resume(store, cookie, now=t0 + 58 * MINUTE).id == new_id
    assert _row(store, new_id).last_seen_at == t0 + 58 * MINUTE
    # 31 minutes after the last request: idle.
    message = _refused(store, cookie, t0 + 89 * MINUTE)
    assert "idle" in message
    assert cookie not in message
    # And it stays ended: a refused resume does not refresh it.
    assert "idle" in _refused(store, cookie, t0 + 89 * MINUTE + timedelta(seconds=1))
    assert _row(store, new_id).last_seen_at == t0 + 58 * MINUTE


def test_a_session_with_no_request_31_minutes_after_sign_in_has_ended(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    cookie = sessions.sign_in(store, tokens["viewer"], now=t0).cookie.reveal()
    assert "idle" in _refused(store, cookie, t0 + 31 * MINUTE)


def test_a_session_ends_after_eight_hours_however_active_it_is(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    cookie = sessions.sign_in(store, tokens["operator"], now=t0).cookie.reveal()
    at = t0
    while at + 20 * MINUTE < t0 + sessions.SESSION_LIFETIME:
        at += 20 * MINUTE
        sessions.resume(store, cookie, now=at)
    assert at == t0 + timedelta(hours=7, minutes=40)
    message = _refused(store, cookie, t0 + sessions.SESSION_LIFETIME)
    assert "expired" in message
    assert "expired" in _refused(store, cookie, t0 + sessions.SESSION_LIFETIME + MINUTE)


def test_an_admin_revokes_a_session_and_it_ends_at_once(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    new = sessions.sign_in(store, tokens["operator"], now=t0)
    cookie = new.cookie.reveal()
    sessions.resume(store, cookie, now=t0 + MINUTE)

    info = sessions.revoke(store, new.id, actor="root", now=t0 + 2 * MINUTE)
    assert info.id == new.id
    assert info.state == "revoked"
    assert info.principal == "operator-1"
    assert "revoked" in _refused(store, cookie, t0 + 2 * MINUTE + timedelta(seconds=1))

    row = _row(store, new.id)
    assert row.revoked_at == t0 + 2 * MINUTE
    assert row.revoked_by == "root"
    revoked = _entries(store, "session.revoked")
    assert len(revoked) == 1
    assert revoked[0]["actor"] == "root"
    assert revoked[0]["subject"] == f"session:{new.id}"
    assert revoked[0]["details"] == {
        "principal": "operator-1",
        "token": _token_id(tokens["operator"]),
    }
    assert _entries(store, "session.ended") == []
    listed = {s.id: s for s in sessions.listing(store, now=t0 + 3 * MINUTE)}
    assert listed[new.id].state == "revoked"

    # Revoking it again changes nothing and audits nothing.
    again = sessions.revoke(store, new.id, actor="someone-else", now=t0 + 4 * MINUTE)
    assert again.state == "revoked"
    assert _row(store, new.id).revoked_by == "root"
    assert len(_entries(store, "session.revoked")) == 1


def test_revoking_an_unknown_session_is_not_found(store: Store, tokens: dict[str, str]) -> None:
    sessions.sign_in(store, tokens["admin"])
    before = _audit_count(store)
    with pytest.raises(NotFound):
        sessions.revoke(store, "0123456789abcdef", actor="root")
    assert _audit_count(store) == before


def test_sign_out_ends_the_session_and_is_audited(store: Store, tokens: dict[str, str]) -> None:
    t0 = utcnow()
    new = sessions.sign_in(store, tokens["approver"], now=t0)
    other = sessions.sign_in(store, tokens["approver"], now=t0)
    cookie = new.cookie.reveal()
    sessions.sign_out(store, cookie, now=t0 + MINUTE)
    assert "revoked" in _refused(store, cookie, t0 + 2 * MINUTE)
    # The principal's other session is untouched.
    assert sessions.resume(store, other.cookie.reveal(), now=t0 + 2 * MINUTE).id == other.id

    ended = _entries(store, "session.ended")
    assert len(ended) == 1
    assert ended[0]["actor"] == "approver-1"
    assert ended[0]["subject"] == f"session:{new.id}"
    assert ended[0]["details"] == {
        "principal": "approver-1",
        "token": _token_id(tokens["approver"]),
    }
    assert _entries(store, "session.revoked") == []
    assert cookie not in str(ended)

    # Signing out again does nothing.
    sessions.sign_out(store, cookie, now=t0 + 3 * MINUTE)
    assert len(_entries(store, "session.ended")) == 1
    assert _row(store, new.id).revoked_at == t0 + MINUTE


def test_sign_out_of_a_garbage_or_unknown_cookie_does_nothing(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    new = sessions.sign_in(store, tokens["viewer"], now=t0)
    cookie = new.cookie.reveal()
    wrong_secret = f"kss_{new.id}_" + ("A" * 43 if not cookie.endswith("A" * 43) else "B" * 43)
    before = _audit_count(store)
    for garbage in (
        "",
        "garbage",
        "kss_",
        f"kss_{'0' * 16}_{'A' * 43}",
        wrong_secret,
        tokens["viewer"],
    ):
        sessions.sign_out(store, garbage, now=t0 + MINUTE)
    assert _audit_count(store) == before
    assert _row(store, new.id).revoked_at is None
    assert sessions.resume(store, cookie, now=t0 + 2 * MINUTE).id == new.id


def test_revoking_the_token_ends_its_sessions_at_once(store: Store, tokens: dict[str, str]) -> None:
    new = sessions.sign_in(store, tokens["operator"])
    cookie = new.cookie.reveal()
    sessions.resume(store, cookie)
    identities.revoke_token(store, _token_id(tokens["operator"]), actor="root")
    message = _refused(store, cookie, utcnow())
    assert "revoked" in message
    assert _token_id(tokens["operator"]) in message
    [listed] = [i for i in sessions.listing(store) if i.id == new.id]
    assert listed.state == "token ended"  # the listing says what resume would say


def test_disabling_the_principal_ends_its_sessions_at_once(
    store: Store, tokens: dict[str, str]
) -> None:
    new = sessions.sign_in(store, tokens["operator"])
    cookie = new.cookie.reveal()
    sessions.resume(store, cookie)
    identities.disable_principal(store, "operator-1", actor="root")
    assert "disabled" in _refused(store, cookie, utcnow())
    [listed] = [i for i in sessions.listing(store) if i.id == new.id]
    assert listed.state == "token ended"


def test_a_session_ends_when_its_token_expires(store: Store, tokens: dict[str, str]) -> None:
    issued = identities.create_token(
        store, "viewer-1", name="short", lifetime=timedelta(minutes=10), actor="root"
    )
    t0 = utcnow()
    new = sessions.sign_in(store, issued.token.reveal(), now=t0)
    assert new.expires_at == t0 + sessions.SESSION_LIFETIME  # the session itself lives on
    cookie = new.cookie.reveal()
    assert sessions.resume(store, cookie, now=t0 + 5 * MINUTE).identity.token_id == issued.info.id
    message = _refused(store, cookie, t0 + 11 * MINUTE)
    assert "expired" in message
    assert issued.info.id in message  # the token's expiry, not the session's


def test_malformed_cookies_are_refused(store: Store, tokens: dict[str, str]) -> None:
    new = sessions.sign_in(store, tokens["admin"])
    cookie = new.cookie.reveal()
    secret = cookie.split("_", 2)[2]
    malformed = [
        "",
        "garbage",
        "kss_",
        f"kss_{new.id}",
        f"kss_{new.id}_",
        f"kss_{new.id.upper()}_{secret}" if new.id.upper() != new.id else f"kss_{new.id}x_{secret}",
        f"kss_{new.id}_{secret[:-1]}",
        f"kss_{new.id}_{secret}x",
        f"ks_{new.id}_{secret}",
        f" {cookie}",
        f"{cookie}\n",
        tokens["admin"],  # the API token is not a session cookie
    ]
    for bad in malformed:
        with pytest.raises(Unauthenticated):
            sessions.resume(store, bad)
    assert sessions.resume(store, cookie).id == new.id


def test_a_cookie_with_the_right_id_and_a_wrong_secret_is_refused(
    store: Store, tokens: dict[str, str]
) -> None:
    new = sessions.sign_in(store, tokens["admin"])
    other = sessions.sign_in(store, tokens["admin"])
    cookie = new.cookie.reveal()
    secret = cookie.split("_", 2)[2]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (
        f"kss_{new.id}_{flipped}",
        f"kss_{new.id}_{other.cookie.reveal().split('_', 2)[2]}",
    ):
        message = _refused(store, wrong, utcnow())
        assert "unknown session" in message
        assert wrong not in message
    # An unknown id with a well-formed secret is refused the same way.
    assert "unknown session" in _refused(store, f"kss_{'0' * 16}_{secret}", utcnow())
    assert sessions.resume(store, cookie).id == new.id


def test_no_output_holds_the_cookie(store: Store, tokens: dict[str, str]) -> None:
    new = sessions.sign_in(store, tokens["admin"])
    cookie = new.cookie.reveal()
    secret = cookie.split("_", 2)[2]
    assert isinstance(new.cookie, Secret)
    for shown in (repr(new), str(new), f"{new}", repr(new.cookie), f"{new.cookie}"):
        assert cookie not in shown
        assert secret not in shown
    resumed = sessions.resume(store, cookie)
    assert secret not in repr(resumed)
    fields = {f.name for f in dataclasses.fields(sessions.SessionInfo)}
    assert "cookie" not in fields
    assert "secret_hash" not in fields
    listed = sessions.listing(store)
    assert [s.id for s in listed] == [new.id]
    assert secret not in repr(listed)
    assert identities.token_hash(cookie) not in repr(listed)


def test_listing_shows_every_session_newest_first_with_its_state(
    store: Store, tokens: dict[str, str]
) -> None:
    t0 = utcnow()
    expired = sessions.sign_in(store, tokens["admin"], now=t0 - sessions.SESSION_LIFETIME)
    idle = sessions.sign_in(store, tokens["viewer"], now=t0 - 40 * MINUTE)
    revoked = sessions.sign_in(store, tokens["operator"], now=t0 - 10 * MINUTE)
    active = sessions.sign_in(store, tokens["auditor"], now=t0 - 5 * MINUTE)
    sessions.revoke(store, revoked.id, actor="root", now=t0 - MINUTE)

    listed = sessions.listing(store, now=t0)
    assert [(s.id, s.principal, s.state) for s in listed] == [
        (active.id, "auditor-1", "active"),
        (revoked.id, "operator-1", "revoked"),
        (idle.id, "viewer-1", "idle"),
        (expired.id, "root", "expired"),
    ]
    first = listed[0]
    assert first.token_id == _token_id(tokens["auditor"])
    assert first.created_at == t0 - 5 * MINUTE
    assert first.last_seen_at == t0 - 5 * MINUTE
    assert first.expires_at == t0 - 5 * MINUTE + sessions.SESSION_LIFETIME
