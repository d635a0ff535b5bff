"""What Microsoft Graph answers, as frozen dataclasses: applications and their client
secrets, certificates and owners, app management policies and sign-ins. Never a secret
value, but for `AddedPassword.secret`, wrapped in `Secret` as soon as it is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError

_ISO_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
# A calendar year or month has no fixed length; the shortest is taken, so a lifetime
# computed from it never exceeds what the policy allows.
_SHORTEST_DAYS = {"years": 365, "months": 28, "weeks": 7, "days": 1}


def parse_iso_duration(text: str) -> timedelta:
    """An ISO 8601 duration as Graph writes `maxLifetime` (`P90D`, `PT12H`, `P4DT12H30M5S`).

    Years count 365 days and months 28, the shortest they can be, so a lifetime derived
    from them stays within the policy. Raises ValueError for anything else (a negative
    or empty duration included).
    """
    found = _ISO_DURATION.match(text.strip())
    parts = {k: v for k, v in found.groupdict().items() if v is not None} if found else {}
    if not parts or text.strip().endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration")
    days = sum(int(parts.get(unit, 0)) * size for unit, size in _SHORTEST_DAYS.items())
    return timedelta(
        days=days,
        hours=int(parts.get("hours", 0)),
        minutes=int(parts.get("minutes", 0)),
        seconds=float(parts.get("seconds", 0)),
    )


class _CredentialFields(TypedDict):
    key_id: str
    display_name: str | None
    start: datetime | None
    end: datetime | None


def _credential_fields(data: Mapping[str, Any]) -> _CredentialFields:
    """What Graph lists alike for a client secret and a certificate of an application."""
    return {
        "key_id": str(data["keyId"]),
        "display_name": data.get("displayName"),
        "start": parse_time(data.get("startDateTime")),
        "end": parse_time(data.get("endDateTime")),
    }


@dataclass(frozen=True)
class PasswordCredential:
    """A client secret of an application as Graph lists it: never its value."""

    key_id: str
    display_name: str | None
    hint: str | None
    start: datetime | None
    end: datetime | None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> PasswordCredential:
        return cls(**_credential_fields(data), hint=data.get("hint"))


@dataclass(frozen=True)
class KeyCredential:
    """A certificate of an application: its thumbprint (`customKeyIdentifier`, the SHA-1
    thumbprint in hex) and, only when read with `$select=keyCredentials` on the one
    application, `key`: the public certificate, base64 DER. Never a private key."""

    key_id: str
    display_name: str | None
    thumbprint: str | None
    usage: str | None
    start: datetime | None
    end: datetime | None
    type: str | None = None
    key: str | None = None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> KeyCredential:
        return cls(
            **_credential_fields(data),
            thumbprint=data.get("customKeyIdentifier"),
            usage=data.get("usage"),
            type=data.get("type"),
            key=data.get("key") or None,
        )

    def as_graph(self) -> dict[str, Any]:
        """The credential as an update of `keyCredentials` sends it back (its `key` must
        have been read, or Graph refuses the update)."""
        body: dict[str, Any] = {
            "keyId": self.key_id,
            "type": self.type or "AsymmetricX509Cert",
            "usage": self.usage or "Verify",
            "key": self.key,
            "displayName": self.display_name,
        }
        # `customKeyIdentifier` is left out: Graph derives it from the key again, and its
        # listed form (a hex thumbprint) is not the base64 an update would need.
        if self.start is not None:
            body["startDateTime"] = self.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.end is not None:
            body["endDateTime"] = self.end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return body


@dataclass(frozen=True)
class Owner:
    """An owner of an application (a user or a service principal)."""

    id: str
    display_name: str | None
    user_principal_name: str | None

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> Owner:
        return cls(
            id=str(data.get("id", "")),
            display_name=data.get("displayName"),
            user_principal_name=data.get("userPrincipalName"),
        )

    @property
    def label(self) -> str:
        return self.user_principal_name or self.display_name or self.id


@dataclass(frozen=True)
class AddedPassword:
    """The answer to addPassword: the new secret's id and its value, which Graph shows
    only this once."""

    key_id: str
    display_name: str | None
    hint: str | None
    start: datetime | None
    end: datetime | None
    secret: Secret


@dataclass(frozen=True)
class Application:
    """An application registration: `id` is the object id, `app_id` the client id."""

    id: str
    app_id: str
    display_name: str
    password_credentials: tuple[PasswordCredential, ...]
    key_credentials: tuple[KeyCredential, ...] = ()
    owners: tuple[Owner, ...] | None = None
    """None unless the listing expanded `owners` (Graph expands at most 20 per object)."""
    created: datetime | None = None
    """`createdDateTime`, which app management policy restrictions are dated against;
    None when Graph did not return it (a `$select` without it)."""

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> Application:
        owners = data.get("owners")
        return cls(
            id=str(data["id"]),
            app_id=str(data.get("appId", "")),
            display_name=str(data.get("displayName", "")),
            password_credentials=tuple(
                PasswordCredential.from_graph(p) for p in data.get("passwordCredentials") or ()
            ),
            key_credentials=tuple(
                KeyCredential.from_graph(k) for k in data.get("keyCredentials") or ()
            ),
            owners=(
                tuple(Owner.from_graph(o) for o in owners) if isinstance(owners, list) else None
            ),
            created=parse_time(data.get("createdDateTime")),
        )


@dataclass(frozen=True)
class PasswordRestriction:
    """One restriction on client secrets in an app management policy (Graph's
    `passwordCredentialConfiguration`): `restriction_type` is e.g. `passwordAddition` or
    `passwordLifetime`; `max_lifetime` the ISO 8601 duration of a `passwordLifetime`."""

    restriction_type: str
    max_lifetime: str | None
    applies_from: datetime | None
    """`restrictForAppsCreatedAfterDateTime`: applications created on or after it are
    restricted; None restricts every application."""
    enabled: bool
    """False when `state` is `disabled`; an absent `state` is enforced."""
    exempts_actors: bool = False
    """The restriction exempts callers carrying certain custom security attributes
    (`excludeActors`), which keyshift's identity may or may not carry."""

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> PasswordRestriction:
        excluded = data.get("excludeActors") or data.get("excludedActors")
        attributes = (
            excluded.get("customSecurityAttributes") if isinstance(excluded, dict) else None
        )
        return cls(
            restriction_type=str(data.get("restrictionType") or ""),
            max_lifetime=str(data["maxLifetime"]) if data.get("maxLifetime") else None,
            applies_from=parse_time(data.get("restrictForAppsCreatedAfterDateTime")),
            enabled=str(data.get("state") or "enabled").lower() != "disabled",
            exempts_actors=bool(attributes),
        )

    def applies_to(self, created: datetime | None) -> bool:
        """Whether it restricts an application created at `created` (unknown: it does)."""
        if not self.enabled:
            return False
        return self.applies_from is None or created is None or created >= self.applies_from


