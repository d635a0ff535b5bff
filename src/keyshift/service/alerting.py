"""Alerts: raised once each, recorded, audited and queued for the notification channels
in one transaction (`record`), and the controller alerts the worker's scan looks for:

- a rotation stuck in a phase longer than its policy's `stuck_after`;
- an old version revoked while the residual-use evidence still showed it in use;
- a PostgreSQL or Redis credential changed outside keyshift: the issuer no longer holds
  its current version (Redis: `ACL GETUSER` no longer lists its hash; PostgreSQL: the
  `pg_authid` verifier no longer matches where the admin may read it, else it no longer
  signs in), checked at most every `OUTSIDE_CHECK_EVERY`.

The expiry and Entra alerts (`scheduler.raise_alerts`) are recorded here too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keyshift.context import PluginContext
from keyshift.domain import notifications as kinds
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import Policy
from keyshift.domain.states import RotationState, StepStatus, VersionStatus
from keyshift.engine import outbox
from keyshift.engine.engine import Engine
from keyshift.engine.plan import stored_plan
from keyshift.engine.plugins import build_provider
from keyshift.engine.run import issued
from keyshift.engine.trust import SIGNERS_WAIT_STEP
from keyshift.errors import KeyshiftError, PluginError, scrub
from keyshift.providers.base import Capability, VerifyRequest
from keyshift.store.models import (
    AlertRow,
    CredentialRow,
    Meta,
    RotationRow,
    StepRow,
    VersionRow,
)
from keyshift.store.store import Store

log = structlog.get_logger("keyshift.alerts")

EXPIRY = "expiry"
STUCK = "stuck"
REVOKED_IN_USE = "revoked_in_use"
DRAIN_LOOKBACK = timedelta(days=7)
"""How far back the scan looks for rotations that revoked an old version still in use."""
_WATCHED_PHASES = (
    RotationState.PUBLISHING,
    RotationState.RELOADING,
    RotationState.VERIFYING,
    RotationState.GRACE,
)
"""Where a rotation should not stay long: a consumer hangs, or revocation never comes."""
CHANGED_OUTSIDE = "changed_outside"
OUTSIDE_CHECK_EVERY = timedelta(hours=1)
"""How often each PostgreSQL or Redis credential's current version is tried at its issuer."""
_CHECKED_AT = "outside.checked_at:"
_OUTSIDE_PROVIDERS = frozenset({"postgres", "redis"})
"""Issuers whose secret someone else may set (Entra's own finding covers client secrets)."""


OUTBOX_NAMES = {"outside_keyshift": kinds.CHANGED_OUTSIDE}
"""Where the notification event differs from the alert webhooks' event name: an Entra
secret added outside keyshift is told as every change made outside keyshift is (alert
webhooks keep `entra.secret_outside_keyshift`)."""
EVENT_NAMES = {
    "refused": kinds.ROTATION_REFUSED,
    EXPIRY: kinds.CREDENTIAL_EXPIRING,
    "outside_keyshift": kinds.OUTSIDE_KEYSHIFT,
    "lifetime": kinds.LIFETIME_EXCEEDED,
    STUCK: kinds.ROTATION_STUCK,
    CHANGED_OUTSIDE: kinds.CHANGED_OUTSIDE,
    REVOKED_IN_USE: kinds.REVOKED_IN_USE,
}


