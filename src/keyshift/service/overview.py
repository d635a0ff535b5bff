"""The overview of an estate: how many credentials there are, how many expire soon, how
many need a human, and the most urgent ones, across the managed credentials and the
discovered Entra ID inventory. The web dashboard's first page and `GET /v1/overview`.

Every managed credential counts once. A discovered Entra ID secret or certificate counts
too unless an estate credential rotates it (its application's client secrets, or its
certificates): that one is already counted as the managed credential, whose versions
those are.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from keyshift.domain.states import FINAL_STATES, Lifecycle, VersionStatus
from keyshift.service import approvals, due, entra, rotations
from keyshift.store.models import CredentialRow, RotationRow, VersionRow
from keyshift.store.store import Store

WITHIN_DAYS = entra.WITHIN_DAYS
URGENT = 10
"""How many of the soonest-expiring credentials the overview lists."""


@dataclass(frozen=True)
class Urgent:
    """One of the soonest-expiring credentials."""

    name: str
    source: str
    """`managed` (an estate credential) or `entra` (discovered, not managed)."""
    lifecycle: str
    expires_at: datetime
    days_left: int
    owner: str | None


@dataclass(frozen=True)
class Overview:
    total: int
    managed: int
    discovered: int
    """Discovered Entra ID credentials of applications no estate credential manages."""
    within: dict[int, int]
    """Days (7, 30, 90) -> credentials expiring within them, not yet expired."""
    expired: int
    in_grace: int
    rotating: int
    needs_attention: int
    awaiting_approval: int
    urgent: list[Urgent]


def overview(store: Store, *, now: datetime, include_entra: bool = True) -> Overview:
    """The counts and the most urgent credentials now. `include_entra=False` leaves the
    discovered inventory out (for a caller who may not read it). Counted in SQL: a fixed
    number of queries, none reading every credential, however large the estate is."""
    now = now.astimezone(UTC)
    with store.transaction() as s:
        managed, ended, within = _expiries(s, now)
        held = rotations.held_counts(s)
        urgent: list[tuple[datetime, str, Any]] = list(_soonest_managed(s, now))
        discovered = 0
        if include_entra:
            # Those an estate credential rotates are its versions: counted as that
            # credential, not again here.
            every, mine = entra.tally(s, now=now)
            discovered = every.total - mine.total
            ended += every.ended - mine.ended
            for days in WITHIN_DAYS:
                within[days] += every.within[days] - mine.within[days]
            urgent += [
                (c.end, _entra_name(c), c)
                for c in entra.soonest(s, now=now, limit=URGENT, unmanaged_only=True)
                if c.end is not None
            ]
    return Overview(
        total=managed + discovered,
        managed=managed,
        discovered=discovered,
        within=within,
        expired=ended,
        in_grace=held[Lifecycle.GRACE_PERIOD],
        rotating=held[Lifecycle.ROTATING],
        needs_attention=held[Lifecycle.NEEDS_ATTENTION],
        awaiting_approval=len(approvals.requests(store, pending_only=True)),
        urgent=[
            _urgent(name, end, item, now)
            for end, name, item in heapq.nsmallest(URGENT, urgent, key=lambda e: (e[0], e[1]))
        ],
    )


_LIVE = CredentialRow.removed_at.is_(None)
_CURRENT = (
    VersionRow.status == VersionStatus.CURRENT.value,
    VersionRow.credential_id == CredentialRow.id,
)


def _expiries(s: Session, now: datetime) -> tuple[int, int, dict[int, int]]:
    """The managed credentials (not removed); those whose current version has expired;
    and, per horizon, those whose current version expires within it, not yet expired."""
    (managed,) = s.execute(select(func.count()).where(_LIVE)).one()
    counts = entra.expiry_counts(VersionRow.expires_at, now)
    ended, *within = s.execute(select(*counts).where(_LIVE, *_CURRENT)).one()
    return managed, ended, dict(zip(WITHIN_DAYS, within, strict=True))


def _soonest_managed(s: Session, now: datetime) -> list[tuple[datetime, str, _Managed]]:
    """(expiry, name, lifecycle and owner) of the URGENT managed credentials whose
    current version expires soonest (by the index on the expiry, then a status read of
    those alone)."""
    soonest = s.execute(
        select(CredentialRow.name, VersionRow.expires_at)
        .where(_LIVE, *_CURRENT, VersionRow.expires_at.is_not(None))
        .order_by(VersionRow.expires_at, CredentialRow.name)
        .limit(URGENT)
    ).all()
    states = {
        cred.name: _Managed(rotations.lifecycle_of(cred, now=now), cred.owner)
        for cred in due.standings(
            s, CredentialRow.name.in_([name for name, _end in soonest]), limit=URGENT
        )
    }
    return [(end, name, states[name]) for name, end in soonest if end is not None]


class _Managed(NamedTuple):
    lifecycle: Lifecycle
    owner: str | None


def _entra_name(c: entra.EntraCredential) -> str:
    return f"{c.app_name} / {c.display_name or c.key_id[:8]}"


def _urgent(name: str, end: datetime, item: Any, now: datetime) -> Urgent:
    if isinstance(item, _Managed):
        return Urgent(name, "managed", item.lifecycle.value, end, _days(end, now), item.owner)
    return Urgent(
        name,
        "entra",
        item.state.value,
        end,
        _days(end, now),
        ", ".join(item.owners) or None,
    )


def _days(end: datetime, now: datetime) -> int:
    return int((end - now).total_seconds() // 86400)


@dataclass(frozen=True)
class RecentRotation:
    id: str
    credential: str
    state: str
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    reason: str
    error: str | None

    @property
    def final(self) -> bool:
        return self.state in _FINAL


_FINAL = {s.value for s in FINAL_STATES}


def recent_rotations(
    store: Store, *, limit: int = 50, unfinished: bool = False
) -> list[RecentRotation]:
    """The latest rotations of the whole estate, newest first (only the unfinished ones
    with `unfinished=True`)."""
    # Columns, not ORM rows: a rotation's row also holds its whole plan.
    query = (
        select(
            RotationRow.id,
            CredentialRow.name,
            RotationRow.state,
            RotationRow.requested_by,
            RotationRow.requested_at,
            RotationRow.finished_at,
            RotationRow.reason,
            RotationRow.error,
        )
        .join(CredentialRow, CredentialRow.id == RotationRow.credential_id)
        .order_by(RotationRow.requested_at.desc())
        .limit(limit)
    )
    if unfinished:
        query = query.where(RotationRow.state.not_in(_FINAL))
    with store.transaction() as s:
        return [RecentRotation(*row) for row in s.execute(query)]