@dataclass(frozen=True)
class AppManagementPolicy:
    """The password restrictions of an app management policy: the tenant default
    (`tenant_default`) or the policy assigned to one application."""

    id: str
    display_name: str | None
    is_enabled: bool
    password_restrictions: tuple[PasswordRestriction, ...]
    tenant_default: bool

    @classmethod
    def from_graph(cls, data: Mapping[str, Any], *, tenant_default: bool) -> AppManagementPolicy:
        holder = data.get("applicationRestrictions" if tenant_default else "restrictions")
        listed = holder.get("passwordCredentials") if isinstance(holder, dict) else None
        return cls(
            id=str(data.get("id", "")),
            display_name=data.get("displayName"),
            is_enabled=data.get("isEnabled") is True,
            password_restrictions=tuple(
                PasswordRestriction.from_graph(r) for r in listed or () if isinstance(r, dict)
            ),
            tenant_default=tenant_default,
        )

    @property
    def label(self) -> str:
        """How an operator finds it: the tenant default, or the assigned policy's name and id."""
        if self.tenant_default:
            return "the tenant's default app management policy"
        name = f"'{self.display_name}' " if self.display_name else ""
        return f"the app management policy {name}({self.id}) assigned to the application"


@dataclass(frozen=True)
class SignIn:
    """One service principal sign-in as the sign-in log records it: when, as which
    application, with which of its credentials (`key_id`, the password or certificate
    keyId), from where and to which resource. Never a secret."""

    id: str
    created: datetime
    app_id: str
    key_id: str | None
    thumbprint: str | None
    ip_address: str | None
    resource: str | None
    error_code: int
    """`status.errorCode`: 0 for a successful sign-in."""

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> SignIn:
        created = parse_time(data.get("createdDateTime"))
        if created is None:
            raise PermanentError("Graph listed a sign-in without createdDateTime")
        status = data.get("status") if isinstance(data.get("status"), dict) else {}
        code = status.get("errorCode") if isinstance(status, dict) else None
        return cls(
            id=str(data.get("id", "")),
            created=created,
            app_id=str(data.get("appId", "")),
            key_id=data.get("servicePrincipalCredentialKeyId") or None,
            thumbprint=data.get("servicePrincipalCredentialThumbprint") or None,
            ip_address=data.get("ipAddress") or None,
            resource=data.get("resourceDisplayName") or None,
            error_code=code if isinstance(code, int) else 0,
        )


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
