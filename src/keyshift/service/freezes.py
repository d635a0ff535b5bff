"""Freezing and unfreezing rotations (`keyshift freeze`, `unfreeze`, `freezes`; the API's
`/v1/freezes`). While a freeze holds, no rotation of a credential it covers starts: not
from the worker, the CLI, the API or the dashboard; governance names the freeze in its
refusal, and `status` shows `frozen` as the next rotation; a rotation under way stops
at its next state and waits (`Engine.run`). Each freeze and each lift is
audited; freezes are stored, so they hold across restarts."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select

from keyshift.domain.clock import utcnow
from keyshift.domain.freeze import Freeze, FreezeScope
from keyshift.engine import freezes as held
from keyshift.errors import ConfigError, Conflict, NotFound
from keyshift.service import lookups
from keyshift.store.models import FreezeRow
from keyshift.store.store import Store


def freeze(
    store: Store,
    *,
    scope: FreezeScope,
    value: str | None,
    reason: str,
    until: datetime | None,
    actor: str,
    now: datetime | None = None,
) -> Freeze:
    """Start a freeze; audited `freeze.started`. Refused, changing nothing: ConfigError
    without a reason, without a value for a scope that needs one (or with one for
    `all`), with `until` not in the future, or for a credential not in the estate."""
    now = now or utcnow()
    why = reason.strip()
    if not why:
        raise ConfigError("reason", "is required: say why rotations are frozen")
    if len(why) > 500:
        raise ConfigError("reason", "must be at most 500 characters")
    if scope == FreezeScope.ALL and value is not None:
        raise ConfigError("value", "a freeze of all credentials names no credential")
    if scope != FreezeScope.ALL and not (value and value.strip()):
        raise ConfigError(scope.value, f"name the {scope.value} to freeze")
    if until is not None and until <= now:
        raise ConfigError("until", "must be in the future")
    with store.transaction() as s:
        if scope == FreezeScope.CREDENTIAL and value is not None:
            lookups.estate_credential(s, value)  # NotFound for a credential not in the estate
        row = FreezeRow(
            id=secrets.token_hex(8),
            scope=scope.value,
            value=value.strip() if value else None,
            reason=why,
            until=until,
            created_by=actor,
            created_at=now,
            lifted_at=None,
            lifted_by=None,
        )
        s.add(row)
        store.audit(
            s,
            actor=actor,
            action="freeze.started",
            subject=f"freeze:{row.id}",
            details={
                "scope": row.scope,
                "value": row.value,
                "reason": why,
                "until": until.isoformat() if until else None,
            },
        )
        return held.of_row(row)


def unfreeze(store: Store, freeze_id: str, *, actor: str, now: datetime | None = None) -> Freeze:
    """Lift a freeze now; audited `freeze.lifted`. NotFound for an unknown id, Conflict
    for one already lifted or past its `until`."""
    now = now or utcnow()
    with store.transaction() as s:
        row = s.get(FreezeRow, freeze_id)
        if row is None:
            raise NotFound(f"no freeze {freeze_id}; `keyshift freezes` lists them")
        if row.lifted_at is not None:
            raise Conflict(f"freeze {freeze_id} was lifted by {row.lifted_by} already")
        if row.until is not None and row.until <= now:
            raise Conflict(f"freeze {freeze_id} ended by itself at {row.until:%Y-%m-%d %H:%M}Z")
        row.lifted_at, row.lifted_by = now, actor
        store.audit(
            s,
            actor=actor,
            action="freeze.lifted",
            subject=f"freeze:{row.id}",
            details={"scope": row.scope, "value": row.value},
        )
        return held.of_row(row)


def holding(store: Store, *, now: datetime | None = None) -> list[Freeze]:
    """The freezes holding now, oldest first."""
    with store.transaction() as s:
        return held.holding(s, now or utcnow())


def history(store: Store) -> list[tuple[Freeze, datetime | None, str | None]]:
    """Every freeze ever started, newest first, with when and by whom it was lifted."""
    with store.transaction() as s:
        rows = s.execute(select(FreezeRow).order_by(FreezeRow.created_at.desc())).scalars()
        return [(held.of_row(r), r.lifted_at, r.lifted_by) for r in rows]