def record(
    store: Store, *, actor: str, subject: str, kind: str, threshold: str, detail: dict[str, Any]
) -> bool:
    """Record an alert unless it was raised before, and queue its event for the
    notification channels in the same transaction; True if it is new."""
    with store.transaction() as s:
        exists = s.execute(
            select(AlertRow.id).where(
                AlertRow.subject == subject, AlertRow.kind == kind, AlertRow.threshold == threshold
            )
        ).first()
        if exists is not None:
            return False
    raised_at = datetime.fromisoformat(detail["raised_at"])
    try:
        with store.transaction() as s:
            s.add(
                AlertRow(
                    subject=subject,
                    kind=kind,
                    threshold=threshold,
                    raised_at=raised_at,
                    detail=detail,
                    delivered=False,
                )
            )
            store.audit(
                s,
                actor=actor,
                action="alert.raised",
                subject=subject,
                details={"kind": kind, "threshold": threshold, **detail},
            )
            outbox.queue(
                s,
                OUTBOX_NAMES.get(kind) or EVENT_NAMES.get(kind, f"alert.{kind}"),
                {"subject": subject, "threshold": threshold or None, **detail},
                at=raised_at,
                rotation_id=detail.get("rotation_id"),
                credential=detail.get("credential"),
            )
    except IntegrityError:
        return False  # another worker raised it first
    return True


