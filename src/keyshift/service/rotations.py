"""Use cases on rotations: start, preflight, resume, roll back, schedule, and the views an
operator reads.

The views (`status_rows`, `history_rows`, `rotation_timeline`) return plain
dataclasses with ids, fingerprints and times, never values; the CLI and API
render them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic_core import from_json
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, aliased

from keyshift.domain.clock import utcnow
from keyshift.domain.states import (
    FINAL_STATES,
    Lifecycle,
    Phase,
    RotationState,
    StepStatus,
    Trigger,
    VersionStatus,
)
from keyshift.engine import freezes
from keyshift.errors import (
    ConfigError,
    Conflict,
    KeyshiftError,
    LeaseHeld,
    NotFound,
    RotationInProgress,
)
from keyshift.service import due, lookups

# A timeline's `tickets` are read back by the client as this type: imported with the module.
from keyshift.service.notifications import Ticket, tickets
from keyshift.store.models import CredentialRow, RotationRow, StepRow, VersionRow

# What `status` (the views) do not use is imported where it is used: the engine, the
# plugins and what they load stay out of a `keyshift status` (tests/test_startup.py).
if TYPE_CHECKING:
    from keyshift.context import PluginContext
    from keyshift.domain.preflight import PreflightResult
    from keyshift.domain.triggers import EventRef
    from keyshift.engine.journal import StepEvent
    from keyshift.engine.requests import Guard
    from keyshift.service import fleet
    from keyshift.store.store import Store

log = structlog.get_logger("keyshift.service")

EXPIRY_WARNINGS = (timedelta(days=30), timedelta(days=7))
"""The lifecycle shows Expiring Soon inside the first threshold; the second is the urgent one."""

_FINAL = {s.value for s in FINAL_STATES}
# As plain strings: `lifecycle` runs once per credential of a status page.
_GRACE = RotationState.GRACE.value
_NEEDED_ATTENTION = frozenset({RotationState.FAILED.value, RotationState.NEEDS_ATTENTION.value})


@dataclass(frozen=True, slots=True)
class StatusRow:
    credential: str
    lifecycle: Lifecycle
    version_id: str | None
    fingerprint: str | None
    expires_at: datetime | None
    days_left: int | None
    last_rotation: str | None
    owner: str | None
    overlap: str
    """`dual` when old and new versions are valid together; `in place` when the new one
    replaces the old at once (a cutover window until every consumer reloads)."""
    last_rotated_at: datetime | None
    """When the latest rotation that completed finished."""
    last_rotation_id: str | None
    """The latest rotation, whatever its state (`last_rotation`)."""
    next_rotation_at: datetime | None
    """When the worker starts the next rotation by itself; None when it will not
    (`keyshift.service.due.next_rotation`)."""
    next_rotation: str
    """`next_rotation_at` for a table: its date, `due`, `manual`, `disabled`
    (`enabled: false`), `frozen`, `rotating` or `-` (the current version never expires)."""
    environment: str | None
    provider: str
    """The provider type."""
    frozen: str | None = None
    """Why no rotation of it may start now, when freezes cover it: each freeze's scope,
    who started it, until when, its reason and id; None when none does."""


@dataclass(frozen=True)
class RotationSummary:
    id: str
    state: str
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    new_version_id: str | None
    error: str | None
    reason: str = ""
    """Why it was asked for, in the requester's words (`rotate --reason`)."""
    trigger: str = ""
    """How it was asked for: schedule, cli, api, web, event or break-glass."""

    @property
    def duration(self) -> timedelta | None:
        """From the request to the end (None while unfinished)."""
        return self.finished_at - self.requested_at if self.finished_at else None


@dataclass(frozen=True)
class StepLine:
    seq: int
    name: str
    attempt: int
    status: str
    started_at: datetime
    ended_at: datetime | None
    error: str | None
    note: str | None = None
    """What the step waited for at the issuer, in words ("proved after 7 attempt(s), 41s")."""
    title: str = ""
    """The step in words: "Write Key Vault kv-billing-prod.vault.azure.net / api-secret"."""

    @property
    def duration(self) -> timedelta | None:
        return self.ended_at - self.started_at if self.ended_at else None


