"""Storage: SQLAlchemy models and migrations, envelope encryption, the audit chain."""

from __future__ import annotations

from keyshift.store.models import (
    AuditEntry,
    Base,
    CredentialRow,
    EstateRevision,
    IntegrationRow,
    Meta,
    RotationRow,
    StepRow,
    VersionRow,
)
from keyshift.store.store import Store

__all__ = [
    "AuditEntry",
    "Base",
    "CredentialRow",
    "EstateRevision",
    "IntegrationRow",
    "Meta",
    "RotationRow",
    "StepRow",
    "Store",
    "VersionRow",
]
