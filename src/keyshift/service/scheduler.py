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
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import DEFAULT_POLICY_NAME, INTEGRATION_FIELDS, Estate
from keyshift.domain.states import Trigger, VersionStatus
from keyshift.engine import freezes
from keyshift.engine.engine import Engine
from keyshift.engine.faults import crash_point
from keyshift.engine.journal import StepEvent
from keyshift.errors import PolicyRefused
from keyshift.service import alerting, due, entra, notifications
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


def due_for_rotation(store: Store, *, now: datetime) -> list[str]:
    """Credentials the worker rotates now, by name: those with `auto_rotate: true`, no
    rotation under way, inside their rotation window, whose expiry is within
    `rotate_before_expiry` or that have none yet (`due.next_rotation`, the rule status
    shows too)."""
    with store.transaction() as s:
        holding = freezes.holding(s, now)
        candidates = due.standings(
            s,
            CredentialRow.scheduled.is_(True),
            CredentialRow.auto_rotate.is_(True),
            CredentialRow.active_rotation_id.is_(None),
        )
        return [c.name for c in candidates if due.next_rotation(c, now=now, freezes=holding).due]


# --- the scan -----------------------------------------------------------------------------


async def worker_pass(
    store: Store,
    *,
    actor: str,
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
) -> dict[str, int]:
    """One scan (see the module docstring); counts of what it did."""
    ctx = Engine(store, actor=actor, context=context).context_for({})
    synced = await sync_due(store, actor=actor, context=ctx)
    resumed = await resume(store, actor=actor, context=ctx, on_event=on_event)
    retired = await retire_disabled(store, actor=actor, context=ctx)
    estate = current_estate(store)
    alerts = raise_alerts(store, estate, actor=actor, now=ctx.now())
    alerts += alerting.raise_stuck(store, actor=actor, now=ctx.now())
    alerts += alerting.raise_revoked_in_use(store, actor=actor, now=ctx.now())
    alerts += await alerting.raise_changed_outside(store, actor=actor, context=ctx)
    await deliver_alerts(store, estate, context=ctx)
    started = 0
    for credential in due_for_rotation(store, now=ctx.now()):
        try:
            await rotate(
                store,
                credential,
                actor=actor,
                context=ctx,
                on_event=on_event,
                reason="scheduled",
                trigger=Trigger.SCHEDULE,
                audit_refusal=False,
            )
            started += 1
        except PolicyRefused as exc:
            # Raised once as an alert (and audited then), not at every scan.
            alerting.record(
                store,
                actor=actor,
                subject=f"credential:{credential}",
                kind="refused",
                threshold=hashlib.sha256("; ".join(exc.reasons).encode()).hexdigest()[:16],
                detail={
                    "credential": credential,
                    "reasons": exc.reasons,
                    "raised_at": ctx.now().isoformat(),
                },
            )
        except Exception as exc:  # one credential's failure must not stop the scan
            log.error("scheduled rotation failed to start", credential=credential, error=str(exc))
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
    }


async def worker_loop(
    store: Store,
    *,
    actor: str,
    interval: timedelta,
    once: bool = False,
    on_event: Callable[[StepEvent], None] | None = None,
    on_scan: Callable[[dict[str, int]], None] | None = None,
) -> None:
    while True:
        counts = await worker_pass(store, actor=actor, on_event=on_event)
        log.info("worker scan", **counts)
        if on_scan is not None:
            on_scan(counts)
        if once:
            return
        await asyncio.sleep(interval.total_seconds())
