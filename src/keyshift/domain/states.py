"""The words of the rotation state machine and the credential lifecycle (design.md)."""

from __future__ import annotations

from enum import StrEnum


class RotationState(StrEnum):
    """Where a rotation stands, in the order of the happy path (design.md)."""

    REQUESTED = "requested"
    VALIDATED = "validated"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    PREFLIGHTED = "preflighted"
    CREATING = "creating"
    PROVING = "proving"
    """The new version is signed in with at the issuer, as consumers would, before any
    consumer gets it; the engine waits out the issuer's propagation here."""
    PUBLISHING = "publishing"
    RELOADING = "reloading"
    VERIFYING = "verifying"
    NOTIFYING = "notifying"
    GRACE = "grace"
    AWAITING_REVOKE_APPROVAL = "awaiting_revoke_approval"
    REVOKING = "revoking"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        RotationState.COMPLETED,
        RotationState.ROLLED_BACK,
        RotationState.FAILED,
        RotationState.NEEDS_ATTENTION,
    }
)

WAITING_STATES = frozenset(
    {
        RotationState.GRACE,
        RotationState.AWAITING_APPROVAL,
        RotationState.AWAITING_REVOKE_APPROVAL,
    }
)
"""Unfinished states a rotation rests in until time passes or a human decides."""


MANUAL_ROLLBACK_FROM = frozenset(
    {
        RotationState.GRACE,
        RotationState.AWAITING_REVOKE_APPROVAL,
        RotationState.NEEDS_ATTENTION,
    }
)
"""The states an operator may roll a rotation back from (`keyshift rollback`): the new
version is published and the old one may still be valid. The rollback moves the rotation
to `rolling_back`, which ends `rolled_back` (or `failed` when a consumer could not be
restored), as an `on_failure: abort` failure does. A `needs_attention` rotation whose old
version was revoked is refused all the same: there is nothing left to go back to."""


class Trigger(StrEnum):
    """How a rotation was asked for (`history`, the dashboard, the evidence)."""

    SCHEDULE = "schedule"
    """The worker: the credential was due."""
    CLI = "cli"
    """`keyshift rotate` on the local store."""
    API = "api"
    """`POST /v1/credentials/{name}/rotations` (also the CLI with `--server`)."""
    WEB = "web"
    """The dashboard's Rotate button."""
    EVENT = "event"
    """An inbound event (`POST /v1/events/rotate/{trigger}`): a secret-scanning alert, a
    SIEM rule."""
    BREAK_GLASS = "break-glass"
    """`keyshift rotate --break-glass` (or the API's `break_glass: true`): outside the
    maintenance window and through freezes, for a credential known to be leaked; also
    an event of a trigger the estate marks `break_glass` (which skips the window only)."""


class Phase(StrEnum):
    """The cutover phase an action belongs to. Phases run in this order."""

    PUBLISH = "publishing"
    RELOAD = "reloading"
    VERIFY = "verifying"
    NOTIFY = "notifying"


PHASE_ORDER: tuple[Phase, ...] = (Phase.PUBLISH, Phase.RELOAD, Phase.VERIFY, Phase.NOTIFY)


class OnFailure(StrEnum):
    """What a failed action does to the run: stop and roll back, or finish as needs_attention."""

    ABORT = "abort"
    CONTINUE = "continue"


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"


class VersionStatus(StrEnum):
    """A version's standing at keyshift. `pending` = created, not yet cut over."""

    PENDING = "pending"
    CURRENT = "current"
    PREVIOUS = "previous"
    DISABLED = "disabled"
    REVOKED = "revoked"


class Provenance(StrEnum):
    """How keyshift came to hold a version."""

    ISSUED = "issued"
    """Created at the issuer by a rotation."""
    ADOPTED = "adopted"
    """Found at the issuer on a first rotation and taken over without its value."""
    IMPORTED = "imported"
    """Brought under management by an operator (`keyshift import`) with its value, as
    the issuer already held it."""


class Lifecycle(StrEnum):
    """The lifecycle state shown to operators for a credential."""

    ACTIVE = "Active"
    EXPIRING_SOON = "Expiring Soon"
    ROTATING = "Rotating"
    GRACE_PERIOD = "Grace Period"
    EXPIRED = "Expired"
    CLEANED_UP = "Cleaned Up"
    NEVER_ROTATED = "Never Rotated"
    NEEDS_ATTENTION = "Needs Attention"
