"""SQLAlchemy 2 tables. The same models run on SQLite (embedded) and PostgreSQL.

Times are stored as timezone-aware UTC. Secret values live only in
`versions.ciphertext`, sealed by `keyshift.store.crypto`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware UTC, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware values")
        return value

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """A naive timestamp read as UTC, after the driver's own parsing, as one function
        (in place of `process_result_value`): a status page reads 30,000 timestamps, and
        the three calls a TypeDecorator makes of each cost more than the parsing.
        SQLite's text (`2026-12-07 15:37:15.123456`, UTC as written) is read as UTC by
        `fromisoformat` in one call."""
        parse = self.impl_instance.result_processor(dialect, coltype)
        utc, read_iso = UTC, datetime.fromisoformat

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            if isinstance(value, str):
                try:
                    return read_iso(value + "+00:00")
                except ValueError:
                    pass  # not as SQLAlchemy writes it: its own parser decides
            moment = cast(datetime, parse(value) if parse is not None else value)
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=utc)

        return process


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class EstateRevision(Base):
    """Every applied estate document, newest last: what was declared, when and by whom."""

    __tablename__ = "estate_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    applied_at: Mapped[datetime]
    applied_by: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]]


class IntegrationRow(Base):
    __tablename__ = "integrations"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class CredentialRow(Base):
    """A declared credential. `removed_at` set = dropped from the estate; history stays."""

    __tablename__ = "credentials"
    __table_args__ = (Index("ix_credentials_issuer_app", "issuer_app_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str | None] = mapped_column(String(200))
    environment: Mapped[str | None] = mapped_column(String(64))
    provider_type: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]
    """The credential as declared, with its effective policy inlined."""
    digest: Mapped[str] = mapped_column(String(64))
    auto_rotate: Mapped[bool] = mapped_column(Boolean, default=False)
    scheduled: Mapped[bool] = mapped_column(Boolean, default=True)
    """Whether the worker may start rotations of it; cleared when removed from the estate."""
    active_rotation_id: Mapped[str | None] = mapped_column(String(36))
    """The one unfinished rotation, claimed by a conditional update so two cannot start."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]
    # What a status page reads of every credential, kept beside `spec` so that listing
    # 10,000 credentials reads columns, not JSON paths and window functions over history.
    policy_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    """`spec["policy"]` as JSON text (set with `spec`)."""
    provider_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    """`spec["credential"]["provider"]` as JSON text (set with `spec`)."""
    last_rotation_id: Mapped[str | None] = mapped_column(String(36))
    """The latest finished rotation (`engine.rows.note_finished`)."""
    last_rotation_state: Mapped[str | None] = mapped_column(String(32))
    """The final state of `last_rotation_id`."""
    last_rotated_at: Mapped[datetime | None]
    """When the latest completed rotation finished."""
    issuer_integration: Mapped[str | None] = mapped_column(String(128))
    issuer_app_id: Mapped[str | None] = mapped_column(String(64))
    """The application whose credentials it rotates, at an issuer holding applications
    (Entra ID): the provider's `integration` and `app_id` (set with `spec`); None when
    its provider names no application. The discovered inventory is joined on these."""


