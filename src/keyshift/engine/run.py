"""What one run of a rotation holds in memory, and the version values it hands out.

A `Run` is built when a worker claims a rotation's lease (`Steps.claim`) and dropped
when it lets go. Only the lease holder writes the rotation, so the run's `state`,
attempts and grace mirror the stored row; every write goes through `Steps`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import RotationState, VersionStatus
from keyshift.engine import rows
from keyshift.engine.plan import Plan
from keyshift.errors import PermanentError
from keyshift.governance import NO_EXEMPTIONS, Exemptions
from keyshift.providers.base import IssuedVersion, Provider
from keyshift.store.models import VersionRow
from keyshift.store.store import Store
from keyshift.targets.base import Delivery, Target

__all__ = [
    "PROVE_STEP",
    "RETAIN_DISABLED",
    "VERIFY_PROVIDER_STEP",
    "Run",
    "deliveries",
    "issued",
    "old_issued",
    "revoked",
]

RETAIN_DISABLED = timedelta(days=7)
"""How long a rolled-back new version is kept (disabled) for analysis before it expires."""

VERIFY_PROVIDER_STEP = "verifying:provider"
PROVE_STEP = "proving"


@dataclass
class Run:
    """What one `run` call holds in memory: the loaded plan and its plugin instances."""

    rotation_id: str
    credential_id: str
    credential: str
    plan: Plan
    provider: Provider
    context: PluginContext
    lease_until: datetime
    state: RotationState
    grace_until: datetime | None
    attention: str | None
    residual: dict[str, Any]
    seq: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)
    """Steps whose last attempt was left `running` by a worker that stopped."""
    succeeded: set[str] = field(default_factory=set)
    targets: dict[str, Target] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    """Every value this run revealed, so that its errors can be scrubbed of them."""
    deliveries: tuple[Delivery, Delivery | None] | None = None
    adopted_old: str | None = None
    """The old version's id when it is adopted (no value): rollback cannot restore it."""
    exempt: Exemptions = NO_EXEMPTIONS
    """What it skips because of how it was asked for (break-glass: the window, freezes)."""
    held: list[str] | None = None
    """Why it waits in `state`, as found in the transaction that moved it there (empty:
    nothing holds it); None when not known, and found in a transaction of its own."""


def issued(store: Store, row: VersionRow) -> IssuedVersion:
    """A stored version as the provider receives it (its value decrypted)."""
    value = store.reveal(row)
    return IssuedVersion(row.provider_ref, value, dict(row.attributes), row.expires_at)


def old_issued(store: Store, row: VersionRow) -> IssuedVersion:
    """The old version for revocation and residual-use checks. An adopted one has no
    value: it goes with an empty one and its identifiers (the providers that adopt
    remove by identifier, and the usage command never receives a value)."""
    if rows.adopted(row):
        return IssuedVersion(row.provider_ref, Secret(""), dict(row.attributes), row.expires_at)
    return issued(store, row)


def revoked(row: VersionRow, now: datetime) -> None:
    """Mark a version revoked on purpose: its value is no longer kept."""
    row.status = VersionStatus.REVOKED.value
    row.revoked_at = now
    row.ciphertext = row.wrapped_key = row.master_key_id = None


def deliveries(store: Store, run: Run) -> tuple[Delivery, Delivery | None]:
    """The new and previous versions as consumers receive them (decrypted once a run)."""
    if run.deliveries is not None:
        return run.deliveries
    with store.transaction() as s:
        rot = rows.rotation(s, run.rotation_id)
        if rot.new_version_id is None:
            raise PermanentError(f"rotation {rot.id} has no new version to deliver")
        new = _delivery(store, run, rows.version(s, rot.new_version_id))
        old = rows.version(s, rot.old_version_id) if rot.old_version_id is not None else None
        if old is not None and rows.adopted(old):
            # Consumers get no previous value, as on a first rotation.
            run.adopted_old, old = old.id, None
        previous = _delivery(store, run, old) if old is not None else None
    run.deliveries = (new, previous)
    return new, previous


def _delivery(store: Store, run: Run, row: VersionRow) -> Delivery:
    value = store.reveal(row)
    run.secrets.append(value.reveal())
    return Delivery(
        run.credential, run.rotation_id, row.id, row.fingerprint, value, dict(row.attributes)
    )
