"""The `/v1` routes: the CLI's use cases over HTTP. Each route requires one permission.

Responses carry ids, fingerprints, states and times, never a secret value; the only
value the API ever returns is a new API token, once, to the admin who created it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from keyshift.api import problems
from keyshift.api.auth import StoreDep, caller
from keyshift.api.runner import BackgroundRotations
from keyshift.domain.clock import utcnow
from keyshift.domain.durations import parse_duration
from keyshift.domain.estate import DEFAULT_POLICY_NAME
from keyshift.domain.rbac import ROLE_DESCRIPTIONS, ROLE_PERMISSIONS, Permission, Role
from keyshift.errors import AuditChainBroken, ConfigError, RotationInProgress
from keyshift.service import approvals as approvals_service
from keyshift.service import entra as entra_service
from keyshift.service import estate as estate_service
from keyshift.service import evidence as evidence_service
from keyshift.service import foreign as foreign_service
from keyshift.service import identities, rotations, scheduler
from keyshift.service import impact as impact_service
from keyshift.service import integrations as integrations_service
from keyshift.service.identities import Identity
from keyshift.store import audit

router = APIRouter(prefix="/v1", responses=problems.responses("unauthenticated", "forbidden"))

Name = Annotated[str, Field(min_length=1, max_length=128)]
PathName = Annotated[str, Path(min_length=1, max_length=128)]
RotationId = Annotated[str, Path(min_length=1, max_length=36)]


def _duration(field: str, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(field, str(exc)) from None


def _actor(who: Identity) -> str:
    """The principal's name is the actor in the audit trail, as KEYSHIFT_ACTOR is on the CLI."""
    return who.principal


def _background(request: Request) -> BackgroundRotations:
    runner: BackgroundRotations = request.app.state.rotations
    return runner


# Estate --------------------------------------------------------------------------------

ESTATE_BODY = Body(
    description="The estate document, as in the YAML file (see docs/estate-reference.md).",
    examples=[{"credentials": []}],
)


class ChangeOut(BaseModel):
    op: str
    """`+` added, `~` changed, `-` removed."""
    kind: str
    name: str
    detail: str


class EstateChanges(BaseModel):
    applied: bool
    changes: list[ChangeOut]
    warnings: list[str] = []
    """What was accepted but not as written (legacy fields renamed, manual-review actions),
    each `path: message`, as `keyshift plan` and `apply` print them."""


def _changes(
    changes: list[estate_service.Change],
    *,
    applied: bool,
    warnings: list[estate_service.EstateWarning],
) -> EstateChanges:
    return EstateChanges(
        applied=applied,
        changes=[ChangeOut(op=c.op, kind=c.kind, name=c.name, detail=c.detail) for c in changes],
        warnings=[str(w) for w in warnings],
    )


@router.post("/estate/plan", tags=["estate"])
def plan_estate(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    document: Annotated[dict[str, Any], ESTATE_BODY],
) -> EstateChanges:
    """What applying this estate document would change. Changes nothing."""
    warnings: list[estate_service.EstateWarning] = []
    estate = estate_service.parse_estate(document, warnings)
    return _changes(estate_service.plan_estate(store, estate), applied=False, warnings=warnings)


@router.post("/estate/apply", tags=["estate"])
def apply_estate(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_WRITE)],
    document: Annotated[dict[str, Any], ESTATE_BODY],
) -> EstateChanges:
    """Validate the estate document and store it; a refused document changes nothing
    (422 `estate-invalid` listing every field problem)."""
    warnings: list[estate_service.EstateWarning] = []
    estate = estate_service.parse_estate(document, warnings)
    applied = estate_service.apply_estate(store, estate, actor=_actor(who))
    return _changes(applied, applied=True, warnings=warnings)


# Credentials and rotations ------------------------------------------------------------


@router.get("/credentials", tags=["credentials"])
def list_credentials(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)]
) -> list[rotations.StatusRow]:
    """One row per credential: lifecycle, current version id and fingerprint, expiry."""
    return rotations.status_rows(store, now=utcnow())


@router.get("/credentials/{name}", tags=["credentials"])
def get_credential(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)], name: PathName
) -> rotations.CredentialDetail:
    """One credential with every version (by id and fingerprint)."""
    return rotations.credential_detail(store, name, now=utcnow())


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


@dataclass(frozen=True)
class RotationStarted:
    rotation_id: str
    credential: str
    state: str
    location: str


