"""The errors keyshift raises. Every one derives from `KeyshiftError`.

    KeyshiftError
    ├── ConfigError            bad estate file or setting; carries the field path
    │   └── EstateInvalid      a whole estate file refused; carries one ConfigError per problem
    ├── EventInvalid           an inbound event's body refused; one ConfigError per problem
    ├── NotFound               a credential, rotation or version that does not exist
    ├── StoreError             the store cannot be opened, migrated or read
    │   ├── DecryptionError    a ciphertext does not open under its key and associated data
    │   └── AuditChainBroken   `audit verify` found an edited, deleted or reordered entry
    ├── LeaseHeld              another live worker owns the rotation
    ├── NotClaimed             a worker's claim lost to another worker, or came too late
    ├── Conflict               the request contradicts the current state (a name taken...)
    │   ├── RotationInProgress the credential already has an unfinished rotation
    │   └── RollbackRefused    a rotation that cannot be rolled back by hand (now)
    ├── Unauthenticated        no API token, or a bad, expired or revoked one
    ├── PermissionDenied       the caller's roles lack the permission asked for
    ├── PolicyViolation        a governance rule refuses the rotation
    ├── PolicyRefused          governance refuses a rotation now; carries the reasons
    ├── RateLimited            too many events for a trigger now; `retry_after` says when
    ├── ApprovalRequired       the rotation waits for a human decision
    ├── ApprovalRefused        a decision that may not be taken (own rotation...)
    ├── ServerRefused          a keyshift server answered with a problem document (`--server`)
    ├── ServerUnreachable      no keyshift API answer from the server
    └── PluginError            raised by providers, targets and checks
        ├── TransientError     worth retrying; `retry_after` says when
        └── PermanentError     retrying will not help
            └── NotDelivered   deliberately not performed; the consumer needs a person

Messages carry identifiers (credential names, version ids, fingerprints), never secret
values; `scrub` removes known values from any message that crosses a boundary.
"""

from __future__ import annotations

from collections.abc import Iterable


class KeyshiftError(Exception):
    """Root of every error keyshift raises on purpose."""


class ConfigError(KeyshiftError):
    """A configuration value is wrong. `path` names the field, e.g. `credentials[2].policy`."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class EstateInvalid(KeyshiftError):
    """An estate file was refused. `problems` holds one ConfigError per bad field."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class EventInvalid(KeyshiftError):
    """An inbound event's body is not what its trigger takes. `problems` holds one
    ConfigError per bad field (paths into the body)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RateLimited(KeyshiftError):
    """A trigger took as many events as its rate limit allows; `retry_after` is the
    whole number of seconds until it takes one again."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class NotFound(KeyshiftError):
    """The named object does not exist in the store."""


class StoreError(KeyshiftError):
    """The store cannot be opened, migrated or read."""


class DecryptionError(StoreError):
    """A ciphertext did not authenticate: wrong key, or moved to another row."""


class AuditChainBroken(StoreError):
    """The audit chain does not verify. `seq` is the first entry that breaks it."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"audit entry {seq}: {reason}")


class LeaseHeld(KeyshiftError):
    """Another live worker holds the rotation's lease."""


class NotClaimed(KeyshiftError):
    """A worker did not claim a due credential: another worker holds it (its row is
    locked or it has a rotation under way), or it is no longer due. Nothing was changed;
    the worker moves on to the next one."""


class Conflict(KeyshiftError):
    """The request contradicts the current state: a name is taken, an admin already
    exists, the last admin would be disabled."""


class RotationInProgress(Conflict):
    """The credential already has an unfinished rotation; resume that one instead."""


class RollbackRefused(Conflict):
    """A rotation that may not be rolled back by hand: finished, its old version revoked,
    or not in a state where its new version is published. Nothing was changed."""


class Unauthenticated(KeyshiftError):
    """No API token, or one that is unknown, expired, revoked or of a disabled principal.
    The message never quotes the token."""


class CsrfRefused(KeyshiftError):
    """A web form was posted without the CSRF token of the viewer's session."""


class PermissionDenied(KeyshiftError):
    """The authenticated principal lacks the permission the operation requires."""

    def __init__(self, principal: str, permission: str) -> None:
        self.principal = principal
        self.permission = permission
        super().__init__(f"{principal} lacks the permission {permission}")


class PolicyViolation(KeyshiftError):
    """A policy refuses the rotation; the message says which rule and why."""


class ApprovalRequired(KeyshiftError):
    """The rotation needs an approval before it may continue."""


class PluginError(KeyshiftError):
    """Raised by a provider, target or check."""


class TransientError(PluginError):
    """A failure worth retrying, e.g. a timeout, a 429 or a 503."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PermanentError(PluginError):
    """A failure that retrying will not fix, e.g. a 403 or a bad configuration."""


class NotDelivered(PermanentError):
    """The step was deliberately not performed, e.g. a value that would go to an unenrolled,
    unauthenticated agent URL. The consumer is left on the old version for a person to
    handle: the run goes on and ends needs_attention (the old version kept), whatever the
    action's `on_failure` says."""


REDACTED = "[REDACTED]"


def scrub(message: str, secrets: Iterable[str]) -> str:
    """Return `message` with every known secret value replaced by `[REDACTED]`.

    The second line of defence: errors are built from ids, but a library error
    text (a driver echoing a statement, say) may quote a value.
    """
    for value in secrets:
        if value and len(value) >= 4:
            message = message.replace(value, REDACTED)
    return message


class PolicyRefused(KeyshiftError):
    """Governance refuses this rotation now; `reasons` says why. Nothing was changed."""

    def __init__(self, credential: str, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(f"rotation of {credential} refused: " + "; ".join(reasons))


class ApprovalRefused(KeyshiftError):
    """A decision that cannot be taken (own rotation, not an approver, not pending...)."""


class ServerRefused(KeyshiftError):
    """The server answered with a problem document; `code` is its stable code."""

    def __init__(
        self, status: int, code: str, detail: str, problems: list[tuple[str, str]] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.problems = problems or []
        """(field path, message) of each problem the server listed."""
        super().__init__(detail)


class ServerUnreachable(KeyshiftError):
    """No answer from the server (refused connection, name, TLS or timeout), or an
    answer that is not the keyshift API's."""