@dataclass(frozen=True)
class Timeline:
    rotation: RotationSummary
    credential: str
    plan_hash: str
    grace_until: datetime | None
    attention: str | None
    steps: list[StepLine]
    running: bool = False
    """Whether a worker or server holds the rotation's lease now (it is being advanced)."""
    tickets: list[Ticket] = field(default_factory=list)
    """The tickets channels opened for the rotation (a Jira issue, a ServiceNow incident)."""
    deliveries: tuple[str, ...] = ()
    """The step names of the plan's publishing actions: one per consumer written to."""
    signers_from: datetime | None = None
    """A trust-first rotation (a JWKS signing key) resting in `publishing` after its
    verifiers got the new key: when its signers get it (the `waiting:signers` step's
    time; a later run goes on then). None otherwise."""
    split: dict[str, Any] | None = None
    """Under `rollback: failing_only`, who a rollback left on which version: `on_new`,
    `rolled_back`, `not_restored`, `never_switched`, the failed step, both version ids
    and the command that resolves it; None when the consumers were not split."""

    @property
    def rollout(self) -> Rollout:
        """How far the new version reached the consumers, from the latest attempt of
        each publishing step and of its rollback."""
        latest = {step.name: step.status for step in self.steps}
        delivered = failed = undone = 0
        for name in self.deliveries:
            if latest.get(f"rollback:{name}") == StepStatus.SUCCEEDED:
                undone += 1
            elif latest.get(name) == StepStatus.SUCCEEDED:
                delivered += 1
            elif latest.get(name) == StepStatus.FAILED:
                failed += 1
        return Rollout(len(self.deliveries), delivered, failed, undone)

    @property
    def at_rest(self) -> bool:
        """Whether nothing moves the rotation on by itself now: a final state, or a
        waiting one (grace, an approval) that no worker or server is advancing."""
        return not self.running and RotationState(self.rotation.state) in RESTING_STATES


@dataclass(frozen=True)
class Rollout:
    """The consumers a rotation writes to, and how many have the new version."""

    consumers: int
    delivered: int
    failed: int
    rolled_back: int

    def __str__(self) -> str:
        parts = [f"{self.delivered} of {self.consumers} delivered"]
        if self.failed:
            parts.append(
                f"{self.failed} needs attention"
                if self.failed == 1
                else f"{self.failed} need attention"
            )
        if self.rolled_back:
            parts.append(f"{self.rolled_back} rolled back")
        return ", ".join(parts)


RESTING_STATES = FINAL_STATES | {
    RotationState.GRACE,
    RotationState.AWAITING_APPROVAL,
    RotationState.AWAITING_REVOKE_APPROVAL,
}
"""States a rotation stays in until time passes or a person decides."""


@dataclass(frozen=True)
class CertificateFacts:
    """The public facts of a certificate version, as its certificate states them; never
    its private key."""

    subject: str
    sans: list[str]
    """DNS names and IP addresses, as the certificate lists them."""
    not_after: datetime | None
    thumbprint: str
    """SHA-256 of the certificate's DER encoding, hex (`openssl x509 -fingerprint -sha256`
    prints it in upper case with colons)."""
    serial_number: str
    issuer: str

    @classmethod
    def of(cls, attributes: Mapping[str, Any] | None) -> CertificateFacts | None:
        """The facts a version's attributes record, or None for a version that is not
        a certificate."""
        if not attributes or "certificate" not in attributes:
            return None
        sans = str(attributes.get("sans") or "")
        not_after = attributes.get("not_after")
        return cls(
            subject=str(attributes.get("subject", "")),
            sans=[name.strip() for name in sans.split(",") if name.strip()],
            not_after=datetime.fromisoformat(not_after) if isinstance(not_after, str) else None,
            thumbprint=str(attributes.get("thumbprint", "")),
            serial_number=str(attributes.get("serial_number", "")),
            issuer=str(attributes.get("issuer", "")),
        )


@dataclass(frozen=True)
class VersionLine:
    """One version of a credential, by id and fingerprint."""

    id: str
    serial: int
    status: str
    fingerprint: str
    rotation_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    provenance: str = "issued"
    """`issued` by a rotation, `adopted` from the issuer (no value), or `imported`."""
    certificate: CertificateFacts | None = None
    """For a certificate version: subject, SANs, not_after, thumbprint (public parts)."""


@dataclass(frozen=True)
class CredentialDetail:
    status: StatusRow
    provider: str
    environment: str | None
    active_rotation_id: str | None
    versions: list[VersionLine]


