"""Rotations: start one, dry-run it, list the unfinished ones, read one with its step
timeline, resume it, roll it back. Acting on a rotation of an Entra ID credential also
needs `entra:rotate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from keyshift.api import actions, problems
from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import (
    BackgroundDep,
    PathName,
    RotationId,
    actor_of,
    duration,
    require_entra_rotate_for,
    v1_router,
)
from keyshift.domain.clock import utcnow
from keyshift.domain.rbac import Permission
from keyshift.domain.states import Trigger
from keyshift.errors import RotationInProgress
from keyshift.service import rotations
from keyshift.service.identities import Identity

router = v1_router()


@router.get("/credentials/{name}/rotations", tags=["rotations"])
def list_rotations_of(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)], name: PathName
) -> list[rotations.RotationSummary]:
    """Every rotation of the credential, oldest first."""
    return rotations.history_rows(store, name)


class RotationStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: str | None = Field(default=None, max_length=32, examples=["0s", "1h"])
    """Override the policy's grace period, e.g. `0s` to revoke the old version at once."""
    reason: str = Field(default="api", min_length=1, max_length=200)
    break_glass: bool = False
    """Rotate now, outside the policy's window and through any freeze of the credential
    (a leaked secret); `reason` is required with it. On `prod` the caller also needs
    `rotations:break_glass`, and a policy's approvals become one approval from a second
    person."""

    @model_validator(mode="after")
    def _reason_with_break_glass(self) -> RotationStart:
        if self.break_glass and "reason" not in self.model_fields_set:
            raise ValueError("reason is required with break_glass: say why")
        return self


@dataclass(frozen=True)
class RotationStarted:
    rotation_id: str
    credential: str
    state: str
    location: str


@router.post(
    "/credentials/{name}/rotations",
    status_code=202,
    tags=["rotations"],
    responses=problems.responses(
        "not-found", "forbidden", "rotation-in-progress", "policy-refused"
    ),
)
async def start_rotation(
    background: BackgroundDep,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ROTATIONS_RUN)],
    name: PathName,
    body: RotationStart | None = None,
) -> RotationStarted:
    """Request a rotation and run it in the background; poll `location` for its steps.
    An Entra ID credential also needs `entra:rotate`; a break-glass one of a `prod`
    credential `rotations:break_glass` (403, audited). Refused by governance (allowlist,
    owner, environment, window, overlap, lifetime, freeze): 409 `policy-refused` with
    `reasons`, audited, nothing else changed."""
    body = body or RotationStart()
    grace = duration("grace", body.grace) if body.grace is not None else None
    rotation_id = await actions.request_rotation(
        store,
        who,
        name,
        grace=grace,
        reason=body.reason,
        trigger=Trigger.BREAK_GLASS if body.break_glass else Trigger.API,
    )
    location = background.start(rotation_id, actor=actor_of(who))
    return RotationStarted(rotation_id, name, "requested", location)


class StepReadiness(BaseModel):
    step: str
    readiness: str
    reason: str


class DryRun(BaseModel):
    credential: str
    plan_hash: str
    ready: bool
    steps: list[StepReadiness]


@router.post("/credentials/{name}/dry-run", tags=["rotations"])
async def dry_run(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ROTATIONS_RUN)], name: PathName
) -> DryRun:
    """Preflight every step of a rotation of the credential; changes nothing but the audit."""
    plan_hash, results = await rotations.dry_run(store, name, actor=actor_of(who))
    steps = [
        StepReadiness(step=step, readiness=r.readiness.value, reason=r.reason)
        for step, r in results
    ]
    return DryRun(
        credential=name,
        plan_hash=plan_hash,
        ready=all(s.readiness == "ready" for s in steps),
        steps=steps,
    )


@dataclass(frozen=True)
class UnfinishedRotation:
    rotation_id: str
    credential: str
    state: str
    grace_until: datetime | None
    running_here: bool
    """Whether this server process is running it right now."""


@router.get("/rotations", tags=["rotations"])
def unfinished_rotations(
    background: BackgroundDep,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
) -> list[UnfinishedRotation]:
    """Every rotation not in a final state (running, in grace, waiting for a human)."""
    running = set(background.rotations.running)
    return [
        UnfinishedRotation(rid, cred, state, grace, rid in running)
        for rid, cred, state, grace in rotations.unfinished(store)
    ]


@dataclass(frozen=True)
class StepOut:
    seq: int
    name: str
    attempt: int
    status: str
    started_at: datetime
    ended_at: datetime | None
    duration_ms: float | None
    error: str | None
    note: str | None = None
    """What the step waited for at the issuer ("proved after 7 attempt(s), 41s")."""
    title: str = ""
    """The step in words: "Write Key Vault kv-billing-prod.vault.azure.net / api-secret"."""


@dataclass(frozen=True)
class TicketOut:
    channel: str
    reference: str
    """What the channel named the ticket: a Jira issue key, a ServiceNow record's sys_id."""


