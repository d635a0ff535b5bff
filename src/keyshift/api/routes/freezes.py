"""Freezes: list the ones holding, start one, lift one (`rotations:freeze`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from keyshift.api import problems
from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import actor_of, v1_router
from keyshift.domain.freeze import Freeze, FreezeScope, FreezeSource
from keyshift.domain.rbac import Permission
from keyshift.service import freezes
from keyshift.service.identities import Identity

router = v1_router()

FreezeId = Annotated[str, Path(min_length=1, max_length=16)]


class FreezeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: FreezeScope
    value: str | None = Field(default=None, min_length=1, max_length=200)
    """The credential, owner or environment; none for `all`."""
    reason: str = Field(min_length=1, max_length=500)
    until: AwareDatetime | None = None
    """When the freeze lifts by itself (timezone-aware); none: until lifted."""


@router.get("/freezes", tags=["freezes"])
def list_freezes(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)]
) -> list[Freeze]:
    """The freezes holding now, oldest first."""
    return freezes.holding(store)


@router.post(
    "/freezes", status_code=201, tags=["freezes"], responses=problems.responses("invalid-request")
)
def start_freeze(
    store: StoreDep, who: Annotated[Identity, caller(Permission.FREEZE)], body: FreezeIn
) -> Freeze:
    """Freeze rotations: none of the credentials covered starts one until it is lifted
    (or `until` passes). Audited `freeze.started`."""
    return freezes.freeze(
        store,
        scope=body.scope,
        value=body.value,
        reason=body.reason,
        until=body.until,
        actor=actor_of(who),
        source=FreezeSource.API,
    )


@router.post(
    "/freezes/{freeze_id}/lift",
    tags=["freezes"],
    responses=problems.responses("not-found", "conflict"),
)
def lift_freeze(
    store: StoreDep, who: Annotated[Identity, caller(Permission.FREEZE)], freeze_id: FreezeId
) -> Freeze:
    """Lift a freeze now. Audited `freeze.lifted`. One declared in the estate file is
    lifted by removing it there and applying the file (409 here)."""
    return freezes.unfreeze(store, freeze_id, actor=actor_of(who))
