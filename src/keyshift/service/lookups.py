"""Store lookups the use cases share; each names what is missing in its NotFound."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.errors import NotFound
from keyshift.store.models import CredentialRow, RotationRow


def estate_credential(s: Session, name: str) -> CredentialRow:
    """The credential named `name` that the estate declares now (not removed)."""
    cred = s.execute(
        select(CredentialRow).where(CredentialRow.name == name, CredentialRow.removed_at.is_(None))
    ).scalar_one_or_none()
    if cred is None:
        raise NotFound(f"no credential named {name} in the estate")
    return cred


def rotation(s: Session, rotation_id: str) -> RotationRow:
    """The rotation with this id, or the only one whose id starts with it."""
    rot = s.get(RotationRow, rotation_id)
    if rot is not None:
        return rot
    matches = (
        s.execute(select(RotationRow).where(RotationRow.id.startswith(rotation_id))).scalars().all()
    )
    if len(matches) != 1:
        raise NotFound(f"no rotation {rotation_id}")
    return matches[0]
