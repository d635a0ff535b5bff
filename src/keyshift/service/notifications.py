"""Telling operators: route the outbox's events to channels and deliver them.

The engine writes each event (`notifications` rows) in the transaction of the change
that causes it (`engine.outbox`). Here, run by the worker's scan and by the server:

1. **Route.** Each new event gets one delivery per channel the estate's `notifications`
   choose for it (routes by kind, environment and owner; the owner's channels; for an
   approval request, the approver groups' channels). An event no route chooses is kept,
   listed, and sent nowhere.
2. **Deliver.** Each due delivery is claimed (a conditional update, so two workers never
   send the same one at once) and sent once. A channel that is down only delays its own
   deliveries: a failed attempt waits `backoff`, doubling, at least the server's
   Retry-After, at most `max_backoff`; after `max_attempts` (or an answer that retrying
   cannot change) the delivery is dead-lettered and listed by `keyshift notifications`.
   Every attempt of an event carries the same dedup key.

Nothing here ever holds a rotation up: delivery runs after the change committed, and
its failures are recorded, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from keyshift.errors import ConfigError, EstateInvalid, KeyshiftError, NotFound, TransientError
from keyshift.notify import CHANNELS
from keyshift.store.models import NotificationDeliveryRow, NotificationRow
from keyshift.store.store import Store

# A channel's module, its HTTP client, the plugin machinery and the estate's models are
# imported when events are routed or a channel is built: reading a rotation's tickets
# (`keyshift status`, `show`) needs none of them.
if TYPE_CHECKING:
    from keyshift.context import PluginContext
    from keyshift.domain.estate import Estate
    from keyshift.domain.notifications import Notifications
    from keyshift.notify import Channel, Sent

__all__ = [
    "DEAD",
    "DELIVERED",
    "PENDING",
    "Delivery",
    "Ticket",
    "dispatch",
    "listing",
    "send_test",
    "tickets",
]

log = structlog.get_logger("keyshift.notifications")

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
UNROUTED = "no channel"

CLAIM_FOR = timedelta(minutes=5)
"""How long a claimed delivery is left alone by other workers while it is being sent."""


def build_channel(notifications: Notifications, name: str, context: PluginContext) -> Channel:
    """The declared channel `name`, its settings validated (EstateInvalid names the field)."""
    spec = notifications.channel(name)
    if spec is None:
        raise NotFound(f"channel {name} is not declared under notifications.channels")
    index = notifications.channels.index(spec)
    path = f"notifications.channels[{index}]"
    cls = CHANNELS.get(spec.type)
    if cls is None:
        known = ", ".join(sorted(CHANNELS))
        raise EstateInvalid(
            [ConfigError(f"{path}.type", f"unknown channel type '{spec.type}'; known: {known}")]
        )
    from keyshift.engine.plugins import validate_config  # noqa: PLC0415 (see the imports)

    channel: Channel = cls(validate_config(cls, spec.settings(), path), context)
    return channel


def channel_problems(notifications: Notifications) -> list[ConfigError]:
    """Every bad channel setting, for `plan`/`apply` (no channel is contacted)."""
    from keyshift.context import PluginContext  # noqa: PLC0415 (see the imports)

    problems: list[ConfigError] = []
    for spec in notifications.channels:
        try:
            build_channel(notifications, spec.name, PluginContext())
        except EstateInvalid as exc:
            problems.extend(exc.problems)
    return problems


def route(store: Store, notifications: Notifications, *, now: datetime) -> int:
    """Create the deliveries of every event not routed yet; how many were created."""
    from keyshift.domain.notifications import channels_for  # noqa: PLC0415 (see the imports)

    created = 0
    with store.transaction() as s:
        new = s.execute(
            select(NotificationRow)
            .where(NotificationRow.routed.is_(False))
            .order_by(NotificationRow.id)
        ).scalars()
        for event in new:
            payload = event.payload
            for channel in channels_for(
                notifications,
                event.kind,
                environment=payload.get("environment"),
                owner=payload.get("owner"),
                approvers=payload.get("approvers") or [],
            ):
                s.add(
                    NotificationDeliveryRow(
                        notification_id=event.id,
                        channel=channel,
                        status=PENDING,
                        attempts=0,
                        next_attempt_at=now,
                    )
                )
                created += 1
            event.routed = True
    return created


def _wait(notifications: Notifications, attempts: int, retry_after: float | None) -> timedelta:
    backoff: timedelta = notifications.backoff * 2 ** max(0, attempts - 1)
    asked = timedelta(seconds=retry_after or 0)
    longest: timedelta = notifications.max_backoff
    return min(max(backoff, asked), longest)


def _claim(s: Session, delivery_id: int, seen: datetime, now: datetime) -> bool:
    claimed: CursorResult[Any] = s.execute(  # type: ignore[assignment]
        update(NotificationDeliveryRow)
        .where(
            NotificationDeliveryRow.id == delivery_id,
            NotificationDeliveryRow.status == PENDING,
            NotificationDeliveryRow.next_attempt_at == seen,
        )
        .values(next_attempt_at=now + CLAIM_FOR)
    )
    return bool(claimed.rowcount)


async def deliver(
    store: Store, notifications: Notifications, *, context: PluginContext
) -> dict[str, int]:
    """Send every due delivery once; counts of delivered, retried later and dead."""
    now = context.now()
    counts = {"delivered": 0, "retrying": 0, "dead": 0}
    with store.transaction() as s:
        due = s.execute(
            select(
                NotificationDeliveryRow.id,
                NotificationDeliveryRow.next_attempt_at,
                NotificationDeliveryRow.channel,
                NotificationRow.dedup_key,
                NotificationRow.payload,
                NotificationRow.rotation_id,
            )
            .join(NotificationRow, NotificationRow.id == NotificationDeliveryRow.notification_id)
            .where(
                NotificationDeliveryRow.status == PENDING,
                NotificationDeliveryRow.next_attempt_at <= now,
            )
            .order_by(NotificationDeliveryRow.id)
        ).all()
    channels: dict[str, Channel | KeyshiftError] = {}
    for delivery_id, seen, name, dedup_key, payload, rotation_id in due:
        with store.transaction() as s:
            earlier = _in_channel(s, name, rotation_id)
            if any(i < delivery_id and status == PENDING for i, status, _ in earlier):
                continue  # a rotation's events reach a channel in order
            if not _claim(s, delivery_id, seen, now):
                continue  # another worker has it
        # What the channel named an earlier message of the rotation (a ticket key), so
        # that this event joins it (a comment) instead of starting another.
        thread = next((ref for _, _, ref in earlier if ref is not None), None)
        if name not in channels:
            try:
                channels[name] = build_channel(notifications, name, context)
            except KeyshiftError as exc:
                channels[name] = exc
        attempt = await _attempt(name, channels[name], dict(payload), dedup_key, thread)
        outcome = _record(store, notifications, delivery_id, attempt, now=context.now())
        counts[outcome] += 1
        if attempt.error:
            log.warning(
                "notification not delivered", channel=name, outcome=outcome, error=attempt.error
            )
    return counts


@dataclass(frozen=True)
class _Attempt:
    sent: Sent | None = None
    error: str | None = None
    retry_after: float | None = None
    final: bool = False
    """Not worth trying again (a bad setting, an answer retrying cannot change)."""


def _in_channel(
    s: Session, channel: str, rotation_id: str | None
) -> list[tuple[int, str, str | None]]:
    """(id, status, reference) of every delivery of the rotation's events to `channel`,
    oldest first: what keeps them in order and threads them."""
    if rotation_id is None:
        return []
    found = s.execute(
        select(
            NotificationDeliveryRow.id,
            NotificationDeliveryRow.status,
            NotificationDeliveryRow.reference,
        )
        .join(NotificationRow, NotificationRow.id == NotificationDeliveryRow.notification_id)
        .where(
            NotificationRow.rotation_id == rotation_id,
            NotificationDeliveryRow.channel == channel,
        )
        .order_by(NotificationDeliveryRow.id)
    ).all()
    return [(i, status, reference) for i, status, reference in found]


async def _attempt(
    name: str,
    channel: Channel | KeyshiftError,
    payload: dict[str, Any],
    dedup_key: str,
    thread: str | None,
) -> _Attempt:
    if isinstance(channel, KeyshiftError):
        return _Attempt(error=f"channel {name}: {channel}", final=True)
    from keyshift.notify.base import message_of  # noqa: PLC0415 (loaded with the channel)

    message = message_of(payload)
    try:
        return _Attempt(sent=await channel.send(message, dedup_key=dedup_key, thread=thread))
    except TransientError as exc:
        return _Attempt(error=str(exc), retry_after=exc.retry_after)
    except KeyshiftError as exc:
        return _Attempt(error=str(exc), final=True)
    except Exception as exc:  # a channel's bug must not stop the others
        return _Attempt(error=f"{type(exc).__name__} in channel {name}", final=True)


def _record(
    store: Store,
    notifications: Notifications,
    delivery_id: int,
    attempt: _Attempt,
    *,
    now: datetime,
) -> str:
    with store.transaction() as s:
        row = s.get(NotificationDeliveryRow, delivery_id)
        if row is None:  # pragma: no cover - deliveries are never deleted
            return "dead"
        row.attempts += 1
        if attempt.sent is not None:
            row.status, row.delivered_at, row.last_error = DELIVERED, now, None
            row.reference = attempt.sent.reference
            return "delivered"
        row.last_error = attempt.error
        if attempt.final or row.attempts >= notifications.max_attempts:
            row.status = DEAD
            return "dead"
        row.next_attempt_at = now + _wait(notifications, row.attempts, attempt.retry_after)
        return "retrying"


async def dispatch(store: Store, estate: Estate, *, context: PluginContext) -> dict[str, int]:
    """Route new events, then deliver what is due (the worker's scan, the server's loop)."""
    routed = route(store, estate.notifications, now=context.now())
    return {"routed": routed, **await deliver(store, estate.notifications, context=context)}


@dataclass(frozen=True)
class Delivery:
    """One event and where it stands in one channel (or that no channel was chosen)."""

    event_id: int
    kind: str
    created_at: datetime
    credential: str | None
    rotation_id: str | None
    dedup_key: str
    channel: str | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None


def listing(store: Store, *, status: str | None = None, limit: int = 100) -> list[Delivery]:
    """The newest events with their deliveries, newest first; `status` keeps one of
    pending, delivered, dead or `no channel`."""
    with store.transaction() as s:
        found = s.execute(
            select(NotificationRow, NotificationDeliveryRow)
            .outerjoin(
                NotificationDeliveryRow,
                NotificationDeliveryRow.notification_id == NotificationRow.id,
            )
            .order_by(NotificationRow.id.desc(), NotificationDeliveryRow.id)
        ).all()
        out: list[Delivery] = []
        for event, delivery in found:
            state = (
                delivery.status if delivery is not None else (UNROUTED if event.routed else PENDING)
            )
            if status is not None and state != status:
                continue
            out.append(
                Delivery(
                    event.id,
                    event.kind,
                    event.created_at,
                    event.credential,
                    event.rotation_id,
                    event.dedup_key,
                    delivery.channel if delivery else None,
                    state,
                    delivery.attempts if delivery else 0,
                    delivery.next_attempt_at if delivery and state == PENDING else None,
                    delivery.delivered_at if delivery else None,
                    delivery.last_error if delivery else None,
                )
            )
            if len(out) >= limit:
                break
    return out


@dataclass(frozen=True)
class Ticket:
    """A ticket a channel opened for a rotation: the channel's name and its reference (a
    Jira issue key, a ServiceNow record's sys_id)."""

    channel: str
    reference: str


