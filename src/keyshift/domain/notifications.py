"""What keyshift tells operators, and where: the event kinds, the channels declared under
`notifications` in the estate, and the rules that route each event to channels.

An event names the credential, its owner and environment, the rotation, its state, the
failing step with its error, and version ids and fingerprints; never a value. Channel
secrets (a Slack webhook URL carries its token) are given only as `*_from` references.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from keyshift.domain.durations import Duration

__all__ = [
    "EVENT_KINDS",
    "ChannelSpec",
    "Notifications",
    "Route",
    "channels_for",
]

ROTATION_FAILED: Final = "rotation.failed"
ROTATION_ROLLED_BACK: Final = "rotation.rolled_back"
ROTATION_NEEDS_ATTENTION: Final = "rotation.needs_attention"
ROTATION_COMPLETED: Final = "rotation.completed"
APPROVAL_REQUESTED: Final = "approval.requested"
APPROVAL_DECIDED: Final = "approval.decided"
ROTATION_STUCK: Final = "rotation.stuck"
ROTATION_REFUSED: Final = "rotation.refused"
REVOKED_IN_USE: Final = "rotation.revoked_in_use"
CHANGED_OUTSIDE: Final = "credential.changed_outside_keyshift"
CREDENTIAL_EXPIRING: Final = "credential.expiring"
OUTSIDE_KEYSHIFT: Final = "entra.secret_outside_keyshift"
LIFETIME_EXCEEDED: Final = "entra.lifetime_exceeded"
NOTIFICATION_TEST: Final = "notification.test"

EVENT_KINDS: Final = (
    ROTATION_FAILED,
    ROTATION_ROLLED_BACK,
    ROTATION_NEEDS_ATTENTION,
    ROTATION_COMPLETED,
    APPROVAL_REQUESTED,
    APPROVAL_DECIDED,
    ROTATION_STUCK,
    REVOKED_IN_USE,
    CHANGED_OUTSIDE,
    ROTATION_REFUSED,
    CREDENTIAL_EXPIRING,
    LIFETIME_EXCEEDED,
)
"""Every kind of event a route may name: the engine's (rotations, approvals) and the
worker's alerts (stuck, a scheduled rotation refused, expiry thresholds, Entra findings)."""

ChannelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")]


class _Model(BaseModel):
    # Built on first validation, as `keyshift.domain.estate._Model` says.
    model_config = ConfigDict(
        use_attribute_docstrings=True, extra="forbid", frozen=True, defer_build=True
    )


class ChannelSpec(BaseModel):
    """A place events are sent to. Its other fields are the settings of its `type`
    (`slack`, `teams`, `email`, `webhook`, `jira`, `servicenow`), checked by `keyshift
    plan`/`apply`."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, extra="allow", frozen=True, defer_build=True
    )

    name: ChannelName
    """How routes and owners name the channel."""
    type: str
    """`slack`, `teams`, `email`, `webhook`, `jira` or `servicenow` (see Channel types)."""

    def settings(self) -> dict[str, Any]:
        """The type's settings: every field but `name` and `type`."""
        return dict(self.model_extra or {})


class Route(_Model):
    """Send the events that match to `channels`. An empty list matches everything."""

    channels: list[ChannelName] = Field(min_length=1)
    """The channels matching events go to."""
    events: list[str] = Field(default_factory=list)
    """Event kinds, e.g. `rotation.failed`; empty: every kind."""
    environments: list[str] = Field(default_factory=list)
    """Credential environments, e.g. `prod`; empty: every environment."""
    owners: list[str] = Field(default_factory=list)
    """Credential owners (teams); empty: every owner."""

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = [e for e in events if e not in EVENT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown event kind {', '.join(unknown)}; known: {', '.join(EVENT_KINDS)}"
            )
        return events

    def matches(self, kind: str, environment: str | None, owner: str | None) -> bool:
        return (
            (not self.events or kind in self.events)
            and (not self.environments or environment in self.environments)
            and (not self.owners or owner in self.owners)
        )


class Notifications(_Model):
    """Channels, the routes that choose them, and how hard delivery tries."""

    channels: list[ChannelSpec] = Field(default_factory=list)
    """Where events can go; a channel no route or owner names receives nothing."""
    routes: list[Route] = Field(default_factory=list)
    """Which events go where; an event no route, owner or approver group chooses is kept
    and listed as sent nowhere."""
    owners: dict[str, list[ChannelName]] = Field(default_factory=dict)
    """Each owner's (team's) channels: every event about its credentials goes there, and
    `approval.requested` goes to the channels of the approver groups it names."""
    max_attempts: int = Field(default=8, ge=1, le=50)
    """Tries of one delivery before it is dead-lettered (`keyshift notifications`)."""
    backoff: Duration = timedelta(seconds=30)
    """Wait before the second try; it doubles for each further one (a longer Retry-After
    wins), up to `max_backoff`."""
    max_backoff: Duration = timedelta(hours=1)
    """The longest wait between two tries of one delivery."""

    @model_validator(mode="after")
    def _declared_channels(self) -> Notifications:
        names = [c.name for c in self.channels]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"channel {', '.join(twice)} is declared twice")
        for where, used in [
            *((f"routes[{i}]", r.channels) for i, r in enumerate(self.routes)),
            *((f"owners.{o}", chans) for o, chans in self.owners.items()),
        ]:
            missing = [c for c in used if c not in names]
            if missing:
                raise ValueError(f"{where}: no channel named {', '.join(missing)}")
        return self

    def channel(self, name: str) -> ChannelSpec | None:
        return next((c for c in self.channels if c.name == name), None)


def channels_for(
    notifications: Notifications,
    kind: str,
    *,
    environment: str | None,
    owner: str | None,
    approvers: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The channels an event goes to, each once, in declaration order: those of every
    matching route, the owner's, and for `approval.requested` the approver groups'."""
    chosen: set[str] = set()
    for route in notifications.routes:
        if route.matches(kind, environment, owner):
            chosen.update(route.channels)
    if owner is not None:
        chosen.update(notifications.owners.get(owner, []))
    if kind == APPROVAL_REQUESTED:
        for approver in approvers:
            # `group:platform-oncall` and `user:rita` are owners `platform-oncall`, `rita`.
            name = approver.partition(":")[2] or approver
            chosen.update(notifications.owners.get(name, []))
    return [c.name for c in notifications.channels if c.name in chosen]
