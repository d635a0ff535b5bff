"""The engine's event seam: what happened to a rotation, as one event type, told to
subscribers at two moments.

The engine emits an `EngineEvent` when a rotation is requested or changes state and when
a step begins or ends. Each subscriber may listen at either moment:

- `in_transaction(s, event)`: inside the transaction that makes the change, with its
  session. What a subscriber writes there (an audit entry, an outbox row for a
  notification) commits or rolls back together with the change itself: the evidence
  never says a step ended that did not, and no notification is queued for it.
- `after_commit(event)`: once that transaction has committed, never for one that rolled
  back. For what lives outside the store: progress on a terminal, metrics.

An event carries identifiers, states, step names, timings and scrubbed errors; never a
value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from keyshift.domain.states import RotationState, StepStatus

__all__ = ["EngineEvent", "EventBus", "EventKind", "Subscriber"]

EventKind = Literal["rotation.state", "step.started", "step.ended"]

_PENDING = "keyshift.engine.events.pending"
"""The session's `info` key of the events waiting for its commit."""


@dataclass(frozen=True)
class EngineEvent:
    """One thing that happened to a rotation."""

    kind: EventKind
    rotation_id: str
    credential: str
    at: datetime
    state: RotationState
    """The rotation's state: the one it entered, for `rotation.state`."""
    previous: RotationState | None = None
    """`rotation.state`: the state it left (None for a new request)."""
    step: str | None = None
    """`step.*`: the journal's step name, e.g. `publishing:10:file`."""
    attempt: int | None = None
    status: StepStatus | None = None
    """`step.*`: running when it began, then succeeded or failed."""
    started_at: datetime | None = None
    duration_s: float | None = None
    detail: dict[str, object] | None = None
    """`step.ended`: the step's result (identifiers and facts; values never)."""
    error: str | None = None
    """`step.ended` of a failed step: its scrubbed error."""


class Subscriber:
    """Listens to the engine's events; override either moment (both do nothing here)."""

    def in_transaction(self, s: Session, event: EngineEvent) -> None:
        """Inside the transaction that makes the change; writes commit with it."""

    def after_commit(self, event: EngineEvent) -> None:
        """After that transaction committed; not called if it rolled back."""


class EventBus:
    """Tells each subscriber, in order, of each event the engine emits."""

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self.subscribers = list(subscribers)
        # Only those that listen at a moment are told of it: an event emitted on every
        # step hooks the session's commit only when someone waits for it.
        self._during = [s for s in self.subscribers if _overrides(s, "in_transaction")]
        self._after = [s for s in self.subscribers if _overrides(s, "after_commit")]

    def emit(self, s: Session, event: EngineEvent) -> None:
        """Tell the in-transaction subscribers now, and the others once `s` commits."""
        for subscriber in self._during:
            subscriber.in_transaction(s, event)
        if not self._after:
            return
        pending: list[EngineEvent] | None = s.info.get(_PENDING)
        if pending is None:
            pending = s.info[_PENDING] = []
            sa_event.listen(s, "after_commit", self._committed, once=True)
        pending.append(event)

    def _committed(self, s: Session) -> None:
        for event in s.info.pop(_PENDING, []):
            for subscriber in self._after:
                subscriber.after_commit(event)


def _overrides(subscriber: Subscriber, moment: str) -> bool:
    return getattr(type(subscriber), moment) is not getattr(Subscriber, moment)
