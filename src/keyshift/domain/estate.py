"""The estate file: integrations, policies and credentials with their ordered actions.

These pydantic models are the source of truth for the file's shape; the docs'
estate reference is generated from them. Provider and action `config` blocks
are validated against the config model of the registered type by
`keyshift.service.estate`, which reports every problem with its field path.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from keyshift.domain.durations import Duration
from keyshift.domain.freeze import FreezeScope
from keyshift.domain.notifications import Notifications
from keyshift.domain.states import OnFailure
from keyshift.errors import ConfigError

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$"),
]
"""Names of credentials, policies and integrations: lowercase letters, digits, `.`, `_`, `-`."""

DEFAULT_POLICY_NAME = "default"


class _Model(BaseModel):
    # Each model's validator is built when it first validates (defer_build), not when
    # this module is imported: `keyshift status` and the other readers of the store
    # import it and validate a policy or two, never a whole estate.
    model_config = ConfigDict(
        use_attribute_docstrings=True, extra="forbid", frozen=True, defer_build=True
    )


class ResidualUse(_Model):
    """Before revoking, wait until the old version has been unused for `quiet_for`,
    checking every `check_every`, at most until the grace period ends."""

    check_every: Duration = timedelta(seconds=30)
    """How often to look for sessions that still use the old version."""
    quiet_for: Duration = timedelta(minutes=2)
    """The old version must have been unused this long before it is revoked."""
    on_timeout: Literal["wait", "revoke", "fail"] = "fail"
    """At the end of the grace period with the old version still in use: keep waiting,
    revoke anyway, or stop as needs_attention without revoking."""
    command: list[str] | None = Field(default=None, min_length=1)
    """A program (argv, no shell) that says whether the old version is still in use:
    exit 0 = unused, exit 1 = in use (the first line of its output may give a count and
    a detail). Any other ending counts as in use. It gets `KEYSHIFT_CREDENTIAL`,
    `KEYSHIFT_VERSION_ID`, `KEYSHIFT_PROVIDER_REF`, `KEYSHIFT_FINGERPRINT` and
    `KEYSHIFT_USERNAME`, never the value."""
    command_timeout: Duration = timedelta(seconds=30)
    """The command is killed (and counts as in use) after this long."""


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


@lru_cache(maxsize=256)
def _parse_hours(hours: str) -> tuple[time, time]:
    """`09:00-16:00` -> (09:00, 16:00); `24:00` as an end means midnight."""
    found = _HOURS.match(hours)
    if not found or (found.group(3) == "24" and found.group(4) != "00"):
        raise ValueError("hours must look like 09:00-16:00 (24-hour clock)")
    start = time(int(found.group(1)), int(found.group(2)))
    end = time(0, 0) if found.group(3) == "24" else time(int(found.group(3)), int(found.group(4)))
    return start, end


@lru_cache(maxsize=4096)
def _openings(
    timezone: str, hours: str, days: tuple[Weekday, ...], day: date
) -> tuple[datetime, ...]:
    """The moments of local `day`, sorted, at which a window (`RotationWindow`'s fields)
    opens: its opening time, or a clock change that skips the opening time or repeats the
    closing time while the window is open again. Cached: a status page asks for the same
    days of the same windows for every credential under a policy."""
    zone = ZoneInfo(timezone)
    start, end = _parse_hours(hours)
    if start == end:
        start = end = time(0, 0)  # open whole days (`contains`)
    window = RotationWindow(days=list(days), hours=hours, timezone=timezone)
    candidates: list[datetime] = []
    for wall, opening in ((start, True), (end, False)):
        early = datetime.combine(day, wall, tzinfo=zone)
        late = early.replace(fold=1)
        if early.utcoffset() != late.utcoffset():
            candidates.append(_clock_change(early, late, zone))
        if opening:
            candidates += [early, late]
    # In UTC before `contains`: a skipped wall time must be read as the instant it names.
    return tuple(sorted({m for m in (c.astimezone(UTC) for c in candidates) if window.contains(m)}))


@lru_cache(maxsize=1024)
def _upcoming(
    timezone: str, hours: str, days: tuple[Weekday, ...], today: date
) -> tuple[datetime, ...]:
    """The openings of a window (`_openings`) from the local day before `today` to 15
    days after it, sorted: a moment of local `today` opens next at one of them. A day
    skipped by a clock change is made up a week later, so 15 days always hold an
    opening (none: the window never opens). Cached: a status page asks for the same
    few days of the same windows for every credential under a policy."""
    found: list[datetime] = []
    for offset in range(-1, 16):
        found += _openings(timezone, hours, days, today + timedelta(days=offset))
    return tuple(sorted(found))


def _clock_change(early: datetime, late: datetime, zone: ZoneInfo) -> datetime:
    """The instant of the daylight-saving change that makes one wall time (`early` and
    `late`, its two readings) skipped or repeated, to the second."""
    low, high = sorted(m.astimezone(UTC) for m in (early, late))
    after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


class RotationWindow(_Model):
    """When `keyshift worker` may start automatic rotations, in a time zone. Manual
    `keyshift rotate` is not limited by it. Hours whose end is before their start run
    past midnight into the next day."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    """Days the window opens on: `mon` ... `sun`."""
    hours: str = "00:00-24:00"
    """Local opening hours, `HH:MM-HH:MM` (the end not included)."""
    timezone: str = "UTC"
    """An IANA time zone such as `Europe/Berlin`."""

    @field_validator("hours")
    @classmethod
    def _hours(cls, hours: str) -> str:
        _parse_hours(hours)
        return hours

    @property
    def start(self) -> time:
        return _parse_hours(self.hours)[0]

    @property
    def end(self) -> time:
        return _parse_hours(self.hours)[1]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}; use an IANA name") from None
        return name

    def contains(self, moment: datetime) -> bool:
        """Whether `moment` (timezone-aware) is inside the window."""
        local = moment.astimezone(ZoneInfo(self.timezone))
        clock = local.time().replace(tzinfo=None)
        today = WEEKDAYS[local.weekday()]
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        start, end = _parse_hours(self.hours)
        if start == end:
            return today in self.days
        if start < end:
            return today in self.days and start <= clock < end
        # Past midnight: the part after start belongs to today's window, the part
        # before end to the one that opened yesterday.
        return (today in self.days and clock >= start) or (yesterday in self.days and clock < end)

    def next_opening(self, after: datetime) -> datetime:
        """The first moment at or after `after` (timezone-aware) that the window
        `contains`: `after` itself while it is open, else when it opens next, in the time
        zone `after` is in. Where a daylight-saving change skips the opening time, the
        window opens at the change; where a change repeats the closing time, the window
        opens again at the change."""
        if self.contains(after):
            return after
        today = after.astimezone(ZoneInfo(self.timezone)).date()
        upcoming = _upcoming(self.timezone, self.hours, tuple(self.days), today)
        at = bisect.bisect_left(upcoming, after)
        if at == len(upcoming):
            raise ValueError(f"the window {self.hours} on {', '.join(self.days)} never opens")
        found = upcoming[at]
        return found.astimezone(after.tzinfo)


class Approval(_Model):
    """Supervised mode: a rotation waits in `awaiting_approval` until enough approvers
    accept the exact plan it will run."""

    required: bool = True
    """Whether rotations under this policy need approval before anything changes."""
    approvers: list[str] = Field(min_length=1)
    """Who may approve: `group:NAME` (a group of `governance.groups`) or `user:NAME`."""
    min_approvals: int = Field(default=1, ge=1, le=10)
    """How many distinct approvers must accept (N of M)."""
    expires_after: Duration = timedelta(hours=24)
    """An approval older than this no longer counts."""
    before_revoke: bool = False
    """Also ask for approval before the old version is revoked (critical credentials)."""

    @field_validator("approvers")
    @classmethod
    def _prefixed(cls, approvers: list[str]) -> list[str]:
        for who in approvers:
            kind, _, name = who.partition(":")
            if kind not in ("group", "user") or not name:
                raise ValueError(f"approver {who!r} must be group:NAME or user:NAME")
        return approvers


RollbackScope = Literal["all", "failing_only"]
"""What a failed check puts back on the old version (`Policy.rollback`)."""

CHECKED_ENVIRONMENT = "prod"
"""The environment whose credentials need a post-cutover check unless their policy says
otherwise (`Policy.require_checks`)."""


class Policy(_Model):
    """When to rotate and how long the old version stays valid."""

    name: Name = DEFAULT_POLICY_NAME
    rotate_before_expiry: Duration = timedelta(days=30)
    """Start a rotation this long before the current version expires."""
    grace_period: Duration = timedelta(days=30)
    """How long old and new versions are both valid before the old one is revoked."""
    max_lifetime: Duration | None = None
    """A version may live at most this long; keyshift sets its expiry from it."""
    residual_use: ResidualUse | None = None
    """Gate revocation on evidence that the old version is no longer used: sessions seen
    by the provider (postgres and redis alternating_users), sign-ins with the old client
    secret in Entra ID's sign-in log (entra_client_secret), and/or a `command`."""
    min_grace_period: Duration | None = None
    """The overlap may not be shorter than this, even when a rotation asks for less
    (`keyshift rotate --grace`)."""
    propagation_timeout: Duration | None = None
    """How long keyshift waits for the issuer to accept a new version everywhere (it is
    proven before any consumer gets it) and to refuse a revoked one everywhere. Unset,
    each provider's own figure applies: 5m for entra_client_secret, 30s for postgres,
    10s for redis; `random` needs none."""
    stuck_after: Duration = timedelta(minutes=30)
    """A rotation that stays this long in publishing, reloading or verifying, or this long
    in grace past its end, raises `rotation.stuck` once per phase (`keyshift worker`)."""
    environments: list[str] | None = None
    """Environments credentials under this policy may be in (e.g. `[prod]`); none = any."""
    approval: Approval | None = None
    """Approval before a rotation runs (and optionally before revocation)."""
    window: RotationWindow | None = None
    """When automatic rotations may start, e.g. `{days: [mon, tue], hours: "09:00-16:00",
    timezone: Europe/Berlin}`; none means at any time."""
    require_checks: bool | None = None
    """Refuse (at `plan` and `apply`) a credential whose rotation has no post-cutover
    check: a verify action (`command_check`, `http_check`) or a provider whose verify
    really signs in (entra_client_secret, postgres, redis). Unset: true for credentials
    in environment `prod`, false elsewhere."""
    rollback: RollbackScope = "all"
    """What an `on_failure: abort` failure puts back on the old version. `all`: every
    consumer that got the new one. `failing_only`: consumers take the new version one at
    a time (publish, reload, verify, then the next consumer); the failing one goes back,
    those before it keep the new version, those after it never get it, and the rotation
    ends needs_attention listing the split, with both versions kept valid until an
    operator rolls it back (`keyshift rollback`). Needs a provider that keeps two
    versions valid at once and, per consumer, its own publish and verify actions."""

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Stored plans, their hashes (bound to approvals) and credential digests predate
        # `require_checks` and `rollback`: at their defaults a policy serialises exactly as
        # before, so applying an unchanged file changes nothing.
        data: dict[str, Any] = handler(self)
        if data.get("require_checks") is None:
            data.pop("require_checks", None)
        if data.get("rollback") == "all":
            data.pop("rollback", None)
        return data

    def checks_required(self, environment: str | None) -> bool:
        """Whether a credential in `environment` under this policy needs a post-cutover
        check: `require_checks` when set, else whether it is `prod`."""
        if self.require_checks is not None:
            return self.require_checks
        return environment == CHECKED_ENVIRONMENT

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        if self.propagation_timeout is not None and not (
            timedelta(0) < self.propagation_timeout <= timedelta(hours=1)
        ):
            raise ValueError("propagation_timeout must be longer than 0s and at most 1h")
        if self.max_lifetime is not None:
            if self.max_lifetime <= timedelta(0):
                raise ValueError("max_lifetime must be longer than 0s")
            if self.rotate_before_expiry >= self.max_lifetime:
                raise ValueError("rotate_before_expiry must be shorter than max_lifetime")
        return self


class ProviderSpec(_Model):
    """The issuer of a credential's versions: `type` picks the provider, the rest is its config."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, extra="allow", frozen=True, defer_build=True
    )

    type: str
    """The provider type (see Provider types below)."""
    integration: Name | None = None
    """The name of the integration the provider connects through, if it needs one. Left
    out, it is the estate's only integration of the type the provider needs (an error names
    the candidates when there are none or several)."""

    def config(self) -> dict[str, Any]:
        """The provider's own settings: every key but `type` (`integration` included if set)."""
        return self.model_dump(exclude={"type"}, exclude_none=True)


