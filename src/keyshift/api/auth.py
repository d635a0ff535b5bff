"""Bearer-token authentication and the one permission each route requires.

`Require(permission)` is the only way a route gets the caller's identity, so a route
without it is a route without a permission; the RBAC test walks the app's routes and
fails on any that is neither public nor guarded.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from keyshift.domain.rbac import Permission
from keyshift.errors import Unauthenticated
from keyshift.service import identities
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