def lifecycle(
    *,
    now: datetime,
    expires_at: datetime | None,
    has_current: bool,
    active_state: str | None,
    last_state: str | None,
    rotate_before: timedelta,
) -> Lifecycle:
    """The operator-facing lifecycle of one credential (design.md), from its current
    version's expiry (`has_current` false: it has none yet) and its rotations' states."""
    if active_state == _GRACE:
        return Lifecycle.GRACE_PERIOD
    if active_state is not None:
        return Lifecycle.ROTATING
    if last_state in _NEEDED_ATTENTION:
        return Lifecycle.NEEDS_ATTENTION
    if not has_current:
        return Lifecycle.NEVER_ROTATED
    if expires_at is not None:
        if expires_at <= now:
            return Lifecycle.EXPIRED
        if expires_at - now <= max(rotate_before, EXPIRY_WARNINGS[0]):
            return Lifecycle.EXPIRING_SOON
    return Lifecycle.ACTIVE


def held_counts(s: Session) -> dict[Lifecycle, int]:
    """How many credentials of the estate are in grace, rotating and needing attention:
    the first three rules of `lifecycle` (which decide from the rotations alone), in
    SQL, without reading the credentials one by one."""
    active = aliased(RotationRow)
    state = active.state
    grace, rotating, attention = s.execute(
        select(
            func.count().filter(state == _GRACE),
            func.count().filter(state.is_not(None), state != _GRACE),
            func.count().filter(
                state.is_(None), CredentialRow.last_rotation_state.in_(_NEEDED_ATTENTION)
            ),
        )
        .select_from(CredentialRow)
        .outerjoin(active, active.id == CredentialRow.active_rotation_id)
        .where(CredentialRow.removed_at.is_(None))
    ).one()
    return {
        Lifecycle.GRACE_PERIOD: grace,
        Lifecycle.ROTATING: rotating,
        Lifecycle.NEEDS_ATTENTION: attention,
    }


def lifecycle_of(cred: due.Standing, *, now: datetime) -> Lifecycle:
    """The lifecycle of a credential read by `due.standings` (`lifecycle`)."""
    current = cred.current
    return lifecycle(
        now=now,
        expires_at=current.expires_at if current else None,
        has_current=current is not None,
        active_state=cred.active_state,
        last_state=cred.last_rotation_state,
        rotate_before=cred.policy.rotate_before_expiry,
    )


def status_rows(
    store: Store, *, now: datetime, names: Collection[str] | None = None
) -> list[StatusRow]:
    """One row per credential in the estate, by name (only those in `names`, when given),
    from a fixed number of queries however many credentials there are."""
    criteria = () if names is None else (CredentialRow.name.in_(sorted(names)),)
    with store.transaction() as s:
        return [row for _cred, row in status_of(s, criteria, now=now)]


def status_of(
    s: Session,
    criteria: tuple[ColumnElement[bool], ...],
    *,
    now: datetime,
    limit: int | None = None,
) -> Iterator[tuple[due.Standing, StatusRow]]:
    """The status row of each credential matching `criteria` (the first `limit` by
    name, when given), with what it was made from, one by one (`due.standings`)."""
    overlap = _OVERLAPS
    holding = freezes.holding(s, now)
    for cred in due.standings(s, *criteria, limit=limit):
        current = cred.current
        expires = current.expires_at if current else None
        upcoming = due.next_rotation(cred, now=now, freezes=holding)
        covering = (
            freezes.refusals(holding, cred.name, cred.owner, cred.environment) if holding else ()
        )
        yield (
            cred,
            StatusRow(
                credential=cred.name,
                lifecycle=lifecycle_of(cred, now=now),
                version_id=current.id if current else None,
                fingerprint=current.fingerprint if current else None,
                expires_at=expires,
                days_left=(expires - now).days if expires else None,
                last_rotation=cred.last_rotation_state,
                owner=cred.owner,
                overlap=overlap(cred.provider_type, cred.provider_json),
                last_rotated_at=cred.last_rotated_at,
                last_rotation_id=cred.last_rotation_id,
                next_rotation_at=upcoming.at,
                next_rotation=upcoming.word,
                environment=cred.environment,
                provider=cred.provider_type,
                frozen="; ".join(covering) if covering else None,
            ),
        )