def action_key(order: int, type: str, consumer: str | None = None) -> str:
    """An action's identity inside its credential: `order:type`, or `order:type@consumer`
    for an action that names its consumer. Journal step names are built from it, so an
    action without a consumer keeps the key it always had."""
    return f"{order}:{type}" + (f"@{consumer}" if consumer is not None else "")


class ActionSpec(_Model):
    """One delivery step, in the shape other rotation tools already use."""

    type: str
    """The action type (see Action types below)."""
    order: int = Field(ge=0)
    """Position among the actions of its consumer, distinct per consumer. Publish actions
    come first, then reload, verify and notify actions: an action ordered before one of an
    earlier phase for the same consumer is refused."""
    on_failure: OnFailure = OnFailure.ABORT
    """`abort` stops and rolls back; `continue` finishes the run as needs_attention."""
    agent_id: str | None = None
    """The host agent that performs the action: the `agent_id` (or the name) of an `agent`
    integration. Required by the agent action types (`agent_secret_sync`, `iis_recycle`,
    `systemd_reload`) and refused on every other type, which runs where keyshift runs. One
    that no agent integration declares is accepted with a warning: the action is manual
    review (never sent a value) until the agent is enrolled."""
    consumer: Name | None = None
    """The consumer this action delivers to, reloads, checks or notifies, e.g. `billing-web`.
    Actions without one belong to the credential's one default consumer. Shown by
    `keyshift impact` and in approval requests."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The action type's own settings."""

    @field_validator("agent_id")
    @classmethod
    def _agent_named(cls, agent_id: str | None) -> str | None:
        # Which agent integration it names, and whether the type runs on an agent at all,
        # is checked across the estate by `keyshift.service.estate`.
        if agent_id is not None and not agent_id.strip():
            raise ValueError("must name an agent integration (its agent_id or name), or be null")
        return agent_id

    @model_serializer(mode="wrap")
    def _without_default_consumer(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Stored estates and their digests predate `consumer`: an action without one
        # serialises exactly as before, so applying an unchanged file changes nothing.
        data: dict[str, Any] = handler(self)
        if data.get("consumer") is None:
            data.pop("consumer", None)
        return data

    @property
    def key(self) -> str:
        """The action's identity inside its credential: `order:type[@consumer]`."""
        return action_key(self.order, self.type, self.consumer)


class CredentialSpec(_Model):
    """A logical secret a team owns, its issuer, its policy and its consumers."""

    name: Name
    """Unique within the estate: lowercase letters, digits, `.`, `_`, `-`."""
    owner: str | None = None
    """The accountable person or team, shown in status and evidence."""
    environment: str | None = None
    """Free text such as `prod` or `non-prod`."""
    description: str | None = None
    policy: (
        Annotated[
            Annotated[Name, Tag("named")] | Annotated[Policy, Tag("inline")],
            Discriminator(lambda v: "named" if isinstance(v, str) else "inline"),
        ]
        | None
    ) = None
    """A policy's name, or a policy written inline; none means the default policy."""
    enabled: bool = True
    """`false`: keyshift keeps the credential, its versions and its history, finishes a
    rotation already under way, and starts no new one (worker, CLI, API, dashboard);
    `status` shows it as disabled. Turn it back on to rotate it again."""
    auto_rotate: bool = False
    """Let `keyshift worker` start rotations when expiry is within `rotate_before_expiry`."""
    provider: ProviderSpec
    """Who issues and revokes the versions."""
    actions: list[ActionSpec] = Field(default_factory=list)
    """Delivery steps to consumers; the actions of one consumer each have a distinct
    `order`."""

    @field_validator("actions")
    @classmethod
    def _unique_order(cls, actions: list[ActionSpec]) -> list[ActionSpec]:
        seen: dict[tuple[str | None, int], str] = {}
        for action in actions:
            slot = (action.consumer, action.order)
            if slot in seen:
                whose = f" of consumer {action.consumer}" if action.consumer else ""
                raise ValueError(
                    f"two actions{whose} have order {action.order} ({seen[slot]} and "
                    f"{action.type}); give each a distinct order"
                )
            seen[slot] = action.type
        return actions

    def integration_names(self) -> list[str]:
        """The integrations the provider and the actions connect through, in order."""
        names = [self.provider.integration] if self.provider.integration else []
        for action in self.actions:
            name = action.config.get("integration")
            if isinstance(name, str) and name not in names:
                names.append(name)
        return names


AGENT_INTEGRATION = "agent"
"""The integration type of a host agent, which actions name by `agent_id`."""


class IntegrationSpec(_Model):
    """A connection keyshift uses to reach an issuer (Entra tenant, database admin...) or
    a host agent that performs actions."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, extra="allow", frozen=True, defer_build=True
    )

    name: Name
    type: str
    enabled: bool = True
    """`false`: keyshift calls nothing through it (no rotation, preflight, sync or test)
    and keeps its settings and what it discovered. The credentials that use it are shown
    as disabled by `status`, and governance refuses rotating them, naming it; a rotation
    under way through it stops at its next step and waits until it is enabled again."""

    @model_serializer(mode="wrap")
    def _without_default_enabled(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Stored integrations and credential digests predate `enabled`: an enabled one
        # serialises exactly as before, so applying an unchanged file changes nothing.
        data: dict[str, Any] = handler(self)
        if data.get("enabled") is True:
            data.pop("enabled")
        return data

    def is_agent(self, agent_id: str) -> bool:
        """Whether this is the agent integration an action's `agent_id` names: by the
        agent's id (a UUID, in any case) or by the integration's name."""
        if self.type != AGENT_INTEGRATION:
            return False
        declared = getattr(self, "agent_id", None)
        return agent_id == self.name or (
            isinstance(declared, str) and declared.lower() == agent_id.lower()
        )


def disabled_integrations(declared: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The names of the integrations in `declared` (stored form, as a credential's spec
    holds them) that the estate disables (`enabled: false`)."""
    return [name for name, raw in declared.items() if raw.get("enabled") is False]


INTEGRATION_FIELDS = ("name", "type", "enabled")
"""The fields of an integration that are keyshift's, not its type's config."""


DEFAULT_THRESHOLDS = (timedelta(days=30), timedelta(days=7))


class Alerts(_Model):
    """Warnings `keyshift worker` raises once each: a version crossing an expiry threshold,
    an Entra secret created outside keyshift, a lifetime over the policy's maximum."""

    expiry_thresholds: list[Duration] = Field(
        default_factory=lambda: list(DEFAULT_THRESHOLDS), min_length=1
    )
    """Warn when a version or an Entra secret is this close to its expiry; one alert per
    threshold per version. The longest also marks it Expiring Soon."""
    webhooks: list[dict[str, Any]] = Field(default_factory=list)
    """Where alerts are POSTed: each entry takes the settings of a `webhook` action
    (`url`, `signing_secret_from`, `headers`, `timeout`, `retries`, `backoff`), without
    `include_value`."""

    @field_validator("expiry_thresholds")
    @classmethod
    def _distinct_positive(cls, thresholds: list[timedelta]) -> list[timedelta]:
        if any(t <= timedelta(0) for t in thresholds):
            raise ValueError("thresholds must be longer than 0s")
        if len(set(thresholds)) != len(thresholds):
            raise ValueError("thresholds must be distinct")
        return sorted(thresholds, reverse=True)

    @property
    def expiring_soon(self) -> timedelta:
        return self.expiry_thresholds[0]


class Allowlist(_Model):
    """The approved inventory: only credentials listed here by name (shell-style patterns
    such as `payments-*`) or by the application id they rotate may rotate."""

    credentials: list[str] = Field(default_factory=list)
    """Credential names or patterns."""
    app_ids: list[str] = Field(default_factory=list)
    """Entra application (client) ids."""


class Governance(_Model):
    """Rules every rotation is checked against before anything changes."""

    allowlist: Allowlist | None = None
    """When set, only credentials in it may rotate."""
    require_owner: bool = True
    """A credential must name its accountable owner (person or team) to rotate."""
    groups: dict[str, list[str]] = Field(default_factory=dict)
    """Approver groups: group name -> the people in it (their keyshift user names)."""


DEFAULT_CONCURRENCY = 16
"""Rotations one worker runs at once unless told otherwise: enough to hide issuer and
consumer latency, few enough for a store's connection pool and a host's reloads."""


class Worker(_Model):
    """How `keyshift worker` runs the fleet."""

    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=256)
    """Rotations one worker runs at once (`worker --concurrency` overrides it). Each
    runs on its own thread and store connection, the most urgent first."""


