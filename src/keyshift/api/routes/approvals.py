"""Supervised mode: the approval requests, and approving or rejecting one as the calling
principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from keyshift.api import actions, problems
from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import (
    Background,
    BackgroundDep,
    actor_of,
    v1_router,
)
from keyshift.domain.clock import utcnow
from keyshift.domain.rbac import Permission
from keyshift.service import approvals as approvals_service
from keyshift.service.identities import Identity
from keyshift.store.store import Store

router = v1_router()


RequestId = Annotated[str, Path(min_length=1, max_length=36)]


@router.get("/approvals", tags=["approvals"])
def list_approvals(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    all_: Annotated[bool, Query(alias="all")] = False,
) -> list[approvals_service.ApprovalView]:
    """Approval requests waiting for a decision, oldest first (`all=true`: decided ones too)."""
    return approvals_service.requests(store, pending_only=not all_)


@router.get("/approvals/{request_id}", tags=["approvals"])
def get_approval(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    request_id: RequestId,
) -> approvals_service.ApprovalView:
    """One approval request (by id or a unique prefix of 6+ characters): what the approver
    decides on, in `summary` (credential, expiry, every step, the rollback plan)."""
    return approvals_service.show(store, request_id)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=1000)
    """Why, for the record (audited with the decision)."""


@dataclass(frozen=True)
class DecisionOut:
    request_id: str
    rotation_id: str
    decision: Literal["approved", "rejected"]
    location: str
    """The rotation, which runs on in the background; poll it for its state."""


@dataclass(frozen=True)
class Decision:
    """What the approve and reject routes decide on: the approval request in the path and
    the comment in the body; the rotation then runs on in this server's background."""

    background: Background
    store: Store
    request_id: str
    comment: str

    async def take(self, who: Identity, *, approve: bool) -> DecisionOut:
        """Store the caller's decision (or refuse it, 409 `approval-refused`) before the
        response; the rotation then moves on in the background when the policy's rule is
        met."""
        context = self.background.rotations.context
        now = context.now() if context is not None else utcnow()
        full_id, rotation_id = await actions.record_decision(
            self.store, who, self.request_id, approve=approve, comment=self.comment, now=now
        )
        location = self.background.start(rotation_id, actor=actor_of(who))
        return DecisionOut(full_id, rotation_id, "approved" if approve else "rejected", location)


async def _decision(
    background: BackgroundDep,
    store: StoreDep,
    request_id: RequestId,
    body: DecisionIn | None = None,
) -> Decision:
    return Decision(background, store, request_id, body.comment if body is not None else "")


DecisionDep = Annotated[Decision, Depends(_decision)]


@router.post(
    "/approvals/{request_id}/approve",
    status_code=202,
    tags=["approvals"],
    responses=problems.responses("not-found", "approval-refused"),
)
async def approve(
    who: Annotated[Identity, caller(Permission.APPROVALS_DECIDE)], decision: DecisionDep
) -> DecisionOut:
    """Approve as the calling principal; the rotation (or revocation) runs on in the
    background once enough approvers agreed. The requester can never approve their own
    rotation, nor anyone outside the policy's approvers (409 `approval-refused`).
    Approving a rotation of an Entra ID credential authorises changing the app, so it
    also needs `entra:rotate`."""
    return await decision.take(who, approve=True)


@router.post("/approvals/{request_id}/reject", status_code=202, tags=["approvals"])
async def reject(
    who: Annotated[Identity, caller(Permission.APPROVALS_DECIDE)], decision: DecisionDep
) -> DecisionOut:
    """Reject as the calling principal: a rotation fails with nothing changed; a
    revocation is not done (the old version stays valid, the rotation needs attention)."""
    return await decision.take(who, approve=False)