class VersionRow(Base):
    """One concrete value of a credential. Shown by id and fingerprint, never by value."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("credential_id", "serial"),
        Index("ix_versions_rotation", "rotation_id"),
        # Covers what status pages read of every current version (`due.standings`).
        Index("ix_versions_status", "status", "credential_id", "id", "fingerprint", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.id"))
    rotation_id: Mapped[str | None] = mapped_column(String(36))
    serial: Mapped[int] = mapped_column(Integer)
    provider_ref: Mapped[str] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(80))
    """`hmac-sha256:` and 32 hex digits (keyshift's HMAC of a secret value), or `sha256:`
    and the 64 hex digits of a certificate's thumbprint."""
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    master_key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    provenance: Mapped[str] = mapped_column(String(16), default="issued", server_default="issued")
    """How keyshift came to hold it (`Provenance`): `issued` by a rotation, `adopted`
    from the issuer without its value, or `imported` by an operator (`keyshift import`)."""


class RotationRow(Base):
    """One run of the state machine for one credential, with the plan it runs."""

    __tablename__ = "rotations"
    __table_args__ = (
        Index("ix_rotations_state", "state"),
        Index("ix_rotations_credential", "credential_id", "requested_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.id"))
    state: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(String(200))
    trigger: Mapped[str] = mapped_column(String(16), default="cli", server_default="cli")
    """How it was asked for: schedule, cli, api, web, event or break-glass (`Trigger`)."""
    event_trigger: Mapped[str | None] = mapped_column(String(128))
    """The inbound trigger whose event asked for it (`triggers:`), if one did."""
    event_id: Mapped[str | None] = mapped_column(String(200))
    """That event's id, as its sender gave it."""
    plan: Mapped[dict[str, Any]]
    plan_hash: Mapped[str] = mapped_column(String(64))
    keyshift_version: Mapped[str] = mapped_column(String(64))
    old_version_id: Mapped[str | None] = mapped_column(String(36))
    new_version_id: Mapped[str | None] = mapped_column(String(36))
    grace_until: Mapped[datetime | None]
    residual: Mapped[dict[str, Any] | None]
    """Residual-use evidence gathered during grace: checks, sessions, times."""
    attention: Mapped[str | None] = mapped_column(Text)
    """Why the run cannot finish as a healthy `completed` (a `continue` action failed)."""
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class StepRow(Base):
    """The journal: one row per attempt of one step, written before and after it runs."""

    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_rotation", "rotation_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rotation_id: Mapped[str] = mapped_column(ForeignKey("rotations.id"))
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    detail: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)


class AuditEntry(Base):
    """Append-only, hash-chained evidence. `hash` covers every other column and `prev_hash`."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Meta(Base):
    """Small named values; `audit_head` anchors the chain's last entry so truncation shows."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DiscoveredApp(Base):
    """An application registration found by `entra sync`. `removed_at` set = deleted in
    Entra ID (or its integration left the estate); the row stays as history."""

    __tablename__ = "discovered_apps"
    __table_args__ = (
        UniqueConstraint("integration", "object_id"),
        # The applications that estate credentials manage are looked up by appId.
        Index("ix_discovered_apps_app_id", "app_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    integration: Mapped[str] = mapped_column(String(128))
    object_id: Mapped[str] = mapped_column(String(64))
    app_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(256))
    owners: Mapped[list[str]] = mapped_column(JSON)
    first_seen: Mapped[datetime]
    changed_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]


