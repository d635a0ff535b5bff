"""The journal: one row per attempt of a step, written before its side effect and closed
after it, and the events the engine emits as steps begin and end.

The statements are plain Core statements, built once: they run on the path of every
step, inside the engine's transactions (so that closing a step, auditing it and moving
the rotation on stay one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from keyshift.domain.states import RotationState, StepStatus
from keyshift.store.models import RotationRow, StepRow

__all__ = [
    "INTERRUPTED",
    "OpenStep",
    "StepEvent",
    "attempts_of",
    "close_step",
    "open_step",
    "set_state",
    "steps_of",
]

INTERRUPTED = "interrupted: the worker stopped during this step"
"""The error of an attempt left `running` by a worker that stopped."""

_STEP_TABLE = cast(Table, StepRow.__table__)
_ROTATION_TABLE = cast(Table, RotationRow.__table__)
_steps = _STEP_TABLE.c
_rotations = _ROTATION_TABLE.c
_INSERT_STEP = insert(_STEP_TABLE).returning(_steps.id)
_MARK_INTERRUPTED = (
    update(_STEP_TABLE)
    .where(
        _steps.rotation_id == bindparam("b_rotation"),
        _steps.name == bindparam("b_name"),
        _steps.status == StepStatus.RUNNING.value,
    )
    .values(status=StepStatus.FAILED.value, error=INTERRUPTED, ended_at=bindparam("b_now"))
)
_END_STEP = (
    update(_STEP_TABLE)
    .where(_steps.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        ended_at=bindparam("b_now"),
        detail=bindparam("b_detail"),
        error=bindparam("b_error"),
    )
)
_SET_STATE = (
    update(_ROTATION_TABLE)
    .where(_rotations.id == bindparam("b_rotation"))
    .values(state=bindparam("b_state"), updated_at=bindparam("b_now"))
)


@dataclass(frozen=True)
class StepEvent:
    """Progress report for a terminal or API: a step started or ended."""

    rotation_id: str
    step: str
    status: StepStatus
    duration_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class OpenStep:
    """A journaled step that has begun and not yet ended."""

    id: int
    name: str
    attempt: int
    started_at: datetime
    started: float
    """`time.monotonic()` when it began, for its duration."""


def open_step(
    conn: Connection,
    rotation_id: str,
    *,
    seq: int,
    name: str,
    attempt: int,
    now: datetime,
    after_interruption: bool,
) -> int:
    """Write the attempt as running; returns its row id. After an interruption the
    earlier attempt, left running, is closed as interrupted first."""
    if after_interruption:
        conn.execute(_MARK_INTERRUPTED, {"b_rotation": rotation_id, "b_name": name, "b_now": now})
    step_id: int = conn.execute(
        _INSERT_STEP,
        {
            "rotation_id": rotation_id,
            "seq": seq,
            "name": name,
            "status": StepStatus.RUNNING.value,
            "attempt": attempt,
            "started_at": now,
            "detail": {},
        },
    ).scalar_one()
    return step_id


def close_step(
    conn: Connection,
    step_id: int,
    *,
    status: StepStatus,
    now: datetime,
    detail: dict[str, Any],
    error: str | None,
) -> None:
    conn.execute(
        _END_STEP,
        {
            "b_id": step_id,
            "b_status": status.value,
            "b_now": now,
            "b_detail": detail,
            "b_error": error,
        },
    )


def set_state(conn: Connection, rotation_id: str, state: RotationState, now: datetime) -> None:
    """Move a rotation to an intermediate state (one prebuilt statement)."""
    conn.execute(_SET_STATE, {"b_rotation": rotation_id, "b_state": state.value, "b_now": now})


def attempts_of(s: Session, rotation_id: str) -> list[tuple[str, int, str]]:
    """(step name, attempt, status) of every journaled attempt of the rotation."""
    rows = s.execute(
        select(StepRow.name, StepRow.attempt, StepRow.status).where(
            StepRow.rotation_id == rotation_id
        )
    ).all()
    return [(name, attempt, status) for name, attempt, status in rows]


def steps_of(s: Session, rotation_id: str) -> list[StepRow]:
    """Every journaled attempt of the rotation, in order."""
    return list(
        s.execute(
            select(StepRow).where(StepRow.rotation_id == rotation_id).order_by(StepRow.seq)
        ).scalars()
    )