def tickets(s: Session, rotation_id: str) -> list[Ticket]:
    """The tickets of a rotation, each once, in the order they were opened: what its
    delivered deliveries were named by their channels."""
    found = s.execute(
        select(NotificationDeliveryRow.channel, NotificationDeliveryRow.reference)
        .join(NotificationRow, NotificationRow.id == NotificationDeliveryRow.notification_id)
        .where(
            NotificationRow.rotation_id == rotation_id,
            NotificationDeliveryRow.status == DELIVERED,
            NotificationDeliveryRow.reference.is_not(None),
        )
        .order_by(NotificationDeliveryRow.id)
    ).all()
    seen: dict[tuple[str, str], Ticket] = {}
    for channel, reference in found:
        if reference is not None:  # the query keeps only named deliveries
            seen.setdefault((channel, reference), Ticket(channel, reference))
    return list(seen.values())


async def send_test(estate: Estate, channel: str, *, context: PluginContext) -> Sent:
    """Send a test message to one channel now (not through the outbox); raises what the
    channel raised, e.g. TransientError naming the HTTP status."""
    from keyshift.domain import notifications as kinds  # noqa: PLC0415 (see the imports)

    target = build_channel(estate.notifications, channel, context)
    payload = {
        "event": kinds.NOTIFICATION_TEST,
        "channel": channel,
        "at": context.now().isoformat(),
    }
    dedup_key = f"test-{context.now().timestamp()}"
    from keyshift.notify.base import message_of  # noqa: PLC0415 (loaded with the channel)

    return await target.send(message_of(payload), dedup_key=dedup_key, thread=None)