class _Overlaps:
    """The `overlap` of each provider as declared, from one provider built per provider
    type and `capability_key` (whether it replaces in place can depend on its config,
    e.g. a postgres `strategy`), not one per credential."""

    def __init__(self) -> None:
        self._by_text: dict[str, str] = {}
        self._by_key: dict[tuple[str, Hashable], str] = {}
        self._fields: dict[str, object] = {}
        self._classes: dict[str, type[object]] = {}

    def __call__(self, kind: str, declared_json: str) -> str:
        """The overlap of a provider of type `kind` declared as `declared_json`."""
        overlap = self._by_text.get(declared_json)
        if overlap is not None:
            return overlap
        if len(self._by_text) >= _OVERLAPS_KEPT:
            self._by_text.clear()  # an estate's declarations changed many times over
        from keyshift.providers.base import capability_key

        cls = self._classes.get(kind)
        if cls is None:
            from keyshift.engine.plugins import provider_class

            cls = self._classes[kind] = provider_class(kind)
            self._fields[kind] = getattr(cls, "capability_fields", None)
        if self._fields[kind] == () and (kind, ()) in self._by_key:
            return self._by_key[kind, ()]  # its capabilities read no config: none decoded
        declared = from_json(declared_json)
        # The declaration's `type` is in the key only where the whole config is: it is
        # the same for every provider of `kind`.
        key = (kind, capability_key(cls, declared))
        overlap = self._by_key.get(key)
        if overlap is None:
            from keyshift.context import PluginContext
            from keyshift.domain.estate import ProviderSpec
            from keyshift.engine.plugins import build_provider
            from keyshift.providers.base import Capability

            spec = ProviderSpec.model_validate(declared)
            provider = build_provider(kind, spec.config(), PluginContext())
            in_place = Capability.IN_PLACE in provider.capabilities
            overlap = self._by_key[key] = "in place" if in_place else "dual"
        self._by_text[declared_json] = overlap
        return overlap


_OVERLAPS_KEPT = 200_000
_OVERLAPS = _Overlaps()
"""One for the process: a declaration's overlap depends on nothing but its text (and
keyshift's code), so a status page reuses what the last one found (a race between two
threads only finds the same answer twice)."""


def _summary(rot: RotationRow) -> RotationSummary:
    return RotationSummary(
        rot.id,
        rot.state,
        rot.requested_by,
        rot.requested_at,
        rot.finished_at,
        rot.new_version_id,
        rot.error,
        rot.reason,
        rot.trigger,
    )


def history_rows(store: Store, credential: str) -> list[RotationSummary]:
    with store.transaction() as s:
        cred = s.execute(
            select(CredentialRow).where(CredentialRow.name == credential)
        ).scalar_one_or_none()
        if cred is None:
            raise NotFound(f"no credential named {credential}")
        rots = (
            s.execute(
                select(RotationRow)
                .where(RotationRow.credential_id == cred.id)
                .order_by(RotationRow.requested_at)
            )
            .scalars()
            .all()
        )
        return [_summary(r) for r in rots]


@dataclass(frozen=True)
class RotationRef:
    """A rotation's full id, and the name and provider type of its credential."""

    id: str
    credential: str
    provider_type: str


def rotation_ref(store: Store, rotation_id: str) -> RotationRef:
    """Resolve a rotation id (or a unique prefix); NotFound when there is none."""
    with store.transaction() as s:
        rot = lookups.rotation(s, rotation_id)
        cred = s.get(CredentialRow, rot.credential_id)
        if cred is None:
            raise NotFound(f"credential of rotation {rot.id}")
        return RotationRef(rot.id, cred.name, cred.provider_type)


def rotation_timeline(store: Store, rotation_id: str) -> Timeline:
    from keyshift.engine.plan import Plan
    from keyshift.engine.splits import SPLIT
    from keyshift.service.impact import step_titles

    with store.transaction() as s:
        rot = lookups.rotation(s, rotation_id)
        cred = s.get(CredentialRow, rot.credential_id)
        plan = Plan.from_json(rot.plan)
        titles = step_titles(plan)
        steps = (
            s.execute(select(StepRow).where(StepRow.rotation_id == rot.id).order_by(StepRow.seq))
            .scalars()
            .all()
        )
        return Timeline(
            rotation=_summary(rot),
            credential=cred.name if cred else "?",
            plan_hash=rot.plan_hash,
            grace_until=rot.grace_until,
            attention=rot.attention,
            steps=[
                StepLine(
                    st.seq,
                    st.name,
                    st.attempt,
                    st.status,
                    st.started_at,
                    st.ended_at,
                    st.error,
                    (st.detail or {}).get("propagation"),
                    titles.get(st.name, st.name),
                )
                for st in steps
            ],
            running=rot.lease_owner is not None
            and rot.lease_expires_at is not None
            and rot.lease_expires_at > utcnow(),
            tickets=tickets(s, rot.id),
            deliveries=tuple(a.step for a in plan.in_phase(Phase.PUBLISH)),
            signers_from=_signers_from(rot, steps),
            split=(rot.residual or {}).get(SPLIT),
        )