def _require_entra_rotate_for(who: Identity, provider_type: str) -> None:
    """Acting on a rotation of an Entra ID credential also needs `entra:rotate`."""
    if provider_type.startswith("entra"):
        who.require(Permission.ENTRA_ROTATE)


def _require_entra_rotate(store: Any, who: Identity, credential: str) -> None:
    _require_entra_rotate_for(who, rotations.provider_type(store, credential))


@router.post(
    "/credentials/{name}/rotations",
    status_code=202,
    tags=["rotations"],
    responses=problems.responses("not-found", "rotation-in-progress", "policy-refused"),
)
async def start_rotation(  # noqa: PLR0917 (FastAPI passes parameters by name)
    request: Request,
    response: Response,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ROTATIONS_RUN)],
    name: PathName,
    body: RotationStart | None = None,
) -> RotationStarted:
    """Request a rotation and run it in the background; poll `location` for its steps.
    An Entra ID credential also needs `entra:rotate`. Refused by governance (allowlist,
    owner, environment, window, overlap, lifetime): 409 `policy-refused` with `reasons`,
    audited, nothing else changed."""
    body = body or RotationStart()
    grace = _duration("grace", body.grace) if body.grace is not None else None
    await run_in_threadpool(_require_entra_rotate, store, who, name)
    rotation_id = await run_in_threadpool(
        lambda: rotations.request(store, name, actor=_actor(who), grace=grace, reason=body.reason)
    )
    _background(request).start(rotation_id, actor=_actor(who))
    location = f"/v1/rotations/{rotation_id}"
    response.headers["Location"] = location
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
    plan_hash, results = await rotations.dry_run(store, name, actor=_actor(who))
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
    request: Request,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
) -> list[UnfinishedRotation]:
    """Every rotation not in a final state (running, in grace, waiting for a human)."""
    running = set(_background(request).running)
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


@router.get("/rotations/{rotation_id}", tags=["rotations"])
def get_rotation(
    request: Request,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    rotation_id: RotationId,
) -> RotationOut:
    """One rotation (by id or a unique prefix) with its step timeline."""
    # Queued here is read before the store: a run that ends between the two reads then
    # shows its end state, never a stale one.
    queued = set(_background(request).running)
    timeline = rotations.rotation_timeline(store, rotation_id)
    return _rotation_out(timeline, queued=timeline.rotation.id in queued)


def _rotation_out(t: rotations.Timeline, *, queued: bool = False) -> RotationOut:
    return RotationOut(
        running=t.running or queued,
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
            )
            for s in t.steps
        ],
    )


@router.post(
    "/rotations/{rotation_id}/resume",
    status_code=202,
    tags=["rotations"],
    responses=problems.responses("not-found", "conflict", "lease-held", "rotation-in-progress"),
)
async def resume_rotation(
    request: Request,
    response: Response,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ROTATIONS_RUN)],
    rotation_id: RotationId,
) -> RotationStarted:
    """Continue an unfinished rotation from its journal, in the background (409
    `lease-held` while another live worker runs it)."""
    full_id, credential = await run_in_threadpool(
        lambda: rotations.resumable(store, rotation_id, now=utcnow())
    )
    await run_in_threadpool(_require_entra_rotate, store, who, credential)
    if full_id in _background(request).running:
        raise RotationInProgress(f"rotation {full_id} is running in this server already")
    _background(request).start(full_id, actor=_actor(who))
    location = f"/v1/rotations/{full_id}"
    response.headers["Location"] = location
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
    request: Request,
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
    ref = await run_in_threadpool(rotations.rotation_ref, store, rotation_id)
    _require_entra_rotate_for(who, ref.provider_type)
    context = _background(request).context

    def in_thread() -> None:
        asyncio.run(
            rotations.roll_back(
                store, ref.id, actor=_actor(who), reason=body.reason, context=context
            )
        )

    await asyncio.to_thread(in_thread)
    return _rotation_out(await run_in_threadpool(rotations.rotation_timeline, store, ref.id))


# Approvals, blast radius, evidence ----------------------------------------------------

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


