"""The worker's periodic scan: sync integrations, resume rotations, raise alerts, and
start the automatic rotations that are due.

One scan, in order:

1. `entra` integrations whose `sync_every` has passed are synced (one failing tenant
   does not stop the others or the scan).
2. Unfinished rotations are resumed (and old versions revoked after their grace). The
   new version a rolled-back rotation kept disabled is revoked at its issuer once its
   retention is over, so no credential stays valid that nobody uses.
3. Alerts are raised once each and sent to the estate's alert webhooks: a version or
   Entra secret crossing an expiry threshold (30 and 7 days by default; one alert per
   threshold per version, the nearest threshold only when several were crossed since
   the last scan), a secret added outside keyshift to a managed application, a
   lifetime over the policy maximum. An alert whose delivery failed is sent again
   at the next scan; receivers drop repeats by `X-Keyshift-Delivery`.
4. Credentials with `auto_rotate: true` whose expiry is within `rotate_before_expiry`
   are rotated, inside their policy's rotation window if it has one. Without a
   keyshift version yet, an Entra credential's expiry is the latest end of its
   application's client secrets as last synced.
5. Events the engine queued in its outbox (a rotation failed, rolled back, needs
   attention or completed; an approval requested or decided) are routed to the estate's
   `notifications` channels and delivered, each retried with backoff until
   `max_attempts` (`service.notifications`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import DEFAULT_POLICY_NAME, INTEGRATION_FIELDS, Estate
from keyshift.domain.states import RotationState, Trigger, VersionStatus
from keyshift.engine import freezes
from keyshift.engine.engine import Engine
from keyshift.engine.faults import crash_point
from keyshift.engine.journal import StepEvent
from keyshift.engine.requests import Guard
from keyshift.service import alerting, due, entra, fleet, notifications
from keyshift.service.estate import current_estate
from keyshift.service.rotations import resume, retire_disabled, rotate
from keyshift.store.models import (
    AlertRow,
    CredentialRow,
    Meta,
    VersionRow,
)
from keyshift.store.store import Store
from keyshift.targets.webhook import WebhookConfig, WebhookTarget

log = structlog.get_logger("keyshift.scheduler")

_SYNCED_AT = "entra.synced_at:"


# --- 1. syncing ---------------------------------------------------------------------------


def _last_synced(store: Store, name: str) -> datetime | None:
    with store.transaction() as s:
        row = s.get(Meta, _SYNCED_AT + name)
        return datetime.fromisoformat(row.value) if row is not None else None


async def sync_due(store: Store, *, actor: str, context: PluginContext) -> list[str]:
    """Sync each enabled `entra` integration whose `sync_every` has passed; the names
    synced."""
    now = context.now()
    synced: list[str] = []
    for name, raw in entra.entra_integrations(store).items():
        if raw.get("enabled") is False:
            continue  # a disabled integration is not called
        config = EntraIntegration.model_validate(
            {k: v for k, v in raw.items() if k not in INTEGRATION_FIELDS}
        )
        last = _last_synced(store, name)
        if last is not None and now - last < config.sync_every:
            continue
        try:
            await entra.sync(store, actor=actor, context=context, only=[name])
        except Exception as exc:  # one tenant's failure must not stop the scan
            log.error("entra sync failed", integration=name, error=str(exc))
            continue
        with store.transaction() as s:
            s.merge(Meta(key=_SYNCED_AT + name, value=now.isoformat()))
        synced.append(name)
    return synced


# --- 3. alerts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """Something with an expiry that alerts watch: a keyshift version or an Entra secret."""

    subject: str
    expires_at: datetime
    facts: dict[str, Any]


def _watched(store: Store, *, now: datetime) -> list[Watched]:
    """Current versions of every credential, and discovered Entra credentials that are
    not keyshift versions (those are watched as versions)."""
    out: list[Watched] = []
    with store.transaction() as s:
        rows = s.execute(
            select(VersionRow, CredentialRow)
            .join(CredentialRow, CredentialRow.id == VersionRow.credential_id)
            .where(
                CredentialRow.removed_at.is_(None),
                VersionRow.status == VersionStatus.CURRENT.value,
                VersionRow.expires_at.is_not(None),
            )
        ).all()
        for version, cred in rows:
            if version.expires_at is None:
                continue
            out.append(
                Watched(
                    f"version:{version.id}",
                    version.expires_at,
                    {
                        "credential": cred.name,
                        "owner": cred.owner,
                        "environment": cred.environment,
                        "version_id": version.id,
                        "fingerprint": version.fingerprint,
                    },
                )
            )
    for found in entra.inventory(store, now=now):
        if found.by_keyshift or found.end is None:
            continue
        out.append(
            Watched(
                f"entra:{found.integration}:{found.key_id}",
                found.end,
                {
                    "integration": found.integration,
                    "app": found.app_name,
                    "app_id": found.app_id,
                    "kind": found.kind,
                    "key_id": found.key_id,
                    "managed_by": found.managed_by,
                    "owners": list(found.owners),
                },
            )
        )
    return out


def raise_alerts(store: Store, estate: Estate, *, actor: str, now: datetime) -> int:
    """Record every alert due now that was not raised before; how many are new."""
    raised = 0
    thresholds = estate.alerts.expiry_thresholds
    for item in _watched(store, now=now):
        left = item.expires_at - now
        crossed = [t for t in thresholds if left <= t]
        if not crossed:
            continue
        nearest = min(crossed)
        detail = {
            **item.facts,
            "expires_at": item.expires_at.isoformat(),
            "days_left": int(left.total_seconds() // 86400),
            "raised_at": now.isoformat(),
        }
        raised += alerting.record(
            store,
            actor=actor,
            subject=item.subject,
            kind=alerting.EXPIRY,
            threshold=format_duration(nearest),
            detail=detail,
        )
    default = estate.named_policy(DEFAULT_POLICY_NAME)
    for finding in entra.findings(store, now=now, default_policy=default):
        c = finding.credential
        raised += alerting.record(
            store,
            actor=actor,
            subject=f"entra:{c.integration}:{c.key_id}",
            kind=finding.kind,
            threshold="",
            detail={
                "integration": c.integration,
                "app": c.app_name,
                "app_id": c.app_id,
                "key_id": c.key_id,
                "managed_by": c.managed_by,
                "finding": finding.detail,
                "raised_at": now.isoformat(),
            },
        )
    return raised


async def deliver_alerts(store: Store, estate: Estate, *, context: PluginContext) -> int:
    """Send undelivered alerts to every alert webhook; how many were delivered. Without
    webhooks an alert counts as delivered: it stays in the store and the audit trail."""
    with store.transaction() as s:
        pending = [
            (row.id, row.subject, row.kind, row.threshold, dict(row.detail))
            for row in s.execute(
                select(AlertRow).where(AlertRow.delivered.is_(False)).order_by(AlertRow.id)
            ).scalars()
        ]
    hooks = [
        WebhookTarget(WebhookConfig.model_validate(h), context) for h in estate.alerts.webhooks
    ]
    delivered = 0
    for alert_id, subject, kind, threshold, detail in pending:
        event = {
            "event": alerting.EVENT_NAMES.get(kind, f"alert.{kind}"),
            "alert_id": alert_id,
            "subject": subject,
            "threshold": threshold or None,
            **detail,
        }
        try:
            for hook in hooks:
                await hook.send_event(event, delivery_id=f"alert-{alert_id}")
        except Exception as exc:  # try again at the next scan
            log.warning("alert delivery failed", alert_id=alert_id, error=str(exc))
            continue
        with store.transaction() as s:
            row = s.get(AlertRow, alert_id)
            if row is not None:
                row.delivered = True
        delivered += 1
    return delivered


def alert_rows(store: Store, *, limit: int = 50) -> list[AlertRow]:
    with store.transaction() as s:
        rows = list(s.execute(select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)).scalars())
        s.expunge_all()
    return rows


@dataclass(frozen=True)
class Alert:
    """A raised alert as operators see it (the CLI's table, the API's `/v1/alerts`)."""

    id: int
    raised_at: datetime
    kind: str
    threshold: str
    subject: str
    detail: dict[str, Any]
    """Ids, names and dates of what crossed the threshold, never a value."""
    delivered: bool


def alerts(store: Store, *, limit: int = 50) -> list[Alert]:
    """The newest `limit` alerts, newest first."""
    return [
        Alert(a.id, a.raised_at, a.kind, a.threshold, a.subject, dict(a.detail), a.delivered)
        for a in alert_rows(store, limit=limit)
    ]


# --- 4. automatic rotations ---------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    due: list[str]
    """Credentials to rotate now, most urgent first (`due_for_rotation`)."""
    waiting: list[str]
    """Credentials that would be due but are outside their rotation window."""


def scheduled(store: Store, *, now: datetime) -> Schedule:
    """Credentials the worker rotates now, by name, most urgent first: those with
    `auto_rotate: true`, no rotation under way, inside their rotation window, whose
    expiry is within `rotate_before_expiry` or that have none yet (`due.next_rotation`,
    the rule status shows too). Expired ones come first, then the nearest expiry, then
    those without one, the least recently rotated first among equals. Those only their
    window holds back wait for it, holding up none of the others."""
    with store.transaction() as s:
        holding = freezes.holding(s, now)
        candidates = list(
            due.standings(
                s,
                CredentialRow.scheduled.is_(True),
                CredentialRow.auto_rotate.is_(True),
                CredentialRow.active_rotation_id.is_(None),
            )
        )
        ready = [c for c in candidates if due.next_rotation(c, now=now, freezes=holding).due]
        chosen = {c.id for c in ready}
        waiting = [
            c.name
            for c in candidates
            if c.policy.window is not None
            and c.id not in chosen
            and due.next_rotation(
                c._replace(policy=c.policy.model_copy(update={"window": None})),
                now=now,
                freezes=holding,
            ).due
        ]
    ready.sort(key=_urgency)
    return Schedule([c.name for c in ready], waiting)


def due_for_rotation(store: Store, *, now: datetime) -> list[str]:
    """The credentials to rotate now, most urgent first (`scheduled`)."""
    return scheduled(store, now=now).due


_NEVER = datetime.min.replace(tzinfo=UTC)


def _urgency(c: due.Standing) -> tuple[int, datetime, datetime, str]:
    end = c.current.expires_at if c.current is not None else c.issuer_expires_at
    return (0 if end is not None else 1, end or _NEVER, c.last_rotated_at or _NEVER, c.name)


def still_due(now: datetime) -> Guard:
    """The guard of a scheduled rotation's request: asked with the credential's row
    locked, whether it is due still (another worker may have rotated it since this one
    chose it)."""

    def guard(s: Session, cred: CredentialRow) -> str | None:
        # limit: the one credential's reads, not the whole Entra inventory's secret ends.
        found = list(due.standings(s, CredentialRow.id == cred.id, limit=1))
        holding = freezes.holding(s, now)
        if not found or not due.next_rotation(found[0], now=now, freezes=holding).due:
            return "no longer due"
        return None

    return guard


def _scheduled(
    store: Store,
    credential: str,
    *,
    actor: str,
    context: PluginContext,
    on_event: Callable[[StepEvent], None] | None,
) -> fleet.Job:
    async def call() -> tuple[str, RotationState]:
        return await rotate(
            store,
            credential,
            actor=actor,
            context=context,
            on_event=on_event,
            reason="scheduled",
            trigger=Trigger.SCHEDULE,
            audit_refusal=False,
            guard=still_due(context.now()),
        )

    return fleet.Job(credential, call)


def _refused(store: Store, outcome: fleet.Outcome, *, actor: str, now: datetime) -> None:
    """Raise a scheduled rotation's refusal once as an alert (audited then), not at
    every scan."""
    alerting.record(
        store,
        actor=actor,
        subject=f"credential:{outcome.credential}",
        kind="refused",
        threshold=hashlib.sha256("; ".join(outcome.refused).encode()).hexdigest()[:16],
        detail={
            "credential": outcome.credential,
            "reasons": list(outcome.refused),
            "raised_at": now.isoformat(),
        },
    )


# --- the scan -----------------------------------------------------------------------------


async def worker_pass(
    store: Store,
    *,
    actor: str,
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
    concurrency: int | None = None,
    tally: fleet.Tally | None = None,
) -> dict[str, int]:
    """One scan (see the module docstring); counts of what it did. Up to `concurrency`
    rotations run at once (`service.fleet`; by default the estate's `worker.concurrency`),
    resumed ones and then due ones, the most urgent first; `tally` counts them as they
    start and end."""
    tally = tally or fleet.Tally()
    tally.begin()
    if concurrency is None:
        concurrency = current_estate(store, with_credentials=False).worker.concurrency
    ctx = Engine(store, actor=actor, context=context).context_for({})
    synced = await sync_due(store, actor=actor, context=ctx)
    resumed = await resume(
        store,
        actor=actor,
        context=ctx,
        on_event=on_event,
        concurrency=concurrency,
        on_start=tally.started,
        on_outcome=tally.ended,
    )
    retired = await retire_disabled(store, actor=actor, context=ctx)
    estate = current_estate(store)
    alerts = raise_alerts(store, estate, actor=actor, now=ctx.now())
    alerts += alerting.raise_stuck(store, actor=actor, now=ctx.now())
    alerts += alerting.raise_revoked_in_use(store, actor=actor, now=ctx.now())
    alerts += await alerting.raise_changed_outside(store, actor=actor, context=ctx)
    await deliver_alerts(store, estate, context=ctx)
    schedule = scheduled(store, now=ctx.now())
    tally.scheduled(len(schedule.due), len(schedule.waiting))
    jobs = [
        _scheduled(store, name, actor=actor, context=ctx, on_event=on_event)
        for name in schedule.due
    ]
    outcomes = await fleet.run_all(
        jobs, concurrency=concurrency, on_start=tally.started, on_outcome=tally.ended
    )
    for outcome in outcomes:
        if outcome.refused:
            _refused(store, outcome, actor=actor, now=ctx.now())
    started = sum(1 for o in outcomes if o.rotation_id is not None)
    # Last, so that what this scan's rotations reported is told in this scan.
    crash_point("dispatching")
    told = await notifications.dispatch(store, estate, context=ctx)
    return {
        "synced": len(synced),
        "resumed": len(resumed),
        "retired": len(retired),
        "alerts": alerts,
        "notified": told["delivered"],
        "started": started,
        "waiting": len(schedule.waiting),
    }


async def worker_loop(
    store: Store,
    *,
    actor: str,
    interval: timedelta,
    once: bool = False,
    on_event: Callable[[StepEvent], None] | None = None,
    on_scan: Callable[[dict[str, int]], None] | None = None,
    concurrency: int | None = None,
    tally: fleet.Tally | None = None,
    context: PluginContext | None = None,
) -> None:
    """Scan every `interval` (once with `once`). One context serves every scan, so the
    issuers' budgets (`context.pacing`) carry over from one scan to the next."""
    context = context or PluginContext()
    while True:
        counts = await worker_pass(
            store,
            actor=actor,
            context=context,
            on_event=on_event,
            concurrency=concurrency,
            tally=tally,
        )
        log.info("worker scan", **counts)
        if on_scan is not None:
            on_scan(counts)
        if once:
            return
        await asyncio.sleep(interval.total_seconds())
