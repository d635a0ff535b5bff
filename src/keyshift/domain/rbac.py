"""Permissions and the built-in roles that grant them (RBAC for the API and its tokens).

Every API route requires exactly one `Permission`; routes that act on a rotation of an
Entra ID credential also require `entra:rotate`, so that a role can rotate database and
Redis passwords without any power over Entra apps (`rotator`). A principal (a user or a
service account) holds one or more built-in roles; its permissions are the union of
theirs. Roles are fixed in code so that what a role may do is reviewed with the code,
not edited in a database.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Permission(StrEnum):
    """What a route lets its caller do."""

    CREDENTIALS_READ = "credentials:read"
    """Read the estate, credentials (status, versions by id and fingerprint), rotations,
    alerts, and plan an estate file."""
    CREDENTIALS_WRITE = "credentials:write"
    """Apply an estate file; test integrations (which signs in with keyshift's identity)."""
    CREDENTIALS_IMPORT = "credentials:import"
    """Import the value a credential's issuer holds now as its first version (the value
    travels in the request body)."""
    ROTATIONS_RUN = "rotations:run"
    """Start, dry-run, resume and roll back rotations."""
    APPROVALS_DECIDE = "approvals:decide"
    """Approve or reject rotations waiting for a human decision."""
    AUDIT_READ = "audit:read"
    """Verify and export the audit chain."""
    ENTRA_READ = "entra:read"
    """Read the discovered Entra ID inventory, summary and findings."""
    ENTRA_WRITE = "entra:write"
    """Sync the Entra ID inventory from Graph."""
    ENTRA_ROTATE = "entra:rotate"
    """Change an Entra ID app's credentials through a rotation: needed in addition to
    `rotations:run` to start, resume or roll back a rotation of a credential whose
    provider is Entra ID, and in addition to `approvals:decide` to approve one (an
    approval authorises the change). Grants nothing on its own."""
    FREEZE = "rotations:freeze"
    """Freeze and unfreeze rotations of a credential, an owner, an environment or all."""
    BREAK_GLASS = "rotations:break_glass"
    """Start a break-glass rotation of a `prod` credential (outside its window, through
    freezes): needed in addition to `rotations:run`. Grants nothing on its own."""
    TRIGGER = "rotations:trigger"
    """Post inbound events (`POST /v1/events/rotate/{trigger}`) with an API token instead
    of the trigger's signature; the event's rotations run as the token's principal."""
    ADMIN = "admin"
    """Manage users, service accounts and API tokens."""


class Role(StrEnum):
    """The built-in roles."""

    ADMIN = "admin"
    OPERATOR = "operator"
    ROTATOR = "rotator"
    APPROVER = "approver"
    AUDITOR = "auditor"
    VIEWER = "viewer"


_READ: Final = frozenset({Permission.CREDENTIALS_READ, Permission.ENTRA_READ})

ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: _READ
    | {
        Permission.CREDENTIALS_WRITE,
        Permission.CREDENTIALS_IMPORT,
        Permission.ROTATIONS_RUN,
        Permission.AUDIT_READ,
        Permission.ENTRA_WRITE,
        Permission.ENTRA_ROTATE,
        Permission.FREEZE,
        Permission.TRIGGER,
    },
    Role.ROTATOR: frozenset(
        {Permission.CREDENTIALS_READ, Permission.ROTATIONS_RUN, Permission.TRIGGER}
    ),
    Role.APPROVER: _READ
    | {Permission.APPROVALS_DECIDE, Permission.AUDIT_READ, Permission.ENTRA_ROTATE},
    Role.AUDITOR: _READ | {Permission.AUDIT_READ},
    Role.VIEWER: _READ,
}
"""What each built-in role grants."""

ROLE_DESCRIPTIONS: Final[dict[Role, str]] = {
    Role.ADMIN: "everything, including users, service accounts and API tokens, and "
    "break-glass rotations of prod credentials",
    Role.OPERATOR: "runs the estate: apply, import, rotate, resume, freeze, post inbound "
    "events, sync Entra ID, read the audit trail",
    Role.ROTATOR: "rotates credentials not issued by Entra ID (database, Redis, random): "
    "start, dry-run, resume, roll back, post inbound events; reads credentials; no Entra "
    "ID rotation, no apply (for CI pipelines and service accounts)",
    Role.APPROVER: "decides on rotations waiting for approval, Entra ID ones included "
    "(entra:rotate, since approving one authorises changing the app; it cannot start "
    "rotations); reads credentials and audit",
    Role.AUDITOR: "reads credentials, rotations and the audit trail; changes nothing",
    Role.VIEWER: "reads credentials, rotations, alerts and the Entra ID inventory",
}


def permissions_of(roles: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[Permission]:
    """The union of the permissions of these roles; unknown role names grant nothing."""
    known = {role.value: role for role in Role}
    granted: set[Permission] = set()
    for name in roles:
        if name in known:
            granted |= ROLE_PERMISSIONS[known[name]]
    return frozenset(granted)