def _signers_from(rot: RotationRow, steps: Sequence[StepRow]) -> datetime | None:
    """When the signers of a trust-first rotation get the new version, while it rests in
    `publishing` with that wait as its last step (`engine.trust`)."""
    from keyshift.engine.trust import SIGNERS_WAIT_STEP

    if rot.state != RotationState.PUBLISHING.value or not steps:
        return None
    last = steps[-1]
    if last.name != SIGNERS_WAIT_STEP or last.status != StepStatus.SUCCEEDED.value:
        return None
    when = (last.detail or {}).get("signers_from")
    return datetime.fromisoformat(when) if isinstance(when, str) else None


async def rotate(
    store: Store,
    credential: str,
    *,
    actor: str,
    grace: timedelta | None = None,
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
    reason: str = "manual",
    trigger: Trigger = Trigger.CLI,
    audit_refusal: bool = True,
    guard: Guard | None = None,
    break_glass_permitted: bool = True,
) -> tuple[str, RotationState]:
    """Request a rotation and run it as far as it goes now (to `grace` or to the end).
    The rotation is leased to this call from its request on, so no worker that resumes
    unfinished rotations meanwhile runs it too; `guard` as for `Engine.request`.
    `trigger` break-glass: outside the window and through freezes (`Requests.request`);
    on the local store the operator holds the store, so `break_glass_permitted`."""
    from keyshift.engine.engine import Engine

    engine = Engine(store, actor=actor, context=context, on_event=on_event)
    rotation_id = engine.request(
        credential,
        requested_by=actor,
        grace=grace,
        reason=reason,
        trigger=trigger,
        audit_refusal=audit_refusal,
        guard=guard,
        lease=True,
        break_glass_permitted=break_glass_permitted,
    )
    return rotation_id, await engine.run(rotation_id)


FREEZE_STEP = "freeze"
"""The preflight line of a freeze covering the credential."""
INTEGRATION_STEP = "integration"
"""The preflight line of a disabled integration the credential connects through."""


async def preflight(
    store: Store, credential: str, *, actor: str, context: PluginContext | None = None
) -> tuple[str, list[tuple[str, PreflightResult]]]:
    """The readiness of every step of a rotation of `credential`, provider first, checked
    without changing anything (and first, a `freeze` line per freeze that covers it:
    blocked, with its reason); the plan hash and each step's readiness and reason are
    recorded in the audit trail (`rotation.preflight`)."""
    from keyshift.domain.estate import disabled_integrations
    from keyshift.domain.preflight import PreflightResult, Readiness
    from keyshift.engine.engine import Engine
    from keyshift.engine.plan import stored_plan
    from keyshift.governance import integration_disabled

    engine = Engine(store, actor=actor, context=context)
    with store.transaction() as s:
        cred = lookups.estate_credential(s, credential)
        plan = stored_plan(cred.spec)
        refused = freezes.refusals(
            freezes.holding(s, engine.context.now()), cred.name, cred.owner, cred.environment
        )
        disabled = disabled_integrations(cred.spec.get("integrations", {}))
    # A freeze refuses the rotation before any step runs: shown first, as a step would be.
    results = [(FREEZE_STEP, PreflightResult(Readiness.BLOCKED, reason)) for reason in refused]
    if disabled:
        # A disabled integration is not called, not even to check it.
        results += [
            (
                INTEGRATION_STEP,
                PreflightResult(Readiness.BLOCKED, integration_disabled(n, credential)),
            )
            for n in disabled
        ]
    else:
        results += await engine.preflight(plan)
    with store.transaction() as s:
        store.audit(
            s,
            actor=actor,
            action="rotation.preflight",
            subject=f"credential:{credential}",
            details={
                "credential": credential,
                "plan_hash": plan.hash,
                "ready": all(r.readiness == Readiness.READY for _step, r in results),
                "steps": [
                    {"step": step, "readiness": r.readiness.value, "reason": r.reason}
                    for step, r in results
                ],
            },
        )
    return plan.hash, results


