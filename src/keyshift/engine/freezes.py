"""The freezes holding now, read from the store: governance refuses a rotation of any
credential one covers (`Requests.request`), and the worker and status skip them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Exists, bindparam, exists, or_, select
from sqlalchemy.orm import Session

from keyshift.domain.freeze import Freeze, FreezeScope, FreezeSource
from keyshift.store.models import FreezeRow


def of_row(row: FreezeRow) -> Freeze:
    return Freeze(
        id=row.id,
        scope=FreezeScope(row.scope),
        value=row.value,
        reason=row.reason,
        until=row.until,
        created_by=row.created_by,
        created_at=row.created_at,
        source=FreezeSource(row.source),
    )


def _holding_at(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    return FreezeRow.lifted_at.is_(None) & or_(FreezeRow.until.is_(None), FreezeRow.until > now)


ANY_HOLDING: Exists = exists().where(_holding_at(bindparam("now", type_=FreezeRow.until.type)))
"""Whether any freeze holds at the bound `now`: a column another statement may carry, so
that a check which finds none (the usual case) costs no statement of its own."""


def holding(s: Session, now: datetime) -> list[Freeze]:
    """Every freeze not lifted whose `until` has not passed, oldest first."""
    rows = s.execute(
        select(FreezeRow).where(_holding_at(now)).order_by(FreezeRow.created_at, FreezeRow.id)
    ).scalars()
    return [of_row(r) for r in rows]


def covering(
    freezes: list[Freeze], name: str, owner: str | None, environment: str | None
) -> list[Freeze]:
    """The freezes of `freezes` that cover this credential."""
    return [f for f in freezes if f.covers(name, owner, environment)]


def refusals(
    freezes: list[Freeze], name: str, owner: str | None, environment: str | None
) -> list[str]:
    """Why each freeze covering this credential refuses rotating it now."""
    return [f.refusal() for f in freezes if f.covers(name, owner, environment)]
