"""Leases: one worker runs a rotation at a time.

A worker claims a rotation by writing itself (`host/pid/random`) and an expiry into the
rotation's row, renews the lease while it works (at the latest once half of it is used,
and from a heartbeat during a long step), and releases it when it stops. A lease whose
holder died (same host, process gone) or expired is taken over.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.orm import Session

from keyshift.errors import LeaseHeld, NotFound
from keyshift.store.models import RotationRow
from keyshift.store.store import Store

__all__ = ["Leases", "holder_alive"]

_ROTATION_TABLE = cast(Table, RotationRow.__table__)
_rotations = _ROTATION_TABLE.c
_RENEW_LEASE = (
    update(_ROTATION_TABLE)
    .where(_rotations.id == bindparam("b_rotation"), _rotations.lease_owner == bindparam("b_owner"))
    .values(lease_expires_at=bindparam("b_until"))
)


class Leases:
    """The leases one engine (one worker) takes, keeps and gives back."""

    def __init__(self, store: Store, ttl: timedelta, now: Callable[[], datetime]) -> None:
        self.store = store
        self.ttl = ttl
        self.now = now
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    def take(self, s: Session, rotation_id: str) -> tuple[RotationRow, datetime]:
        """Lock the rotation's row and make this worker its lease holder; returns the row
        and the lease's expiry. LeaseHeld when a live worker holds an unexpired lease."""
        now = self.now()
        rot = s.execute(
            select(RotationRow).where(RotationRow.id == rotation_id).with_for_update()
        ).scalar_one_or_none()
        if rot is None:
            raise NotFound(f"no rotation {rotation_id}")
        if (
            rot.lease_owner
            and rot.lease_owner != self.owner
            and rot.lease_expires_at is not None
            and rot.lease_expires_at > now
            and holder_alive(rot.lease_owner)
        ):
            raise LeaseHeld(f"rotation {rotation_id} is being run by {rot.lease_owner}")
        rot.lease_owner = self.owner
        rot.lease_expires_at = until = now + self.ttl
        return rot, until

    def renew(
        self,
        conn: Connection,
        rotation_id: str,
        until: datetime,
        now: datetime,
        *,
        force: bool = False,
    ) -> datetime:
        """Extend the lease once half of it is used; returns its (new) expiry. While more
        than half remains nobody can have taken it over (takeover needs expiry), so
        skipping the write is safe."""
        if not force and until - now > self.ttl / 2:
            return until
        until = now + self.ttl
        renewed = conn.execute(
            _RENEW_LEASE, {"b_rotation": rotation_id, "b_owner": self.owner, "b_until": until}
        )
        if renewed.rowcount != 1:
            raise LeaseHeld(f"rotation {rotation_id} was taken over by another worker")
        return until

    async def heartbeat(self, rotation_id: str, renewed: Callable[[datetime], None]) -> None:
        """Keep the lease while a long step runs, telling `renewed` each new expiry; runs
        until cancelled."""
        while True:
            await asyncio.sleep(self.ttl.total_seconds() / 3)
            now = self.now()
            with self.store.transaction() as s:
                renewed(self.renew(s.connection(), rotation_id, now, now, force=True))

    def release(self, rotation_id: str) -> None:
        with self.store.transaction() as s:
            rot = s.get(RotationRow, rotation_id)
            if rot is not None and rot.lease_owner == self.owner:
                rot.lease_owner = None
                rot.lease_expires_at = None


def holder_alive(owner: str) -> bool:
    """A lease holder on this host is alive while its process exists; elsewhere, until expiry."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