dry_run = preflight
"""`keyshift rotate NAME --dry-run` is the same check as `keyshift preflight NAME`."""


def unfinished(store: Store) -> list[tuple[str, str, str, datetime | None]]:
    """(rotation id, credential, state, grace_until) of every rotation not in a final state."""
    with store.transaction() as s:
        rows = s.execute(
            select(RotationRow, CredentialRow.name)
            .join(CredentialRow, CredentialRow.id == RotationRow.credential_id)
            .where(RotationRow.state.not_in(_FINAL))
            .order_by(RotationRow.requested_at)
        ).all()
        return [(r.id, name, r.state, r.grace_until) for r, name in rows]


async def resume(
    store: Store,
    *,
    actor: str,
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
    concurrency: int = 1,
    on_start: Callable[[fleet.Job], None] | None = None,
    on_outcome: Callable[[fleet.Outcome], None] | None = None,
) -> list[tuple[str, str, RotationState | None]]:
    """Continue every unfinished rotation from its journal, up to `concurrency` at once
    (`service.fleet`), the longest waiting first.

    Returns (rotation id, credential, state reached); the state is None when a
    live worker holds the rotation's lease. A rotation that could not be run at all
    (its store unreachable, a bug) is logged and left for the next try.
    """
    from keyshift.service import fleet

    def job(rotation_id: str, credential: str) -> fleet.Job:
        async def call() -> tuple[str, RotationState]:
            state = await run(store, rotation_id, actor=actor, context=context, on_event=on_event)
            return rotation_id, state

        return fleet.Job(credential, call, rotation_id)

    jobs = [job(rotation_id, credential) for rotation_id, credential, _s, _g in unfinished(store)]
    outcomes = await fleet.run_all(
        jobs, concurrency=concurrency, on_start=on_start, on_outcome=on_outcome
    )
    order = {j.rotation_id: i for i, j in enumerate(jobs)}
    return [
        (o.rotation_id or "", o.credential, o.state)
        for o in sorted(outcomes, key=lambda o: order[o.rotation_id])
        if o.error is None
    ]


async def retire_disabled(
    store: Store, *, actor: str, context: PluginContext | None = None
) -> list[dict[str, Any]]:
    """Revoke at their issuers the new versions that rolled-back rotations kept disabled
    and whose retention is over (`Engine.retire_disabled`). Returns the audited facts of
    each one retired. One that cannot be retired now (its credential is rotating, its
    issuer is unreachable) is logged and tried again at the next scan."""
    from keyshift.engine.engine import Engine

    engine = Engine(store, actor=actor, context=context)
    now = engine.context.now()
    with store.transaction() as s:
        due = (
            s.execute(
                select(RotationRow.id)
                .join(VersionRow, VersionRow.id == RotationRow.new_version_id)
                .where(
                    RotationRow.state == RotationState.ROLLED_BACK.value,
                    VersionRow.status == VersionStatus.DISABLED.value,
                    VersionRow.expires_at <= now,
                )
                .order_by(VersionRow.expires_at)
            )
            .scalars()
            .all()
        )
    retired: list[dict[str, Any]] = []
    for rotation_id in due:
        try:
            facts = await engine.retire_disabled(rotation_id)
        except (KeyshiftError, LeaseHeld) as exc:
            log.warning(
                "retiring a rolled-back version failed", rotation=rotation_id, error=str(exc)
            )
            continue
        if facts is not None:
            retired.append(facts)
    return retired


# Used by the API, which starts a rotation and runs it in the background ---------------


def credential_detail(store: Store, credential: str, *, now: datetime) -> CredentialDetail:
    """One credential's status row with every version (ids and fingerprints, no values)."""
    with store.transaction() as s:
        found = list(status_of(s, (CredentialRow.name == credential,), now=now))
        if not found:
            raise NotFound(f"no credential named {credential} in the estate")
        [(cred, row)] = found
        versions = [
            VersionLine(
                id=v.id,
                serial=v.serial,
                status=v.status,
                fingerprint=v.fingerprint,
                rotation_id=v.rotation_id,
                created_at=v.created_at,
                expires_at=v.expires_at,
                revoked_at=v.revoked_at,
                provenance=v.provenance,
                certificate=CertificateFacts.of(v.attributes),
            )
            for v in s.execute(
                select(VersionRow)
                .where(VersionRow.credential_id == cred.id)
                .order_by(VersionRow.serial)
            ).scalars()
        ]
    return CredentialDetail(
        status=row,
        provider=cred.provider_type,
        environment=cred.environment,
        active_rotation_id=cred.active_rotation_id,
        versions=versions,
    )