def _signers_from(s: Session, rotation_id: str) -> datetime | None:
    """When a trust-first rotation's signers may get its new version (`waiting:signers`)."""
    detail = s.execute(
        select(StepRow.detail)
        .where(
            StepRow.rotation_id == rotation_id,
            StepRow.name == SIGNERS_WAIT_STEP,
            StepRow.status == StepStatus.SUCCEEDED.value,
        )
        .order_by(StepRow.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    when = (detail or {}).get("signers_from")
    return datetime.fromisoformat(when) if isinstance(when, str) else None


def raise_stuck(store: Store, *, actor: str, now: datetime) -> int:
    """Raise `rotation.stuck` once per rotation and phase for every rotation that stayed
    in publishing, reloading or verifying longer than its policy's `stuck_after`, or in
    grace that long past the grace period's end; how many are new."""
    found: list[tuple[RotationRow, CredentialRow, datetime]] = []
    with store.transaction() as s:
        running = s.execute(
            select(RotationRow, CredentialRow)
            .join(CredentialRow, CredentialRow.id == RotationRow.credential_id)
            .where(RotationRow.state.in_([state.value for state in _WATCHED_PHASES]))
        ).all()
        for rot, cred in running:
            since = rot.grace_until if rot.state == RotationState.GRACE.value else rot.updated_at
            if rot.state == RotationState.PUBLISHING.value:
                # A trust-first rotation rests in publishing until its signers may get the
                # new version: it is stuck only stuck_after past that time.
                since = _signers_from(s, rot.id) or since
            if since is not None:
                found.append((rot, cred, since))
        s.expunge_all()
    raised = 0
    for rot, cred, since in found:
        limit = Policy.model_validate(rot.plan.get("policy") or {}).stuck_after
        if now - since < limit:
            continue
        past = "past the end of grace" if rot.state == RotationState.GRACE.value else "in it"
        raised += record(
            store,
            actor=actor,
            subject=f"rotation:{rot.id}",
            kind=STUCK,
            threshold=rot.state,
            detail={
                "credential": cred.name,
                "owner": cred.owner,
                "environment": cred.environment,
                "rotation_id": rot.id,
                "state": rot.state,
                "since": since.isoformat(),
                "stuck_for": format_duration(now - since),
                "attention": f"{rot.state} for {format_duration(now - since)} {past}, longer "
                f"than stuck_after ({format_duration(limit)}); `keyshift show {rot.id[:8]}`",
                "raised_at": now.isoformat(),
            },
        )
    return raised


def raise_revoked_in_use(store: Store, *, actor: str, now: datetime) -> int:
    """Raise `rotation.revoked_in_use` once for every rotation that revoked its old version
    while the residual-use evidence still showed it in use (`on_timeout: revoke`): a
    consumer may have been cut off. How many are new."""
    with store.transaction() as s:
        found = s.execute(
            select(RotationRow.id, RotationRow.residual, CredentialRow)
            .join(CredentialRow, CredentialRow.id == RotationRow.credential_id)
            .where(
                RotationRow.state == RotationState.COMPLETED.value,
                RotationRow.finished_at >= now - DRAIN_LOOKBACK,
                RotationRow.residual.is_not(None),
            )
        ).all()
        s.expunge_all()
    raised = 0
    for rotation_id, evidence, cred in found:
        sessions = int((evidence or {}).get("last_sessions") or 0)
        if not sessions:
            continue
        raised += record(
            store,
            actor=actor,
            subject=f"rotation:{rotation_id}",
            kind=REVOKED_IN_USE,
            threshold="",
            detail={
                "credential": cred.name,
                "owner": cred.owner,
                "environment": cred.environment,
                "rotation_id": rotation_id,
                "attention": f"the old version was revoked while {sessions} session(s) still "
                f"used it ({evidence.get('outcome')}); check the consumers that had not "
                "moved to the new version",
                "raised_at": now.isoformat(),
            },
        )
    return raised


async def raise_changed_outside(
    store: Store, *, actor: str, context: PluginContext, every: timedelta = OUTSIDE_CHECK_EVERY
) -> int:
    """Try the current version of every PostgreSQL and Redis credential at its issuer (at
    most every `every`, none while a rotation of it runs). A version the issuer refuses
    was changed by someone else (or the user was dropped): raise
    `credential.changed_outside_keyshift` once per version. An issuer that cannot be
    reached says nothing either way. How many are new."""
    now = context.now()
    engine = Engine(store, actor=actor, context=context)
    with store.transaction() as s:
        found = s.execute(
            select(CredentialRow, VersionRow)
            .join(VersionRow, VersionRow.credential_id == CredentialRow.id)
            .where(
                CredentialRow.removed_at.is_(None),
                CredentialRow.active_rotation_id.is_(None),
                CredentialRow.provider_type.in_(_OUTSIDE_PROVIDERS),
                VersionRow.status == VersionStatus.CURRENT.value,
                VersionRow.ciphertext.is_not(None),
            )
        ).all()
        due = []
        for cred, version in found:
            checked = s.get(Meta, _CHECKED_AT + cred.name)
            if checked is not None and now - datetime.fromisoformat(checked.value) < every:
                continue
            s.merge(Meta(key=_CHECKED_AT + cred.name, value=now.isoformat()))
            due.append((cred.name, cred.owner, cred.environment, dict(cred.spec), version))
        s.flush()  # the check times, before the rows are detached for the checks below
        s.expunge_all()
    raised = 0
    for name, owner, environment, spec, version in due:
        plan = stored_plan(spec)
        secrets: list[str] = []
        try:
            provider = build_provider(
                plan.provider_type, plan.provider_config, engine.plugin_context(plan, secrets)
            )
            held = provider.capabilities
            if Capability.INSPECTS not in held and Capability.AUTHENTICATES not in held:
                await provider.aclose()
                continue
            current = issued(store, version)
            secrets.append(current.value.reveal())
            request = VerifyRequest(name, current)
            try:
                # Where the issuer shows what it stores (a Redis ACL hash), read it: no
                # failed login is logged when it changed; otherwise sign in as a consumer.
                answer = None
                if Capability.INSPECTS in held:
                    answer = await cast(Any, provider).inspect(request)
                if answer is None and Capability.AUTHENTICATES in held:
                    answer = await provider.verify(request)
            finally:
                await provider.aclose()
        except (PluginError, KeyshiftError) as exc:
            log.warning("outside check skipped", credential=name, error=scrub(str(exc), secrets))
            continue
        if answer is None or answer.ok:
            continue
        raised += record(
            store,
            actor=actor,
            subject=f"version:{version.id}",
            kind=CHANGED_OUTSIDE,
            threshold="",
            detail={
                "credential": name,
                "owner": owner,
                "environment": environment,
                "version_id": version.id,
                "fingerprint": version.fingerprint,
                "attention": "the issuer no longer accepts the current version "
                f"({scrub(answer.detail, secrets)}): it was changed outside keyshift; "
                "rotate it (`keyshift rotate`) to give every consumer a working value",
                "raised_at": now.isoformat(),
            },
        )
    return raised