class DiscoveredCredential(Base):
    """A client secret or certificate of a discovered application: ids, names and dates,
    never a value. Unmanaged until a credential in the estate rotates its application."""

    __tablename__ = "discovered_credentials"
    __table_args__ = (
        UniqueConstraint("app_row_id", "kind", "key_id"),
        Index("ix_discovered_credentials_end", "end_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_row_id: Mapped[str] = mapped_column(ForeignKey("discovered_apps.id"))
    kind: Mapped[str] = mapped_column(String(16))
    """`client_secret` or `certificate`."""
    key_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str | None] = mapped_column(String(256))
    hint: Mapped[str | None] = mapped_column(String(16))
    thumbprint: Mapped[str | None] = mapped_column(String(128))
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    first_seen: Mapped[datetime]
    removed_at: Mapped[datetime | None]


class AlertRow(Base):
    """An alert that was raised, so each is raised once: an expiry threshold crossed by a
    version, a secret created outside keyshift, a lifetime over the policy's maximum."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("subject", "kind", "threshold"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[str] = mapped_column(String(32))
    raised_at: Mapped[datetime]
    detail: Mapped[dict[str, Any]]
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)


class ApprovalRequestRow(Base):
    """A request for approval: before a rotation runs (`rotation`) or before its old
    version is revoked (`revoke`). It names the exact plan (hash) it is for."""

    __tablename__ = "approval_requests"
    __table_args__ = (Index("ix_approval_requests_rotation", "rotation_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    rotation_id: Mapped[str] = mapped_column(ForeignKey("rotations.id"))
    kind: Mapped[str] = mapped_column(String(16))
    plan_hash: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    """`pending`, `approved`, `rejected`, `superseded` (the plan changed) or `withdrawn`
    (the rotation was rolled back by hand before a decision)."""
    summary: Mapped[dict[str, Any]]
    """What approvers see: credential, app and tenant, expiry, steps, rollback plan."""
    decided_at: Mapped[datetime | None]


class ApprovalDecisionRow(Base):
    """One approver's decision on one request, for the plan hash they saw."""

    __tablename__ = "approval_decisions"
    __table_args__ = (UniqueConstraint("request_id", "approver"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("approval_requests.id"))
    approver: Mapped[str] = mapped_column(String(200))
    approved: Mapped[bool] = mapped_column(Boolean)
    comment: Mapped[str] = mapped_column(Text)
    plan_hash: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[datetime]


class PrincipalRow(Base):
    """Who may call the API: a user or a service account, holding built-in roles.
    `disabled_at` set = its tokens stop working at once; the row stays for the audit trail."""

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    """`user` or `service_account`."""
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None]


class ApiTokenRow(Base):
    """An API token of a principal. Only the SHA-256 of the token is stored; the token is
    shown once, when it is created. `id` is the public part the token starts with."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_principal", "principal_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class NotificationRow(Base):
    """An event to tell operators of (a rotation failed, an approval is requested),
    written in the same transaction as the change that causes it: the outbox."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_rotation", "rotation_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    """Sent with every delivery of this event (`X-Keyshift-Delivery`), retries included."""
    kind: Mapped[str] = mapped_column(String(40))
    rotation_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    credential: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    """Ids, names, states, steps and errors; never a value."""
    routed: Mapped[bool] = mapped_column(Boolean, default=False)
    """Whether its deliveries (one per channel the routes chose) were created."""


class NotificationDeliveryRow(Base):
    """One event's delivery to one channel: pending until it is delivered or, after the
    estate's `max_attempts`, dead-lettered."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "channel"),
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"))
    channel: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    """`pending`, `delivered` or `dead`."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None]
    reference: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """What the channel answered that names the message, e.g. a ticket key."""


class WebSessionRow(Base):
    """A signed-in browser of the web dashboard, started by presenting an API token. Only
    the SHA-256 of the session cookie is stored. The session lives as long as its token,
    its principal and its own lifetime allow, and ends at once when revoked."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_token", "token_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("api_tokens.id"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    """The absolute end of the session, however active it is."""
    last_seen_at: Mapped[datetime]
    """The last request (written at most once a minute); idle sessions end."""
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class FreezeRow(Base):
    """An operator's freeze: no rotation of the credentials it covers starts while it
    holds (`keyshift freeze`). Lifted ones are kept, as history."""

    __tablename__ = "freezes"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    """credential, owner, environment or all."""
    value: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(500))
    until: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    lifted_at: Mapped[datetime | None]
    lifted_by: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16), default="cli", server_default="cli")
    """Where it was declared (`FreezeSource`): cli, api, or the estate's `freeze:` block."""


class TriggerEventRow(Base):
    """An event an inbound trigger took: its id (so a redelivery starts nothing new and
    is answered with the first rotations), when it came, and what it started. Rows are
    what the trigger's rate limit counts."""

    __tablename__ = "trigger_events"
    __table_args__ = (
        UniqueConstraint("trigger", "event_id"),
        Index("ix_trigger_events_received", "trigger", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    """`started` (some rotation started), `refused` (none did: a freeze, governance), or
    `pending` while it is being taken."""
    rotations: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    """What it started: [{credential, rotation_id}]."""
