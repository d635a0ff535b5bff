"""The store rows the engine reads and writes inside its transactions: lookups that name
what is missing, and the credential's claim by its one active rotation."""

from __future__ import annotations

from sqlalchemy import Update, bindparam, func, select, update
from sqlalchemy.orm import Session, aliased

from keyshift.domain.states import RotationState, VersionStatus
from keyshift.errors import NotFound
from keyshift.store.models import CredentialRow, RotationRow, VersionRow

__all__ = [
    "ADOPTED_FINGERPRINT",
    "adopted",
    "claim_credential",
    "credential",
    "current_version",
    "free_credential",
    "lock_credential",
    "next_serial",
    "note_finished",
    "rotation",
    "version",
]

ADOPTED_FINGERPRINT = "none: adopted, value never held"
"""The fingerprint of an adopted version: versions at the issuer that keyshift did not
create (`Capability.ADOPTS_EXISTING`), recorded without a value as a rotation's old
version so that its revocation retires them. Nothing can be fingerprinted, re-published,
signed in with or revealed for such a version; see `adopted`."""


def adopted(row: VersionRow) -> bool:
    """Whether the version was adopted from the issuer, so keyshift never held its value."""
    return row.fingerprint == ADOPTED_FINGERPRINT


def credential(s: Session, name: str) -> CredentialRow:
    cred = s.execute(select(CredentialRow).where(CredentialRow.name == name)).scalar_one_or_none()
    if cred is None or cred.removed_at is not None:
        raise NotFound(f"no credential named {name} in the estate")
    return cred


def lock_credential(s: Session, name: str) -> CredentialRow | None:
    """The credential's row, locked for this transaction; None while another transaction
    holds its lock (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so that workers sharing a
    store pass over each other's claims instead of queueing on them). SQLite has no row
    locks: its transactions begin IMMEDIATE, so a second writer waits its turn."""
    live = (CredentialRow.name == name, CredentialRow.removed_at.is_(None))
    found = s.execute(
        select(CredentialRow).where(*live).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if found is None and s.execute(select(CredentialRow.id).where(*live)).first() is None:
        raise NotFound(f"no credential named {name} in the estate")
    return found


def claim_credential(s: Session, credential_id: str, rotation_id: str) -> bool:
    """Make `rotation_id` the credential's one active rotation if it has none; whether it
    did. The conditional update is the lock: of two claims at once, one wins."""
    claimed = s.execute(
        update(CredentialRow)
        .where(CredentialRow.id == credential_id, CredentialRow.active_rotation_id.is_(None))
        .values(active_rotation_id=rotation_id)
    )
    return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def free_credential(s: Session, credential_id: str, rotation_id: str) -> None:
    """Let the credential rotate again, if `rotation_id` is still its active rotation."""
    s.execute(
        update(CredentialRow)
        .where(CredentialRow.id == credential_id, CredentialRow.active_rotation_id == rotation_id)
        .values(active_rotation_id=None)
    )


def _noting(one: bool) -> tuple[Update, Update]:
    """The two statements of `note_finished`: for the credential `b_credential` (`one`),
    or for every credential."""
    r = aliased(RotationRow)
    finished = (
        select(r.id)
        .where(r.credential_id == CredentialRow.id, r.finished_at.is_not(None))
        .order_by(r.requested_at.desc(), r.finished_at.desc(), r.id.desc())
        .limit(1)
    )
    completed = select(func.max(r.finished_at)).where(
        r.credential_id == CredentialRow.id, r.state == RotationState.COMPLETED.value
    )
    state = select(RotationRow.state).where(RotationRow.id == CredentialRow.last_rotation_id)
    which = (CredentialRow.id == bindparam("b_credential"),) if one else ()
    return (
        update(CredentialRow)
        .where(*which)
        .values(
            last_rotation_id=finished.scalar_subquery(),
            last_rotated_at=completed.scalar_subquery(),
        ),
        # Set apart: in one statement the state's subquery would read the id before it.
        update(CredentialRow).where(*which).values(last_rotation_state=state.scalar_subquery()),
    )


_NOTE_ONE, _NOTE_ALL = _noting(True), _noting(False)


def note_finished(s: Session, credential_id: str | None) -> None:
    """Bring the credential's record of its rotations up to date (`last_rotation_id`,
    `last_rotation_state`, `last_rotated_at`) after one of its rotations finished (every
    credential's when `credential_id` is None): status pages read these columns instead
    of ranking every credential's history."""
    s.flush()  # the rotation's own final state, set on the ORM object, is read back below
    statements, params = (
        (_NOTE_ALL, {}) if credential_id is None else (_NOTE_ONE, {"b_credential": credential_id})
    )
    for statement in statements:
        s.execute(statement, params, execution_options={"synchronize_session": False})


def rotation(s: Session, rotation_id: str) -> RotationRow:
    rot = s.get(RotationRow, rotation_id)
    if rot is None:
        raise NotFound(f"no rotation {rotation_id}")
    return rot


def version(s: Session, version_id: str) -> VersionRow:
    row = s.get(VersionRow, version_id)
    if row is None:
        raise NotFound(f"no version {version_id}")
    return row


def next_serial(s: Session, credential_id: str) -> int:
    """The serial the credential's next version gets: one above its highest."""
    highest = s.execute(
        select(func.max(VersionRow.serial)).where(VersionRow.credential_id == credential_id)
    ).scalar_one_or_none()
    return (highest or 0) + 1


def current_version(s: Session, credential_id: str) -> VersionRow | None:
    return s.execute(
        select(VersionRow).where(
            VersionRow.credential_id == credential_id,
            VersionRow.status == VersionStatus.CURRENT.value,
        )
    ).scalar_one_or_none()