async def _decide(  # noqa: PLR0917 (the two decision routes pass everything through)
    request: Request,
    response: Response,
    store: Any,
    who: Identity,
    request_id: str,
    body: DecisionIn | None,
    *,
    approve: bool,
) -> DecisionOut:
    comment = body.comment if body is not None else ""
    runner = _background(request)
    now = runner.context.now() if runner.context is not None else utcnow()
    # The decision is stored (or refused, 409 `approval-refused`) before the response;
    # the rotation then moves on in the background when the policy's rule is met.

    def record() -> tuple[str, str]:
        if approve:
            pending = approvals_service.show(store, request_id)
            _require_entra_rotate_for(
                who, rotations.rotation_ref(store, pending.rotation_id).provider_type
            )
        rotation_id = approvals_service.record(
            store, request_id, approver=_actor(who), approve=approve, comment=comment, now=now
        )
        return approvals_service.show(store, request_id).id, rotation_id

    full_id, rotation_id = await run_in_threadpool(record)
    runner.start(rotation_id, actor=_actor(who))
    location = f"/v1/rotations/{rotation_id}"
    response.headers["Location"] = location
    return DecisionOut(full_id, rotation_id, "approved" if approve else "rejected", location)


@router.post(
    "/approvals/{request_id}/approve",
    status_code=202,
    tags=["approvals"],
    responses=problems.responses("not-found", "approval-refused"),
)
async def approve(  # noqa: PLR0917 (FastAPI passes parameters by name)
    request: Request,
    response: Response,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.APPROVALS_DECIDE)],
    request_id: RequestId,
    body: DecisionIn | None = None,
) -> DecisionOut:
    """Approve as the calling principal; the rotation (or revocation) runs on in the
    background once enough approvers agreed. The requester can never approve their own
    rotation, nor anyone outside the policy's approvers (409 `approval-refused`).
    Approving a rotation of an Entra ID credential authorises changing the app, so it
    also needs `entra:rotate`."""
    return await _decide(request, response, store, who, request_id, body, approve=True)


@router.post("/approvals/{request_id}/reject", status_code=202, tags=["approvals"])
async def reject(  # noqa: PLR0917 (FastAPI passes parameters by name)
    request: Request,
    response: Response,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.APPROVALS_DECIDE)],
    request_id: RequestId,
    body: DecisionIn | None = None,
) -> DecisionOut:
    """Reject as the calling principal: a rotation fails with nothing changed; a
    revocation is not done (the old version stays valid, the rotation needs attention)."""
    return await _decide(request, response, store, who, request_id, body, approve=False)


@router.get("/credentials/{name}/impact", tags=["credentials"])
def credential_impact(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)], name: PathName
) -> list[impact_service.ImpactRow]:
    """The blast radius of rotating the credential: the issuer and every action in run
    order, with where each acts (host, agent, vault, namespace, path)."""
    return impact_service.impact(store, name)


@router.get("/rotations/{rotation_id}/evidence", tags=["audit"])
def rotation_evidence(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.AUDIT_READ)],
    rotation_id: RotationId,
) -> dict[str, Any]:
    """The rotation's evidence bundle (`keyshift-evidence/1`): request, approvals, plan and
    hash, executor version, steps, versions by id and fingerprint, residual use, blast
    radius and the audit entries that attest them. The same document as `keyshift evidence`."""
    return evidence_service.export(store, rotation_id, actor=_actor(who), now=utcnow())


class EvidenceVerification(BaseModel):
    ok: bool
    entries: int
    """Audit entries of the rotation that were checked."""
    chain_entries: int
    """Entries of the store's whole chain that verified (0 when the check stopped before)."""
    problem: str | None
    """The first mismatch, when the bundle does not verify."""


@router.post("/evidence/verify", tags=["audit"])
def verify_evidence(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.AUDIT_READ)],
    bundle: Annotated[
        dict[str, Any],
        Body(description="An evidence bundle, as exported.", examples=[{"format": "x"}]),
    ],
) -> EvidenceVerification:
    """Check a bundle against itself and the store's audit chain; name the first mismatch.
    A bundle that does not verify is still a 200 answer with `ok: false`."""
    result = evidence_service.verify(store, bundle)
    return EvidenceVerification(
        ok=result.ok,
        entries=result.entries,
        chain_entries=result.chain_entries,
        problem=result.problem,
    )


# Audit ----------------------------------------------------------------------------------


class AuditVerification(BaseModel):
    ok: bool
    entries: int | None
    """How many entries verified (when the chain is intact)."""
    broken_at: int | None
    """The first entry that breaks the chain."""
    reason: str | None


@router.get("/audit/verify", tags=["audit"])
def audit_verify(
    store: StoreDep, who: Annotated[Identity, caller(Permission.AUDIT_READ)]
) -> AuditVerification:
    """Recompute the hash chain; name the first edited, deleted or reordered entry."""
    try:
        with store.transaction() as s:
            count = audit.verify(s)
    except AuditChainBroken as exc:
        return AuditVerification(ok=False, entries=None, broken_at=exc.seq, reason=exc.reason)
    return AuditVerification(ok=True, entries=count, broken_at=None, reason=None)


