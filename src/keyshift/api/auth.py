"""Bearer-token authentication and the one permission each route requires.

`Require(permission)` is the only way a route gets the caller's identity, so a route
without it is a route without a permission; the RBAC test walks the app's routes and
fails on any that is neither public nor guarded. `TokenOrSignature` is the one other
way, for inbound event routes: a token holding its permission, or, without a token,
the trigger's HMAC signature of the raw body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from keyshift.domain.estate import TriggerSpec
from keyshift.domain.rbac import Permission
from keyshift.errors import Unauthenticated
from keyshift.service import identities, triggers
from keyshift.service.identities import Identity
from keyshift.store.store import Store

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="An API token from `keyshift init` or `keyshift tokens create`.",
)


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(get_store)]


async def current_identity(
    store: StoreDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Identity:
    """The identity behind `Authorization: Bearer <token>`; 401 without a valid one."""
    if credentials is None:
        raise Unauthenticated("an API token is required: send Authorization: Bearer <token>")
    return await run_in_threadpool(identities.authenticate, store, credentials.credentials)


class Require:
    """A dependency granting access when the caller's roles hold `permission` (else 403)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, who: Annotated[Identity, Depends(current_identity)]) -> Identity:
        who.require(self.permission)
        return who


def caller(permission: Permission) -> object:
    """`who: Annotated[Identity, caller(Permission.X)]` in a route's signature."""
    return Depends(Require(permission))


@dataclass(frozen=True)
class EventCaller:
    """Who posted an inbound event: a token's identity, or the trigger's signature
    (`identity` None)."""

    trigger: TriggerSpec | None
    """The trigger, as authenticated by its signature; None for a token holder (the
    route looks it up, since a token may name a trigger that does not exist)."""
    identity: Identity | None


class TokenOrSignature:
    """A dependency of `POST /v1/events/rotate/{trigger}`: with `Authorization: Bearer`,
    the token must hold `permission` (401/403 as for `Require`); without one, the
    trigger's signature of the raw body must verify (401 otherwise, the same for an
    unknown trigger)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(
        self,
        request: Request,
        store: StoreDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        trigger: Annotated[str, PathParam(min_length=1, max_length=128)],
    ) -> EventCaller:
        if credentials is not None:
            who = await current_identity(store, credentials)
            who.require(self.permission)
            return EventCaller(None, who)
        body = await request.body()
        spec = await run_in_threadpool(
            triggers.authenticate_signed,
            store,
            trigger,
            body,
            request.headers,
            request.app.state.rotations.env,
        )
        return EventCaller(spec, None)
