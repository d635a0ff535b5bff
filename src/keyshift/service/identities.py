"""Use cases on identities: principals (users and service accounts) with roles, and
their API tokens.

A token reads `ks_<id>_<secret>`. The `id` (16 hex digits) is public: it is listed,
audited and used to revoke the token. The secret is 32 random bytes. The store keeps
only the SHA-256 of the whole token, so a copy of the database does not let anyone
call the API; the token itself is returned once, by `create_token` or `init_admin`,
and never appears in a list, a log line or an audit entry. A token stops working when
it expires, when it is revoked, or when its principal is disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.domain.clock import utcnow
from keyshift.domain.rbac import (
    ROLE_DESCRIPTIONS,
    ROLE_PERMISSIONS,
    Permission,
    Role,
    permissions_of,
)
from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError, Conflict, NotFound, PermissionDenied, Unauthenticated
from keyshift.store.models import ApiTokenRow, PrincipalRow
from keyshift.store.store import Store

TOKEN_PREFIX = "ks_"  # noqa: S105 (how every token starts, not a token)
DEFAULT_TOKEN_LIFETIME = timedelta(days=90)
"""How long a token lives unless its creator says otherwise."""
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""`last_used_at` is written at most this often per token, so reads stay reads."""
PRINCIPAL_KINDS = ("user", "service_account")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_TOKEN = re.compile(r"^ks_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    """A user or service account as shown to operators."""

    name: str
    kind: str
    roles: tuple[str, ...]
    created_at: datetime
    created_by: str
    disabled_at: datetime | None


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed: its public id and dates, never the token."""

    id: str
    prefix: str
    """How the token starts (`ks_<id>`), to recognise it in a password manager."""
    principal: str
    name: str
    state: str
    """`active`, `expired` or `revoked`."""
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class IssuedToken:
    """A token just created: the only time its value is available."""

    info: TokenInfo
    token: Secret


@dataclass(frozen=True)
class Identity:
    """Who is calling, as established from a valid token."""

    principal: str
    kind: str
    roles: tuple[str, ...]
    permissions: frozenset[Permission]
    token_id: str

    def require(self, permission: Permission) -> None:
        """Raise PermissionDenied unless the principal's roles grant `permission`."""
        if permission not in self.permissions:
            raise PermissionDenied(self.principal, permission.value)


def token_hash(token: str) -> str:
    """The stored form of a token: SHA-256 hex. The token holds 256 random bits, so a
    fast hash is enough (nothing to brute-force)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            "name", "must be 1-128 letters, digits, '.', '_', '@' or '-', starting alphanumeric"
        )


def _check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    known = {r.value for r in Role}
    chosen = tuple(dict.fromkeys(roles))
    if not chosen:
        raise ConfigError("roles", f"at least one role is needed ({', '.join(sorted(known))})")
    unknown = [r for r in chosen if r not in known]
    if unknown:
        raise ConfigError(
            "roles", f"unknown role {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return chosen


def _principal(row: PrincipalRow) -> Principal:
    return Principal(
        row.name, row.kind, tuple(row.roles), row.created_at, row.created_by, row.disabled_at
    )


def _token_state(row: ApiTokenRow, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def _token_info(row: ApiTokenRow, principal: str, now: datetime) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        prefix=f"{TOKEN_PREFIX}{row.id}",
        principal=principal,
        name=row.name,
        state=_token_state(row, now),
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _find(s: Session, name: str) -> PrincipalRow:
    row = s.execute(select(PrincipalRow).where(PrincipalRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no user or service account named {name}")
    return row


def _enabled_admins(s: Session) -> list[str]:
    rows = s.execute(select(PrincipalRow).where(PrincipalRow.disabled_at.is_(None))).scalars()
    return [r.name for r in rows if Role.ADMIN.value in r.roles]


def _add(
    store: Store, s: Session, *, name: str, kind: str, roles: tuple[str, ...], actor: str
) -> PrincipalRow:
    if s.execute(select(PrincipalRow.id).where(PrincipalRow.name == name)).first() is not None:
        raise Conflict(f"a user or service account named {name} already exists")
    row = PrincipalRow(
        id=str(uuid.uuid4()),
        name=name,
        kind=kind,
        roles=list(roles),
        created_at=utcnow(),
        created_by=actor,
        disabled_at=None,
    )
    s.add(row)
    s.flush()  # the row exists before a token can reference it
    store.audit(
        s,
        actor=actor,
        action="principal.created",
        subject=f"principal:{name}",
        details={"kind": kind, "roles": list(roles)},
    )
    return row


def _issue(
    store: Store,
    s: Session,
    principal: PrincipalRow,
    *,
    name: str,
    lifetime: timedelta | None,
    actor: str,
) -> IssuedToken:
    token_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = utcnow()
    row = ApiTokenRow(
        id=token_id,
        principal_id=principal.id,
        name=name,
        token_hash=token_hash(token),
        created_at=now,
        created_by=actor,
        expires_at=now + lifetime if lifetime is not None else None,
        revoked_at=None,
        last_used_at=None,
    )
    s.add(row)
    store.audit(
        s,
        actor=actor,
        action="token.created",
        subject=f"token:{token_id}",
        details={
            "principal": principal.name,
            "name": name,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        },
    )
    return IssuedToken(_token_info(row, principal.name, now), Secret(token))


def init_admin(
    store: Store,
    *,
    name: str,
    actor: str,
    lifetime: timedelta | None = DEFAULT_TOKEN_LIFETIME,
) -> IssuedToken:
    """Create the first admin and its first token. Refused once any enabled admin exists,
    so `init` cannot be used to mint a way in to a running installation."""
    _check_name(name)
    with store.transaction() as s:
        admins = _enabled_admins(s)
        if admins:
            raise Conflict(
                f"keyshift is already initialised (admin {admins[0]}); "
                "an admin creates further tokens with `keyshift tokens create`"
            )
        row = _add(store, s, name=name, kind="user", roles=(Role.ADMIN.value,), actor=actor)
        return _issue(store, s, row, name="initial admin token", lifetime=lifetime, actor=actor)


def add_principal(
    store: Store, *, name: str, kind: str, roles: Iterable[str], actor: str
) -> Principal:
    """Create a user or service account holding the given built-in roles."""
    _check_name(name)
    if kind not in PRINCIPAL_KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(PRINCIPAL_KINDS)}")
    chosen = _check_roles(roles)
    with store.transaction() as s:
        return _principal(_add(store, s, name=name, kind=kind, roles=chosen, actor=actor))


def list_principals(store: Store) -> list[Principal]:
    with store.transaction() as s:
        rows = s.execute(select(PrincipalRow).order_by(PrincipalRow.name)).scalars()
        return [_principal(r) for r in rows]


def disable_principal(store: Store, name: str, *, actor: str) -> Principal:
    """Disable a principal: its tokens stop working at once. Disabling an already
    disabled principal changes nothing. The last enabled admin cannot be disabled."""
    with store.transaction() as s:
        row = _find(s, name)
        if row.disabled_at is not None:
            return _principal(row)
        if Role.ADMIN.value in row.roles and _enabled_admins(s) == [row.name]:
            raise Conflict(f"{name} is the last enabled admin; add another admin first")
        row.disabled_at = utcnow()
        store.audit(
            s, actor=actor, action="principal.disabled", subject=f"principal:{name}", details={}
        )
        return _principal(row)


def create_token(
    store: Store,
    principal: str,
    *,
    name: str,
    lifetime: timedelta | None = DEFAULT_TOKEN_LIFETIME,
    actor: str,
) -> IssuedToken:
    """Issue a new token for an enabled principal. `lifetime` None = never expires."""
    if lifetime is not None and lifetime <= timedelta(0):
        raise ConfigError("expires_in", "must be a positive duration")
    if not name or len(name) > 128:
        raise ConfigError("name", "must be 1-128 characters")
    with store.transaction() as s:
        row = _find(s, principal)
        if row.disabled_at is not None:
            raise Conflict(f"{principal} is disabled; it cannot get new tokens")
        return _issue(store, s, row, name=name, lifetime=lifetime, actor=actor)


def list_tokens(store: Store, *, principal: str | None = None) -> list[TokenInfo]:
    """Every token (active, expired and revoked), oldest first; ids and dates only."""
    now = utcnow()
    with store.transaction() as s:
        query = (
            select(ApiTokenRow, PrincipalRow.name)
            .join(PrincipalRow, PrincipalRow.id == ApiTokenRow.principal_id)
            .order_by(ApiTokenRow.created_at)
        )
        if principal is not None:
            query = query.where(PrincipalRow.id == _find(s, principal).id)
        return [_token_info(row, owner, now) for row, owner in s.execute(query).all()]


def revoke_token(store: Store, token_id: str, *, actor: str) -> TokenInfo:
    """Revoke a token by id. Revoking a revoked token changes nothing."""
    now = utcnow()
    with store.transaction() as s:
        row = s.get(ApiTokenRow, token_id.removeprefix(TOKEN_PREFIX))
        if row is None:
            raise NotFound(f"no API token {token_id}")
        owner = s.get(PrincipalRow, row.principal_id)
        owner_name = owner.name if owner else "?"
        if row.revoked_at is None:
            row.revoked_at = now
            store.audit(
                s,
                actor=actor,
                action="token.revoked",
                subject=f"token:{row.id}",
                details={"principal": owner_name, "name": row.name},
            )
        return _token_info(row, owner_name, now)


def authenticate(store: Store, token: str, *, now: datetime | None = None) -> Identity:
    """The identity behind a presented token; Unauthenticated if it is malformed, unknown,
    expired, revoked, or its principal is disabled. Messages name the token id at most."""
    now = now or utcnow()
    match = _TOKEN.match(token)
    if match is None:
        raise Unauthenticated("the bearer token is not a keyshift API token")
    token_id = match.group(1)
    with store.transaction() as s:
        row = s.get(ApiTokenRow, token_id)
        if row is None or not hmac.compare_digest(row.token_hash, token_hash(token)):
            raise Unauthenticated(f"unknown API token {TOKEN_PREFIX}{token_id}")
        who = identity_of(row, s.get(PrincipalRow, row.principal_id), now)
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            row.last_used_at = now
        return who


def identity_of(row: ApiTokenRow, principal: PrincipalRow | None, now: datetime) -> Identity:
    """The identity a known token stands for now; Unauthenticated if the token is revoked
    or expired or its principal disabled (the checks a web session repeats per request)."""
    token_id = row.id
    if row.revoked_at is not None:
        raise Unauthenticated(f"API token {TOKEN_PREFIX}{token_id} was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated(f"API token {TOKEN_PREFIX}{token_id} has expired")
    if principal is None or principal.disabled_at is not None:
        raise Unauthenticated(f"the principal of API token {TOKEN_PREFIX}{token_id} is disabled")
    return Identity(
        principal=principal.name,
        kind=principal.kind,
        roles=tuple(principal.roles),
        permissions=permissions_of(tuple(principal.roles)),
        token_id=token_id,
    )


@dataclass(frozen=True)
class RoleView:
    """A built-in role as listed: what it is for and the permissions it grants."""

    role: str
    description: str
    permissions: list[str]
    """Sorted."""


def roles() -> list[RoleView]:
    """Every built-in role, in the order `Role` declares them."""
    return [
        RoleView(r.value, ROLE_DESCRIPTIONS[r], sorted(p.value for p in ROLE_PERMISSIONS[r]))
        for r in Role
    ]
