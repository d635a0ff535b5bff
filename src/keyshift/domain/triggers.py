"""Inbound events: their signatures, the generic payload, and the adapter that reads a
GitHub secret-scanning alert. Pure functions over bytes and headers; the service looks
up the trigger, reads its secret, de-duplicates and starts the rotations.

What an event asks for is an `EventAsk` (the credentials, or the owner whose credentials
to rotate, with an event id and a reason), or an `EventIgnored` saying why nothing is
asked (a GitHub `ping`, an alert that was resolved, a leak no `match` names).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from keyshift.domain.estate import TriggerKind, TriggerSpec
from keyshift.domain.problems import config_errors
from keyshift.errors import ConfigError, EventInvalid

__all__ = [
    "EVENT_ID_HEADER",
    "GITHUB_EVENT_HEADER",
    "ROTATING_ALERT_ACTIONS",
    "SIGNATURE_HEADERS",
    "EventAsk",
    "EventIgnored",
    "EventRef",
    "GenericEvent",
    "read_event",
    "sign",
    "signature_matches",
]

SIGNATURE_HEADERS: dict[TriggerKind, str] = {
    TriggerKind.GENERIC: "X-Keyshift-Signature",
    TriggerKind.GITHUB_SECRET_SCANNING: "X-Hub-Signature-256",
}
"""The header that carries `sha256=<hex>` of the raw body, per trigger kind."""
GITHUB_EVENT_HEADER = "X-GitHub-Event"
EVENT_ID_HEADER = "X-GitHub-Delivery"
"""GitHub's id of one delivery; a redelivery carries the same one."""
ROTATING_ALERT_ACTIONS = frozenset({"created", "reopened", "publicly_leaked"})
"""The `secret_scanning_alert` actions that mean a secret is exposed now; the others
(resolved, validated, assigned...) start nothing."""

_SHA256 = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value of `body` under `secret`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_matches(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` is `sha256=<hex>` of the raw `body` under `secret`, compared in
    constant time. Anything else (missing, another algorithm, not hex) does not match."""
    found = _SHA256.match((header or "").strip())
    if found is None or not secret:
        return False
    return hmac.compare_digest(sign(secret, body), "sha256=" + found.group(1).lower())


@dataclass(frozen=True)
class EventRef:
    """Which event asked for a rotation: audited with it and stored on it."""

    trigger: str
    event_id: str

    def to_json(self) -> dict[str, str]:
        return {"trigger": self.trigger, "event_id": self.event_id}


@dataclass(frozen=True)
class EventAsk:
    """What an event asks for: rotate `credentials`, or every credential of `owner`."""

    event_id: str
    reason: str
    credentials: tuple[str, ...] = ()
    owner: str | None = None


@dataclass(frozen=True)
class EventIgnored:
    """An event that asks for no rotation, and why (answered, not an error)."""

    event_id: str | None
    why: str


EventId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class GenericEvent(BaseModel):
    """The body a `generic` trigger takes: one credential, or an owner and a reason, and
    the sender's id of the event (a second event with the same id is not taken again)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Exactly one of credential and owner, and a reason with owner: `read_event` says
    # so with the field's path.

    event_id: EventId
    """The sender's id of this event (printable ASCII, up to 200 characters)."""
    credential: str | None = Field(default=None, min_length=1, max_length=128)
    """The credential to rotate."""
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    """Rotate every credential of this owner (`reason` is required then)."""
    reason: str | None = Field(default=None, min_length=1, max_length=200)
    """Why, for the audit trail and the rotation's reason."""


def read_event(
    trigger: TriggerSpec, body: bytes, headers: Mapping[str, str]
) -> EventAsk | EventIgnored:
    """What the (authenticated) event asks of `trigger`. A body that is not what the
    trigger's kind takes raises EventInvalid with one problem per bad field."""
    if trigger.kind == TriggerKind.GITHUB_SECRET_SCANNING:
        return _github(trigger, body, headers)
    try:
        event = GenericEvent.model_validate_json(body)
    except ValidationError as exc:
        raise EventInvalid(config_errors(exc)) from None
    if (event.credential is None) == (event.owner is None):
        raise EventInvalid([ConfigError("credential", "name exactly one of: credential, owner")])
    if event.owner is not None and event.reason is None:
        raise EventInvalid([ConfigError("reason", "is required with owner")])
    reason = event.reason or f"event {event.event_id} from trigger {trigger.name}"
    if event.credential is not None:
        return EventAsk(event.event_id, reason, credentials=(event.credential,))
    return EventAsk(event.event_id, reason, owner=event.owner)


class _Alert(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    number: int | None = None
    secret_type: str = Field(min_length=1, max_length=200)


class _Repository(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    full_name: str = Field(min_length=1, max_length=200)


class _AlertEvent(BaseModel):
    """The fields of a `secret_scanning_alert` payload keyshift reads; the rest, the
    leaked secret itself included, is never read nor kept."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: str
    alert: _Alert
    repository: _Repository | None = None


def _github(
    trigger: TriggerSpec, body: bytes, headers: Mapping[str, str]
) -> EventAsk | EventIgnored:
    """A GitHub webhook delivery: `X-GitHub-Delivery` is the event id; only
    `secret_scanning_alert` events whose action exposes a secret ask for rotations, of
    every credential a `match` of the trigger names for the alert's secret type and
    repository."""
    delivery = _header(headers, EVENT_ID_HEADER)
    if not delivery or len(delivery) > 200:
        raise EventInvalid([ConfigError(EVENT_ID_HEADER, "is required (1 to 200 characters)")])
    event = _header(headers, GITHUB_EVENT_HEADER)
    if event != "secret_scanning_alert":
        return EventIgnored(delivery, f"GitHub event {event or '(none)'} starts no rotation")
    try:
        alert = _AlertEvent.model_validate_json(body)
    except ValidationError as exc:
        raise EventInvalid(config_errors(exc)) from None
    if alert.action not in ROTATING_ALERT_ACTIONS:
        return EventIgnored(delivery, f"a {alert.action} alert starts no rotation")
    repository = alert.repository.full_name if alert.repository else None
    names = tuple(
        dict.fromkeys(
            m.credential for m in trigger.match if m.fits(alert.alert.secret_type, repository)
        )
    )
    where = f" in {repository}" if repository else ""
    if not names:
        return EventIgnored(
            delivery,
            f"no match of trigger {trigger.name} names a {alert.alert.secret_type} secret{where}",
        )
    number = f" {alert.alert.number}" if alert.alert.number is not None else ""
    reason = f"GitHub secret scanning alert{number}: {alert.alert.secret_type}{where}"
    return EventAsk(delivery, reason[:200], credentials=names)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case (a plain mapping may not fold it)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value.strip() if value is not None else None