class FreezeSpec(_Model):
    """A change freeze declared in the estate (GitOps): while it holds, no rotation of
    what it covers starts, and one under way waits at its next step, exactly as under
    `keyshift freeze`. Name exactly one of `credential`, `owner`, `environment` or
    `all: true`. `apply` starts it, changes its reason or end when the file does, and
    lifts it once it is gone from the file; `keyshift unfreeze` does not lift it.
    Freezes started with `keyshift freeze` are not touched by `apply`."""

    credential: Name | None = None
    """Freeze one credential of this estate."""
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    """Freeze every credential of this owner."""
    environment: str | None = Field(default=None, min_length=1, max_length=200)
    """Freeze every credential of this environment."""
    all: bool = False
    """Freeze every credential."""
    reason: str = Field(min_length=1, max_length=500)
    """Why (required): shown in refusals, status, plan and preflight, and audited."""
    until: datetime | None = None
    """When it lifts by itself, e.g. `2026-12-31T18:00:00Z` (UTC when no offset is given);
    none: while the file declares it. One whose `until` has passed is not started."""

    @field_validator("until", mode="before")
    @classmethod
    def _utc(cls, until: object) -> object:
        # YAML reads `2026-12-31` as a date: the freeze ends as that day begins, UTC.
        if isinstance(until, date) and not isinstance(until, datetime):
            return datetime.combine(until, time(0, 0), tzinfo=UTC)
        return until

    @field_validator("until")
    @classmethod
    def _aware(cls, until: datetime | None) -> datetime | None:
        return until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until

    @model_validator(mode="after")
    def _one_scope(self) -> FreezeSpec:
        named = [self.credential, self.owner, self.environment, True if self.all else None]
        if sum(v is not None for v in named) != 1:
            raise ValueError("name exactly one of: credential, owner, environment, all: true")
        return self

    @property
    def scope(self) -> FreezeScope:
        if self.credential is not None:
            return FreezeScope.CREDENTIAL
        if self.owner is not None:
            return FreezeScope.OWNER
        if self.environment is not None:
            return FreezeScope.ENVIRONMENT
        return FreezeScope.ALL

    @property
    def value(self) -> str | None:
        """The credential, owner or environment frozen; None for `all`."""
        return self.credential or self.owner or self.environment

    def covers(self, name: str, owner: str | None, environment: str | None) -> bool:
        """Whether this freeze covers the credential `name` (of `owner`, in `environment`)."""
        match self.scope:
            case FreezeScope.ALL:
                return True
            case FreezeScope.CREDENTIAL:
                return self.credential == name
            case FreezeScope.OWNER:
                return self.owner == owner
            case FreezeScope.ENVIRONMENT:
                return self.environment == environment


