"""Freezing and unfreezing rotations (`keyshift freeze`, `unfreeze`, `freezes`; the API's
`/v1/freezes`). While a freeze holds, no rotation of a credential it covers starts: not
from the worker, the CLI, the API or the dashboard; governance names the freeze in its
refusal, and `status` shows `frozen` as the next rotation; a rotation under way stops
at its next state and waits (`Engine.run`). Each freeze and each lift is
audited; freezes are stored, so they hold across restarts.

The estate file may declare freezes too (`freeze:`): `apply` starts, changes and lifts
those (`estate_diff`, `apply_declared`), and only those; an operator's freezes are not
touched by `apply`, and an estate freeze is not lifted by `unfreeze`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from keyshift.domain.clock import utcnow
from keyshift.domain.estate import FreezeSpec
from keyshift.domain.freeze import Freeze, FreezeScope, FreezeSource
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
    source: FreezeSource = FreezeSource.CLI,
    now: datetime | None = None,
) -> Freeze:
    """Start a freeze (`source`: cli or api); audited `freeze.started`. Refused, changing
    nothing: ConfigError without a reason, without a value for a scope that needs one
    (or with one for `all`), with `until` not in the future, or for a credential not in
    the estate."""
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
        row = _start(
            store,
            s,
            scope=scope,
            value=value.strip() if value else None,
            reason=why,
            until=until,
            actor=actor,
            source=source,
            now=now,
        )
        return held.of_row(row)


def _start(
    store: Store,
    s: Session,
    *,
    scope: FreezeScope,
    value: str | None,
    reason: str,
    until: datetime | None,
    actor: str,
    source: FreezeSource,
    now: datetime,
) -> FreezeRow:
    row = FreezeRow(
        id=secrets.token_hex(8),
        scope=scope.value,
        value=value,
        reason=reason,
        until=until,
        created_by=actor,
        created_at=now,
        lifted_at=None,
        lifted_by=None,
        source=source.value,
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
            "reason": reason,
            "until": until.isoformat() if until else None,
            "source": source.value,
        },
    )
    return row


def _lift(store: Store, s: Session, row: FreezeRow, *, actor: str, now: datetime) -> None:
    row.lifted_at, row.lifted_by = now, actor
    store.audit(
        s,
        actor=actor,
        action="freeze.lifted",
        subject=f"freeze:{row.id}",
        details={"scope": row.scope, "value": row.value, "source": row.source},
    )


def unfreeze(store: Store, freeze_id: str, *, actor: str, now: datetime | None = None) -> Freeze:
    """Lift a freeze now; audited `freeze.lifted`. NotFound for an unknown id, Conflict
    for one already lifted or past its `until`, or declared in the estate (the file is
    where it is lifted: the next `apply` would start it again)."""
    now = now or utcnow()
    with store.transaction() as s:
        row = s.get(FreezeRow, freeze_id)
        if row is None:
            raise NotFound(f"no freeze {freeze_id}; `keyshift freezes` lists them")
        if row.lifted_at is not None:
            raise Conflict(f"freeze {freeze_id} was lifted by {row.lifted_by} already")
        if row.until is not None and row.until <= now:
            raise Conflict(f"freeze {freeze_id} ended by itself at {row.until:%Y-%m-%d %H:%M}Z")
        if row.source == FreezeSource.ESTATE:
            raise Conflict(
                f"freeze {freeze_id} is declared in the estate file (freeze:); remove it "
                "there and apply the file to lift it"
            )
        _lift(store, s, row, actor=actor, now=now)
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


# Freezes declared in the estate (`freeze:`) ----------------------------------------------


@dataclass(frozen=True)
class EstateFreezes:
    """What `apply` does to the estate's freezes: the declared ones to start, the stored
    ones whose reason or end the file changed, and the stored ones it no longer declares.
    A declared freeze is the stored estate freeze holding with the same scope and value."""

    start: list[FreezeSpec] = field(default_factory=list)
    change: list[tuple[FreezeRow, FreezeSpec]] = field(default_factory=list)
    lift: list[FreezeRow] = field(default_factory=list)


def what(scope: str, value: str | None) -> str:
    """How plans name a freeze's scope: `all credentials`, `environment prod`."""
    return "all credentials" if scope == FreezeScope.ALL else f"{scope} {value}"


def estate_diff(s: Session, declared: list[FreezeSpec], now: datetime) -> EstateFreezes:
    """Compare the estate's `freeze:` block with the estate freezes holding now. A
    declared freeze whose `until` has passed is not started (and one holding is lifted)."""
    rows = s.execute(
        select(FreezeRow)
        .where(
            FreezeRow.source == FreezeSource.ESTATE.value,
            FreezeRow.lifted_at.is_(None),
            or_(FreezeRow.until.is_(None), FreezeRow.until > now),
        )
        .order_by(FreezeRow.created_at, FreezeRow.id)
    ).scalars()
    stored = {(r.scope, r.value): r for r in rows}
    wanted = {(f.scope.value, f.value): f for f in declared if f.until is None or f.until > now}
    diff = EstateFreezes()
    for key, spec in wanted.items():
        row = stored.get(key)
        if row is None:
            diff.start.append(spec)
        elif (row.reason, row.until) != (spec.reason, spec.until):
            diff.change.append((row, spec))
    diff.lift.extend(row for key, row in stored.items() if key not in wanted)
    return diff


def apply_declared(
    store: Store, s: Session, diff: EstateFreezes, *, actor: str, now: datetime
) -> None:
    """Carry out `diff` in the apply's transaction: audited `freeze.started`,
    `freeze.changed` and `freeze.lifted`, each with `source: estate`."""
    for spec in diff.start:
        _start(
            store,
            s,
            scope=spec.scope,
            value=spec.value,
            reason=spec.reason,
            until=spec.until,
            actor=actor,
            source=FreezeSource.ESTATE,
            now=now,
        )
    for row, spec in diff.change:
        before = {"reason": row.reason, "until": row.until.isoformat() if row.until else None}
        row.reason, row.until = spec.reason, spec.until
        store.audit(
            s,
            actor=actor,
            action="freeze.changed",
            subject=f"freeze:{row.id}",
            details={
                "scope": row.scope,
                "value": row.value,
                "source": row.source,
                "before": before,
                "reason": spec.reason,
                "until": spec.until.isoformat() if spec.until else None,
            },
        )
    for row in diff.lift:
        _lift(store, s, row, actor=actor, now=now)
