"""The overview of an estate: how many credentials there are, how many expire soon, how
many need a human, and the most urgent ones, across the managed credentials and the
discovered Entra ID inventory. The web dashboard's first page and `GET /v1/overview`.

Every managed credential counts once. A discovered Entra ID secret or certificate counts
too unless an estate credential manages its application: that one is already counted
as the managed credential, and its secrets are its versions.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import select

from keyshift.domain.states import FINAL_STATES, Lifecycle
from keyshift.service import approvals, due, entra, rotations
from keyshift.store.models import CredentialRow, RotationRow
from keyshift.store.store import Store

WITHIN_DAYS = (7, 30, 90)
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
    discovered inventory out (for a caller who may not read it)."""
    found = entra.inventory(store, now=now, unmanaged_only=True) if include_entra else []
    # (end, name, item): only the URGENT soonest become `Urgent`, not one per credential.
    # Of a managed credential only its lifecycle is decided (not its next rotation, nor
    # a whole status row): the overview reads every credential of the estate.
    ends: list[tuple[datetime, str, Any]] = []
    lifecycles: Counter[Lifecycle] = Counter(c.state for c in found)
    managed = 0
    with store.transaction() as s:
        for cred in due.standings(s):
            managed += 1
            state = rotations.lifecycle_of(cred, now=now)
            lifecycles[state] += 1
            if cred.current is not None and cred.current.expires_at is not None:
                ends.append((cred.current.expires_at, cred.name, _Managed(state, cred.owner)))
    ends += [(c.end, _entra_name(c), c) for c in found if c.end is not None]
    by_end = sorted(end for end, _n, _i in ends)
    expired = bisect_right(by_end, now)
    return Overview(
        total=managed + len(found),
        managed=managed,
        discovered=len(found),
        within={
            days: bisect_right(by_end, now + timedelta(days=days)) - expired for days in WITHIN_DAYS
        },
        expired=expired,
        in_grace=lifecycles[Lifecycle.GRACE_PERIOD],
        rotating=lifecycles[Lifecycle.ROTATING],
        needs_attention=lifecycles[Lifecycle.NEEDS_ATTENTION],
        awaiting_approval=len(approvals.requests(store, pending_only=True)),
        urgent=[
            _urgent(name, end, item, now)
            for end, name, item in heapq.nsmallest(URGENT, ends, key=lambda e: (e[0], e[1]))
        ],
    )


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