class TriggerKind(StrEnum):
    """What posts to a trigger, which decides its payload and its signature header."""

    GENERIC = "generic"
    """Any system: a JSON body naming a credential (or an owner and a reason) and an
    event id, signed in `X-Keyshift-Signature: sha256=<hex>`."""
    GITHUB_SECRET_SCANNING = "github_secret_scanning"  # noqa: S105 (a kind, not a secret)
    """A GitHub webhook of `secret_scanning_alert` events, signed in
    `X-Hub-Signature-256`; the alert's secret type and repository pick the credential
    through `match`."""


_SECRET_REFERENCE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$")


class RateLimit(_Model):
    """At most `events` new events per trigger in any `per`; past it the trigger answers
    429 with Retry-After (a redelivery of an event already taken is still answered)."""

    events: int = Field(default=30, ge=1, le=10_000)
    """How many new events (distinct event ids) may arrive in one `per`."""
    per: Duration = timedelta(hours=1)
    """The sliding window the events are counted in."""

    @field_validator("per")
    @classmethod
    def _positive(cls, per: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= per <= timedelta(days=1):
            raise ValueError("per must be from 1s to 1d")
        return per


class SecretMatch(_Model):
    """Which credential a secret-scanning alert names: its GitHub secret type (the
    alert's `secret_type`, e.g. `github_personal_access_token`) and, optionally, the
    repository it was found in (`owner/name`). Every match an alert fits is rotated."""

    secret_type: str = Field(min_length=1, max_length=200)
    """The alert's `alert.secret_type`."""
    repository: str | None = Field(default=None, min_length=3, max_length=200)
    """The alert's `repository.full_name`; none: any repository."""
    credential: Name
    """The credential of this estate that holds the leaked secret."""

    def fits(self, secret_type: str, repository: str | None) -> bool:
        return self.secret_type == secret_type and (
            self.repository is None
            or (repository is not None and self.repository.lower() == repository.lower())
        )


class TriggerSpec(_Model):
    """An inbound trigger: another system posts events to `POST /v1/events/rotate/NAME`
    and keyshift starts the rotations they name, with trigger `event`. Authenticated by
    an HMAC-SHA256 signature of the raw body under `secret_from`, or by an API token with
    `rotations:trigger`. An event id is taken once; freezes and approvals hold as for any
    rotation."""

    name: Name
    """The last segment of the route, e.g. `github` for `/v1/events/rotate/github`."""
    kind: TriggerKind = TriggerKind.GENERIC
    """`generic` or `github_secret_scanning` (payload and signature header)."""
    secret_from: str | None = None
    """The shared signing secret, `env:NAME` or `file:/path`; none: only API tokens may
    post to this trigger."""
    break_glass: bool = False
    """Its rotations run as break-glass (trigger `break-glass`): they start outside the
    policy's window. Freezes and approvals still hold."""
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    """How many new events it takes per period."""
    match: list[SecretMatch] = Field(default_factory=list)
    """`github_secret_scanning` only: the credential each leaked secret type is."""

    @field_validator("secret_from")
    @classmethod
    def _reference(cls, ref: str | None) -> str | None:
        if ref is not None and not _SECRET_REFERENCE.match(ref):
            raise ValueError("must be a reference, env:NAME or file:/path, never the secret")
        return ref

    @field_validator("match")
    @classmethod
    def _match_is_githubs(cls, match: list[SecretMatch], info: ValidationInfo) -> list[SecretMatch]:
        # `kind` is declared before `match`, so it is validated (or missing) by now.
        if match and info.data.get("kind") != TriggerKind.GITHUB_SECRET_SCANNING:
            raise ValueError("is for github_secret_scanning triggers only")
        return match


class Estate(_Model):
    """The whole estate file. Names and references across it are checked by
    `reference_problems`, which also runs on files whose fields are invalid."""

    integrations: list[IntegrationSpec] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)
    credentials: list[CredentialSpec] = Field(default_factory=list)
    alerts: Alerts = Field(default_factory=Alerts)
    """Expiry warnings and reports, and where they are sent."""
    governance: Governance = Field(default_factory=Governance)
    """Allowlist, ownership and approver groups."""
    notifications: Notifications = Field(default_factory=Notifications)
    """Where keyshift tells operators of failures, rollbacks and approval requests."""
    freeze: list[FreezeSpec] = Field(default_factory=list)
    """Change freezes declared in the file (GitOps), e.g. `[{environment: prod, reason:
    "Q4 change freeze", until: 2026-12-31T18:00:00Z}]`."""
    worker: Worker = Field(default_factory=Worker)
    """How many rotations `keyshift worker` runs at once."""
    triggers: list[TriggerSpec] = Field(default_factory=list)
    """Inbound triggers that start rotations for events, e.g. `[{name: github, kind:
    github_secret_scanning, secret_from: env:GITHUB_WEBHOOK_SECRET, match:
    [{secret_type: github_personal_access_token, credential: ci-token}]}]`."""

    def trigger(self, name: str) -> TriggerSpec | None:
        """The trigger declared under `name`, if any."""
        return next((t for t in self.triggers if t.name == name), None)

    def integration_names(self, cred: CredentialSpec) -> list[str]:
        """The integrations a credential connects through: its provider's and actions'
        (`CredentialSpec.integration_names`), then the agents its actions run on."""
        names = cred.integration_names()
        for action in cred.actions:
            if action.agent_id is None:
                continue
            for integration in self.integrations:
                if integration.is_agent(action.agent_id) and integration.name not in names:
                    names.append(integration.name)
                    break
        return names

    def policy_for(self, cred: CredentialSpec) -> Policy:
        """The effective policy of a credential: inline, named, or the default."""
        if isinstance(cred.policy, Policy):
            return cred.policy
        return self.named_policy(cred.policy or DEFAULT_POLICY_NAME) or Policy()

    def named_policy(self, name: str) -> Policy | None:
        """The policy declared under `name`, if the estate declares one (`default`: the
        estate's own default, which credentials without a policy follow)."""
        return next((p for p in self.policies if p.name == name), None)