def provider_type(store: Store, credential: str) -> str:
    """The provider `type` of a credential in the estate (e.g. to require entra:rotate)."""
    with store.transaction() as s:
        return lookups.estate_credential(s, credential).provider_type


def request(
    store: Store,
    credential: str,
    *,
    actor: str,
    grace: timedelta | None = None,
    reason: str = "manual",
    trigger: Trigger = Trigger.API,
    break_glass_permitted: bool = False,
    event: EventRef | None = None,
    context: PluginContext | None = None,
) -> str:
    """Record a rotation in state `requested` without running it; return its id.
    RotationInProgress names the unfinished rotation when there is one. A break-glass
    one of a `prod` credential needs `break_glass_permitted`; `event`: the inbound
    event that asked for it (`Requests.request`)."""
    from keyshift.engine.engine import Engine

    with store.transaction() as s:
        active = s.execute(
            select(CredentialRow.active_rotation_id).where(CredentialRow.name == credential)
        ).scalar_one_or_none()
    if active is not None:
        raise RotationInProgress(
            f"credential {credential} already has rotation {active} in progress; resume it"
        )
    return Engine(store, actor=actor, context=context).request(
        credential,
        requested_by=actor,
        grace=grace,
        reason=reason,
        trigger=trigger,
        break_glass_permitted=break_glass_permitted,
        event=event,
    )


def resumable(store: Store, rotation_id: str, *, now: datetime) -> tuple[str, str]:
    """(full rotation id, credential) of an unfinished rotation that no live worker holds.
    NotFound for an unknown id, Conflict for a finished one, LeaseHeld while leased."""
    timeline = rotation_timeline(store, rotation_id)
    full_id = timeline.rotation.id
    with store.transaction() as s:
        rot = s.get(RotationRow, full_id)
        if rot is None:
            raise NotFound(f"no rotation {rotation_id}")
        if rot.state in _FINAL:
            raise Conflict(f"rotation {full_id} is finished ({rot.state}); nothing to resume")
        if rot.lease_owner and rot.lease_expires_at and rot.lease_expires_at > now:
            raise LeaseHeld(f"rotation {full_id} is held by a live worker ({rot.lease_owner})")
    return full_id, timeline.credential


async def run(
    store: Store,
    rotation_id: str,
    *,
    actor: str,
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
) -> RotationState:
    """Advance one requested or unfinished rotation as far as it goes now."""
    from keyshift.engine.engine import Engine

    engine = Engine(store, actor=actor, context=context, on_event=on_event)
    return await engine.run(rotation_id)


async def roll_back(
    store: Store,
    rotation_id: str,
    *,
    actor: str,
    reason: str,
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
) -> tuple[str, RotationState]:
    """Roll back a rotation (by id or a unique prefix) whose new version an operator
    judged bad: the old version goes back to the consumers that were switched, the new
    one is kept disabled (`Engine.roll_back`). `actor` and `reason` are audited
    (`rotation.rollback`). Returns the full id and the state reached (`rolled_back`, or
    `failed` when a consumer could not be restored). Refused, changing nothing:
    ConfigError without a reason, NotFound, LeaseHeld, RollbackRefused."""
    why = reason.strip()
    if not why:
        raise ConfigError("reason", "is required: say why the rotation is rolled back")
    from keyshift.engine.engine import Engine

    ref = rotation_ref(store, rotation_id)
    engine = Engine(store, actor=actor, context=context, on_event=on_event)
    return ref.id, await engine.roll_back(ref.id, reason=why)


def current_plan_hash(store: Store, credential: str) -> str:
    """The hash of the plan a rotation of `credential` requested now would run (a dry run
    shows it; a confirmation can check that nothing changed since)."""
    from keyshift.engine.plan import stored_plan

    with store.transaction() as s:
        return stored_plan(lookups.estate_credential(s, credential).spec).hash
