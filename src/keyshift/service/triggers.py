"""Inbound triggers: take an event another system posts (a secret-scanning alert, a SIEM
rule) and start the rotations it asks for.

An event is authenticated before anything is read from it: by the HMAC-SHA256 signature
of its raw body under the trigger's secret (`authenticate_signed`), or by the caller's
API token (`rotations:trigger`, checked by the API). Then `receive`:

1. reads what it asks (`keyshift.domain.triggers.read_event`); a GitHub `ping` or a
   resolved alert asks nothing and is answered as ignored;
2. answers a redelivery of an event id it already took with the rotations it started
   then (`duplicate`), and starts nothing;
3. refuses with `RateLimited` a new event past the trigger's `rate_limit`;
4. records the event (the unique trigger and event id keep two deliveries racing from
   both starting rotations), requests each rotation with trigger `event` (`break-glass`
   for a trigger so marked: outside the window, never through a freeze) and the event
   named in its audit entry, and audits `event.received`.

An event that started nothing (a freeze, governance) is kept as `refused`: it counts
toward the rate limit, and the same event may be delivered again once the freeze is
lifted. Nothing of the body is kept or echoed but ids and names: a GitHub alert's
leaked secret is never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keyshift.context import PluginContext
from keyshift.domain.estate import TriggerSpec
from keyshift.domain.states import Trigger
from keyshift.domain.triggers import (
    SIGNATURE_HEADERS,
    EventAsk,
    EventIgnored,
    EventRef,
    read_event,
    signature_matches,
)
from keyshift.errors import (
    ConfigError,
    NotFound,
    PolicyRefused,
    RateLimited,
    RotationInProgress,
    Unauthenticated,
)
from keyshift.service import rotations
from keyshift.sources import read_source
from keyshift.store.models import CredentialRow, EstateRevision, TriggerEventRow
from keyshift.store.store import Store

__all__ = ["Received", "Started", "authenticate_signed", "declared", "receive"]

log = structlog.get_logger("keyshift.service")

PENDING, STARTED, REFUSED = "pending", "started", "refused"

_NO_SIGNATURE = (
    "no valid signature for this trigger: sign the raw body with the trigger's secret "
    "(sha256=<hex>) or send an API token"
)
"""One answer for a missing, bad or unverifiable signature and an unknown trigger: an
unauthenticated caller learns nothing of which triggers exist."""


@dataclass(frozen=True)
class Started:
    credential: str
    rotation_id: str


@dataclass(frozen=True)
class Received:
    """What an event did: the rotations it started (the first delivery's, for a
    `duplicate`), those refused with why, or why it asked for none (`ignored`)."""

    trigger: str
    event_id: str | None
    duplicate: bool = False
    rotations: list[Started] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)
    ignored: str | None = None


def declared(store: Store, name: str) -> TriggerSpec | None:
    """The trigger `name` of the estate as last applied (None when it declares none)."""
    with store.transaction() as s:
        document = s.execute(
            select(EstateRevision.document).order_by(EstateRevision.id.desc()).limit(1)
        ).scalar_one_or_none()
    # Only the triggers: validating the whole estate per event would cost more than it.
    for raw in (document or {}).get("triggers") or []:
        if raw.get("name") == name:
            return TriggerSpec.model_validate(raw)
    return None


def authenticate_signed(
    store: Store, name: str, body: bytes, headers: Mapping[str, str], env: Mapping[str, str]
) -> TriggerSpec:
    """The trigger `name` when the event carries a valid signature of `body` under its
    secret, in the header of its kind; Unauthenticated otherwise (the same answer for an
    unknown trigger, one without `secret_from`, or a secret that cannot be read now)."""
    spec = declared(store, name)
    if spec is None or spec.secret_from is None:
        raise Unauthenticated(_NO_SIGNATURE)
    try:
        secret = read_source(f"triggers.{name}.secret_from", spec.secret_from, env)
    except ConfigError as exc:
        log.error("trigger secret unreadable", trigger=name, error=str(exc))
        raise Unauthenticated(_NO_SIGNATURE) from None
    header = SIGNATURE_HEADERS[spec.kind]
    if not signature_matches(secret.reveal().encode(), body, headers.get(header)):
        raise Unauthenticated(_NO_SIGNATURE)
    return spec


def receive(
    store: Store,
    trigger: TriggerSpec,
    body: bytes,
    headers: Mapping[str, str],
    *,
    actor: str,
    now: datetime,
    may_rotate: Callable[[str], None] = lambda _name: None,
    context: PluginContext | None = None,
) -> Received:
    """Take an authenticated event of `trigger` (see the module docstring). `actor`
    requests the rotations; `may_rotate(credential)` raises when the caller may not
    rotate that one (a token without `entra:rotate`), before anything is recorded.
    Raises EventInvalid for a body the trigger does not take, NotFound for a credential
    or owner the estate does not have, RateLimited, and PolicyRefused (with every
    reason) when no rotation could start."""
    asked = read_event(trigger, body, headers)
    if isinstance(asked, EventIgnored):
        return Received(trigger.name, asked.event_id, ignored=asked.why)
    names = _credentials(store, asked)
    for name in names:
        may_rotate(name)
    first = _take(store, trigger, asked.event_id, now)
    if first is not None:
        return first
    event = EventRef(trigger.name, asked.event_id)
    how = Trigger.BREAK_GLASS if trigger.break_glass else Trigger.EVENT
    started: list[Started] = []
    refused: dict[str, list[str]] = {}
    for name in names:
        try:
            rotation_id = rotations.request(
                store,
                name,
                actor=actor,
                reason=asked.reason,
                trigger=how,
                event=event,
                context=context,
            )
        except PolicyRefused as exc:
            refused[name] = list(exc.reasons)
        except RotationInProgress as exc:
            refused[name] = [str(exc)]
        else:
            started.append(Started(name, rotation_id))
    outcome = STARTED if started else REFUSED
    with store.transaction() as s:
        row = _event_row(s, trigger.name, asked.event_id)
        row.outcome = outcome
        row.rotations = [
            {"credential": r.credential, "rotation_id": r.rotation_id} for r in started
        ]
        store.audit(
            s,
            actor=actor,
            action="event.received",
            subject=f"trigger:{trigger.name}",
            details={
                **event.to_json(),
                "kind": trigger.kind.value,
                "outcome": outcome,
                "rotations": row.rotations,
                "refused": refused,
            },
        )
    if not started:
        what = names[0] if len(names) == 1 else f"the credentials of owner {asked.owner}"
        raise PolicyRefused(what, [r for reasons in refused.values() for r in reasons])
    return Received(trigger.name, asked.event_id, rotations=started, refused=refused)


def _credentials(store: Store, asked: EventAsk) -> list[str]:
    """The credentials the event names, each in the estate; NotFound otherwise."""
    with store.transaction() as s:
        live = select(CredentialRow.name).where(CredentialRow.removed_at.is_(None))
        if asked.owner is not None:
            names = list(
                s.execute(
                    live.where(CredentialRow.owner == asked.owner).order_by(CredentialRow.name)
                ).scalars()
            )
            if not names:
                raise NotFound(f"no credential of owner {asked.owner} in the estate")
            return names
        known = set(s.execute(live.where(CredentialRow.name.in_(asked.credentials))).scalars())
    missing = [n for n in asked.credentials if n not in known]
    if missing:
        raise NotFound(f"no credential named {', '.join(missing)} in the estate")
    return list(asked.credentials)


def _event_row(s: Session, trigger: str, event_id: str) -> TriggerEventRow:
    return s.execute(
        select(TriggerEventRow).where(
            TriggerEventRow.trigger == trigger, TriggerEventRow.event_id == event_id
        )
    ).scalar_one()


def _take(store: Store, trigger: TriggerSpec, event_id: str, now: datetime) -> Received | None:
    """Record the event as being taken and return None; or, for an event id already
    taken, the first delivery's answer. RateLimited past the trigger's limit."""
    try:
        with store.transaction() as s:
            seen = s.execute(
                select(TriggerEventRow).where(
                    TriggerEventRow.trigger == trigger.name, TriggerEventRow.event_id == event_id
                )
            ).scalar_one_or_none()
            if seen is not None and seen.outcome != REFUSED:
                return _duplicate(trigger.name, seen)
            limit = trigger.rate_limit
            since = now - limit.per
            counted, oldest = s.execute(
                select(func.count(), func.min(TriggerEventRow.received_at)).where(
                    TriggerEventRow.trigger == trigger.name,
                    TriggerEventRow.received_at > since,
                    TriggerEventRow.event_id != event_id,
                )
            ).one()
            if counted >= limit.events:
                wait = math.ceil(((oldest or now) + limit.per - now).total_seconds())
                raise RateLimited(
                    f"trigger {trigger.name} took {counted} events in the last "
                    f"{int(limit.per.total_seconds())}s (its rate_limit); retry later",
                    retry_after=max(1, wait),
                )
            if seen is None:
                s.add(
                    TriggerEventRow(
                        trigger=trigger.name,
                        event_id=event_id,
                        received_at=now,
                        outcome=PENDING,
                        rotations=[],
                    )
                )
            else:
                # Refused before (a freeze, say): this delivery may start it now.
                seen.outcome, seen.received_at, seen.rotations = PENDING, now, []
    except IntegrityError:
        # Another delivery of the same event won the race: answer as it did.
        with store.transaction() as s:
            return _duplicate(trigger.name, _event_row(s, trigger.name, event_id))
    return None


def _duplicate(trigger: str, row: TriggerEventRow) -> Received:
    return Received(
        trigger,
        row.event_id,
        duplicate=True,
        rotations=[Started(r["credential"], r["rotation_id"]) for r in row.rotations],
    )