def _items(data: Mapping[str, Any], field: str) -> list[tuple[int, Mapping[str, Any]]]:
    items = data.get(field)
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, Mapping)]


def reference_problems(data: Mapping[str, Any]) -> list[ConfigError]:
    """Duplicate names and references to undeclared policies or integrations.

    Works on the raw parsed file, so these problems are reported in the same pass as
    field errors instead of one round later.
    """
    problems: list[ConfigError] = []
    declared: dict[str, set[str]] = {}
    for field in ("integrations", "policies", "credentials", "triggers"):
        seen = declared.setdefault(field, set())
        for i, item in _items(data, field):
            name = item.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                problems.append(ConfigError(f"{field}[{i}].name", f"'{name}' is declared twice"))
            seen.add(name)
    problems.extend(_freeze_problems(data, declared["credentials"]))
    for i, trigger in _items(data, "triggers"):
        for j, match in _items(trigger, "match"):
            name = match.get("credential")
            if isinstance(name, str) and name not in declared["credentials"]:
                problems.append(
                    ConfigError(
                        f"triggers[{i}].match[{j}].credential", f"no credential named '{name}'"
                    )
                )
    policies = declared["policies"] | {DEFAULT_POLICY_NAME}
    for i, cred in _items(data, "credentials"):
        policy = cred.get("policy")
        if isinstance(policy, str) and policy not in policies:
            problems.append(ConfigError(f"credentials[{i}].policy", f"no policy named '{policy}'"))
        provider = cred.get("provider")
        ref = provider.get("integration") if isinstance(provider, Mapping) else None
        if isinstance(ref, str) and ref not in declared["integrations"]:
            problems.append(
                ConfigError(
                    f"credentials[{i}].provider.integration", f"no integration named '{ref}'"
                )
            )
        for j, action in _items(cred, "actions"):
            config = action.get("config")
            ref = config.get("integration") if isinstance(config, Mapping) else None
            if isinstance(ref, str) and ref not in declared["integrations"]:
                problems.append(
                    ConfigError(
                        f"credentials[{i}].actions[{j}].config.integration",
                        f"no integration named '{ref}'",
                    )
                )
    return problems


_FREEZE_SCOPES = ("credential", "owner", "environment", "all")


def _freeze_problems(data: Mapping[str, Any], credentials: set[str]) -> list[ConfigError]:
    """A `freeze:` entry must name a credential the estate declares, and no two entries
    may freeze the same thing (apply would not know which one to keep)."""
    problems: list[ConfigError] = []
    seen: dict[tuple[str, object], int] = {}
    for i, item in _items(data, "freeze"):
        named = [(k, item[k]) for k in _FREEZE_SCOPES if item.get(k) not in (None, False)]
        if len(named) != 1:
            continue  # reported by the model
        key = named[0]
        if key[0] == "credential" and isinstance(key[1], str) and key[1] not in credentials:
            problems.append(
                ConfigError(f"freeze[{i}].credential", f"no credential named '{key[1]}'")
            )
        if not isinstance(key[1], str | bool):
            continue
        if key in seen:
            problems.append(
                ConfigError(
                    f"freeze[{i}]", f"freezes the same as freeze[{seen[key]}]; keep one of them"
                )
            )
        seen.setdefault(key, i)
    return problems