@dataclass(frozen=True)
class RotationOut:
    id: str
    credential: str
    state: str
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    new_version_id: str | None
    plan_hash: str
    grace_until: datetime | None
    attention: str | None
    error: str | None
    steps: list[StepOut]
    running: bool
    """Whether a worker or server is advancing it now (holds its lease, or this server
    has queued it): a waiting state is final for a follower only when this is false."""
    tickets: list[TicketOut] = field(default_factory=list)
    """The tickets channels opened for it (a Jira issue, a ServiceNow incident)."""
    reason: str = ""
    """Why it was asked for, in the requester's words."""
    trigger: str = ""
    """How it was asked for: schedule, cli, api, web, event or break-glass."""
    deliveries: list[str] = field(default_factory=list)
    """The step names of its publishing actions, one per consumer written to."""
    rollout: str = ""
    """How far the new version reached the consumers: "5 of 6 delivered, 1 needs attention"."""
    signers_from: datetime | None = None
    """A trust-first rotation (a JWKS signing key) resting in publishing after its
    verifiers got the new key: when its signers get it (a worker goes on then); a
    follower treats it as resting. Null otherwise."""
    split: dict[str, Any] | None = None
    """Under `rollback: failing_only`, who the rollback left on which version: `on_new`
    (passed their checks, keep the new version), `rolled_back` (the failing consumer, back
    on the old one), `not_restored`, `never_switched` (propagation stopped), `failed_step`,
    `old_version_id`, `new_version_id` and `resolve` (the command that puts every consumer
    back on the old version); null when the consumers were not split."""


@router.get("/rotations/{rotation_id}", tags=["rotations"])
def get_rotation(
    background: BackgroundDep,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    rotation_id: RotationId,
) -> RotationOut:
    """One rotation (by id or a unique prefix) with its step timeline."""
    return rotation_out(background.rotations.timeline(rotation_id))


def rotation_out(t: rotations.Timeline) -> RotationOut:
    return RotationOut(
        running=t.running,
        id=t.rotation.id,
        credential=t.credential,
        state=t.rotation.state,
        requested_by=t.rotation.requested_by,
        requested_at=t.rotation.requested_at,
        finished_at=t.rotation.finished_at,
        new_version_id=t.rotation.new_version_id,
        plan_hash=t.plan_hash,
        grace_until=t.grace_until,
        attention=t.attention,
        error=t.rotation.error,
        steps=[
            StepOut(
                s.seq,
                s.name,
                s.attempt,
                s.status,
                s.started_at,
                s.ended_at,
                s.duration.total_seconds() * 1000 if s.duration is not None else None,
                s.error,
                s.note,
                s.title,
            )
            for s in t.steps
        ],
        tickets=[TicketOut(k.channel, k.reference) for k in t.tickets],
        reason=t.rotation.reason,
        trigger=t.rotation.trigger,
        deliveries=list(t.deliveries),
        signers_from=t.signers_from,
        rollout=str(t.rollout),
        split=t.split,
    )


@router.post(
    "/rotations/{rotation_id}/resume",
    status_code=202,
    tags=["rotations"],
    responses=problems.responses("not-found", "conflict", "lease-held", "rotation-in-progress"),
)
async def resume_rotation(
    background: BackgroundDep,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ROTATIONS_RUN)],
    rotation_id: RotationId,
) -> RotationStarted:
    """Continue an unfinished rotation from its journal, in the background (409
    `lease-held` while another live worker runs it)."""
    # The permission first: a caller who may not act on it learns nothing of its lease.
    ref = await run_in_threadpool(rotations.rotation_ref, store, rotation_id)
    require_entra_rotate_for(who, ref.provider_type)
    full_id, credential = await run_in_threadpool(
        lambda: rotations.resumable(store, rotation_id, now=utcnow())
    )
    if full_id in background.rotations.running:
        raise RotationInProgress(f"rotation {full_id} is running in this server already")
    location = background.start(full_id, actor=actor_of(who))
    return RotationStarted(full_id, credential, "resuming", location)


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, examples=["the new key is refused"])
    """Why the new version is rolled back, for the record (audited with the caller)."""


@router.post(
    "/rotations/{rotation_id}/rollback",
    tags=["rotations"],
    responses=problems.responses(
        "invalid-request", "not-found", "rollback-refused", "lease-held", "upstream-failed"
    ),
)
async def roll_back_rotation(
    background: BackgroundDep,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ROTATIONS_RUN)],
    rotation_id: RotationId,
    body: RollbackIn,
) -> RotationOut:
    """Roll back a rotation whose new version is bad, while the old one is still valid
    (in `grace`, `awaiting_revoke_approval`, or ended `needs_attention` without revoking
    it): the previous version goes back to the consumers that were switched, newest
    first, their reloads run again, and the new version is kept disabled for analysis.
    Answers when done, with the rotation (`rolled_back`, or `failed` naming what could
    not be restored). An Entra ID credential also needs `entra:rotate`. Refused with
    nothing changed: 409 `rollback-refused` (completed: its old version is revoked, so a
    new rotation is the way forward; already rolled back; failed; any other state) or
    `lease-held` while a worker runs it."""
    full_id = await actions.roll_back(
        store, background.rotations, who, rotation_id, reason=body.reason
    )
    return rotation_out(await run_in_threadpool(rotations.rotation_timeline, store, full_id))
