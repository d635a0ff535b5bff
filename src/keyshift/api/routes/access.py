"""Access: users and service accounts, their API tokens, and the built-in roles."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import Name, PathName, actor_of, duration, v1_router
from keyshift.domain.rbac import ROLE_DESCRIPTIONS, ROLE_PERMISSIONS, Permission, Role
from keyshift.service import identities, sessions
from keyshift.service.identities import Identity

router = v1_router()


class PrincipalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: Literal["user", "service_account"] = "user"
    roles: list[Role] = Field(min_length=1)


@router.get("/users", tags=["admin"])
def list_users(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ADMIN)]
) -> list[identities.Principal]:
    """Every user and service account with its roles."""
    return identities.list_principals(store)


@router.post("/users", status_code=201, tags=["admin"])
def add_user(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ADMIN)], body: PrincipalCreate
) -> identities.Principal:
    """Create a user or service account (409 `conflict` if the name is taken)."""
    return identities.add_principal(
        store,
        name=body.name,
        kind=body.kind,
        roles=[r.value for r in body.roles],
        actor=actor_of(who),
    )


@router.post("/users/{name}/disable", tags=["admin"])
def disable_user(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ADMIN)], name: PathName
) -> identities.Principal:
    """Disable a user or service account; its tokens stop working at once."""
    return identities.disable_principal(store, name, actor=actor_of(who))


@router.get("/tokens", tags=["admin"])
def list_tokens(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ADMIN)],
    principal: Annotated[str | None, Query(max_length=128)] = None,
) -> list[identities.TokenInfo]:
    """Every API token by id and prefix, with its state and dates (never the token)."""
    return identities.list_tokens(store, principal=principal)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principal: Name
    name: str = Field(default="api token", min_length=1, max_length=128)
    expires_in: str = Field(default="90d", max_length=32, examples=["90d", "never"])
    """How long the token lives, e.g. `90d`; `never` for no expiry."""


class TokenCreated(BaseModel):
    token: str
    """The token. It is shown this once and cannot be read again."""
    info: identities.TokenInfo


@router.post("/tokens", status_code=201, tags=["admin"])
def create_token(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ADMIN)], body: TokenCreate
) -> TokenCreated:
    """Issue an API token for a user or service account. The response is the only place
    the token is ever shown."""
    lifetime = None if body.expires_in == "never" else duration("expires_in", body.expires_in)
    issued = identities.create_token(
        store, body.principal, name=body.name, lifetime=lifetime, actor=actor_of(who)
    )
    return TokenCreated(token=issued.token.reveal(), info=issued.info)


@router.post("/tokens/{token_id}/revoke", tags=["admin"])
def revoke_token(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ADMIN)],
    token_id: Annotated[str, Path(min_length=1, max_length=40)],
) -> identities.TokenInfo:
    """Revoke a token by id (or prefix `ks_<id>`); it stops working at once."""
    return identities.revoke_token(store, token_id, actor=actor_of(who))


class RoleOut(BaseModel):
    role: Role
    description: str
    permissions: list[Permission]


@router.get("/roles", tags=["admin"])
def list_roles(who: Annotated[Identity, caller(Permission.ADMIN)]) -> list[RoleOut]:
    """The built-in roles and the permissions each grants."""
    return [
        RoleOut(role=r, description=ROLE_DESCRIPTIONS[r], permissions=sorted(ROLE_PERMISSIONS[r]))
        for r in Role
    ]


@router.get("/sessions", tags=["admin"])
def list_sessions(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ADMIN)]
) -> list[sessions.SessionInfo]:
    """Every web session (dashboard sign-in), newest first, with its state: `active`,
    `idle`, `expired` or `revoked`. Never the cookie."""
    return sessions.listing(store)


@router.post("/sessions/{session_id}/revoke", tags=["admin"])
def revoke_session(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ADMIN)],
    session_id: Annotated[str, Path(min_length=1, max_length=32)],
) -> sessions.SessionInfo:
    """End a web session at once; its next request signs the browser out."""
    return sessions.revoke(store, session_id, actor=actor_of(who))
