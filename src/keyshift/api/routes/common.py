"""What the `/v1` routers share: path and field types, the actor of a route's audit
entries, the rotations running in the background, and the `entra:rotate` check on
rotations of Entra ID credentials.

Authentication and the one permission of each route are `keyshift.api.auth`'s; problem
JSON is `keyshift.api.problems`'."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field

from keyshift.api import problems
from keyshift.api.runner import BackgroundRotations
from keyshift.domain.durations import parse_duration
from keyshift.domain.rbac import Permission
from keyshift.errors import ConfigError
from keyshift.service import catalog, rotations
from keyshift.service.identities import Identity

Name = Annotated[str, Field(min_length=1, max_length=128)]
PathName = Annotated[str, Path(min_length=1, max_length=128)]
RotationId = Annotated[str, Path(min_length=1, max_length=36)]


def v1_router() -> APIRouter:
    """A router of `/v1` routes, each of which may answer 401 (no valid token) and 403
    (the token's roles lack the route's permission)."""
    return APIRouter(prefix="/v1", responses=problems.responses("unauthenticated", "forbidden"))


def duration(field: str, value: str) -> timedelta:
    """`value` as a duration; a ConfigError naming `field` when it is not one."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(field, str(exc)) from None


def actor_of(who: Identity) -> str:
    """The principal's name is the actor in the audit trail, as KEYSHIFT_ACTOR is on the CLI."""
    return who.principal


class Background:
    """The rotations this server runs in the background, as a route sees them: the one a
    route starts is the one its response's `Location` points at."""

    def __init__(self, request: Request, response: Response) -> None:
        self.rotations: BackgroundRotations = request.app.state.rotations
        self.response = response

    def start(self, rotation_id: str, *, actor: str) -> str:
        """Run the rotation in the background (this returns at once) and point the
        response's `Location` at it; returns that location."""
        self.rotations.start(rotation_id, actor=actor)
        location = f"/v1/rotations/{rotation_id}"
        self.response.headers["Location"] = location
        return location


async def _background(request: Request, response: Response) -> Background:
    # A coroutine, so FastAPI builds it on the event loop, where `start` must be called.
    return Background(request, response)


BackgroundDep = Annotated[Background, Depends(_background)]


def needs_entra_rotate(provider_type: str) -> bool:
    """Whether acting on a rotation of a credential of this provider also needs
    `entra:rotate` (an Entra ID credential)."""
    return provider_type.startswith("entra")


def require_entra_rotate_for(who: Identity, provider_type: str) -> None:
    """Acting on a rotation of an Entra ID credential also needs `entra:rotate`."""
    if needs_entra_rotate(provider_type):
        who.require(Permission.ENTRA_ROTATE)


def require_entra_rotate(store: Any, who: Identity, credential: str) -> None:
    require_entra_rotate_for(who, rotations.provider_type(store, credential))


class CredentialQuery(BaseModel):
    """Which credentials a listing shows, in which order (`GET /v1/credentials`, the
    dashboard's credentials page)."""

    lifecycle: str | None = Field(default=None, max_length=64)
    owner: str | None = Field(default=None, max_length=128)
    environment: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=128)
    q: str | None = Field(default=None, max_length=128)
    """A part of the credential's name."""
    sort: str = Field(default="name", max_length=32)
    """name, lifecycle, expires, last_rotated, next_rotation, owner, environment, provider."""
    desc: bool = False
    page: int = Field(default=1, ge=1, le=100_000)

    def criteria(self, *, page_size: int | None = catalog.PAGE_SIZE) -> catalog.Criteria:
        return catalog.Criteria(
            self.lifecycle or None,
            self.owner or None,
            self.environment or None,
            self.provider or None,
            self.q or None,
            sort=self.sort,
            descending=self.desc,
            page=self.page,
            page_size=page_size,
        )

    def filters(self) -> dict[str, str]:
        """The filters set, for the links of other pages and sort orders."""
        fields = ("lifecycle", "owner", "environment", "provider", "q")
        return {k: v for k in fields if (v := getattr(self, k))}


class CredentialPageQuery(CredentialQuery):
    """`GET /v1/credentials`: a listing, or one page of it by cursor."""

    limit: int | None = Field(default=None, ge=1, le=catalog.MAX_PAGE_SIZE)
    """A page of at most this many rows by name, after `cursor`."""
    cursor: str | None = Field(default=None, max_length=1024)
    """Where the page starts: the `cursor` of the previous page's `Link: rel="next"`."""