@router.get(
    "/audit/export",
    tags=["audit"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def audit_export(
    store: StoreDep, who: Annotated[Identity, caller(Permission.AUDIT_READ)]
) -> StreamingResponse:
    """Every audit entry as JSON Lines (for a SIEM), streamed a page at a time."""

    def lines() -> Iterator[str]:
        for entry in store.audit_entries():
            yield json.dumps(entry, sort_keys=True) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# Integrations, Entra ID, alerts ---------------------------------------------------------


@router.post("/integrations/{name}/test", tags=["integrations"])
async def test_integration(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_WRITE)], name: PathName
) -> list[integrations_service.Check]:
    """Sign in with the integration, read the granted permissions and read from the API.
    Changes nothing; the outcome is audited."""
    return await integrations_service.check_integration(store, name, actor=_actor(who))


class EntraSync(BaseModel):
    model_config = ConfigDict(extra="forbid")

    integrations: list[Name] | None = None
    """Sync only these integrations (default: every `entra` integration)."""


@router.post("/entra/sync", tags=["entra"])
async def entra_sync(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ENTRA_WRITE)],
    body: EntraSync | None = None,
) -> list[entra_service.SyncResult]:
    """Import every app registration with its owners, client secrets and certificates."""
    only = body.integrations if body and body.integrations else None
    return await entra_service.sync(store, actor=_actor(who), only=only)


@router.get("/entra/credentials", tags=["entra"])
def entra_credentials(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ENTRA_READ)],
    state: Annotated[str | None, Query(max_length=32)] = None,
    app: Annotated[str | None, Query(max_length=256)] = None,
    removed: bool = False,
) -> list[entra_service.EntraCredential]:
    """Every discovered client secret and certificate with its lifecycle state."""
    alerts = estate_service.current_estate(store).alerts
    found = entra_service.inventory(store, now=utcnow(), alerts=alerts, include_removed=removed)
    if state is not None:
        found = [c for c in found if c.state.value.lower() == state.lower()]
    if app is not None:
        found = [c for c in found if app in (c.app_name, c.app_id)]
    return found


@router.get("/entra/summary", tags=["entra"])
def entra_summary(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ENTRA_READ)],
    top: Annotated[int, Query(ge=0, le=1000)] = 10,
) -> entra_service.Summary:
    """Totals, counts expiring within 7/30/90 days, and the most urgent credentials."""
    alerts = estate_service.current_estate(store).alerts
    return entra_service.summary(store, now=utcnow(), alerts=alerts, top=top)


@router.get("/entra/report", tags=["entra"])
def entra_report(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ENTRA_READ)]
) -> list[entra_service.Finding]:
    """Secrets created outside keyshift on managed apps, and lifetimes over the maximum."""
    estate = estate_service.current_estate(store)
    default = estate.named_policy(DEFAULT_POLICY_NAME)
    return entra_service.findings(store, now=utcnow(), default_policy=default)


@router.get("/foreign", tags=["credentials"])
async def foreign_versions(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)]
) -> foreign_service.ForeignReport:
    """Versions at the issuers of managed credentials that keyshift did not issue, asked
    live of each issuer. Changes nothing."""
    return await foreign_service.foreign_report(store, actor=_actor(who))


@router.get("/alerts", tags=["alerts"])
def list_alerts(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[scheduler.Alert]:
    """The newest alerts the worker raised."""
    return scheduler.alerts(store, limit=limit)


# Users, service accounts, tokens, roles ---------------------------------------------


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
        actor=_actor(who),
    )


@router.post("/users/{name}/disable", tags=["admin"])
def disable_user(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ADMIN)], name: PathName
) -> identities.Principal:
    """Disable a user or service account; its tokens stop working at once."""
    return identities.disable_principal(store, name, actor=_actor(who))


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
    lifetime = None if body.expires_in == "never" else _duration("expires_in", body.expires_in)
    issued = identities.create_token(
        store, body.principal, name=body.name, lifetime=lifetime, actor=_actor(who)
    )
    return TokenCreated(token=issued.token.reveal(), info=issued.info)


@router.post("/tokens/{token_id}/revoke", tags=["admin"])
def revoke_token(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ADMIN)],
    token_id: Annotated[str, Path(min_length=1, max_length=40)],
) -> identities.TokenInfo:
    """Revoke a token by id (or prefix `ks_<id>`); it stops working at once."""
    return identities.revoke_token(store, token_id, actor=_actor(who))


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
