"""`entra_client_secret`: client secrets of an Entra ID app registration, through Microsoft Graph.

A rotation adds a password credential to the application (`addPassword`) while the
old one stays valid, so consumers switch without a window; revocation removes the
old one (`removePassword`). keyshift signs in to Graph with its own identity (the
`entra` integration), which needs `Application.ReadWrite.OwnedBy` (as an owner of the
application) or `Application.ReadWrite.All`.

Idempotency. Graph shows a secret's value only in the answer to `addPassword`, so a
value lost in a crash cannot be read again. Each secret a rotation adds carries the
display name `<display_name_prefix> <marker>`: a repeated `create` of the same
rotation finds the secret of that name, removes it and adds a fresh one, so exactly
one secret of the rotation remains on the application. The version's `provider_ref`
is `<appId>:<marker>`, the same across such repeats; the secret's current `keyId`
is in the version's attributes (`key_id`).

Adoption. An application keyshift starts to manage may already hold client secrets
made by hand. With `adopt_existing: retire` the first rotation takes them over as its
old version (keyIds only: their values were never known to keyshift) and removes them
with `removePassword` when the grace period ends, as it would remove a previous
keyshift secret. With `keep` (the default) they stay valid until someone removes them.

App management policies. A tenant may forbid client secrets or cap their lifetime with
an app management policy (Microsoft Graph's `tenantAppManagementPolicy` and
`appManagementPolicy`). The policy in force for the application is the one assigned to it
(`GET /applications/{id}/appManagementPolicies`, at most one), which replaces the tenant
default, else the tenant default (`GET /policies/defaultAppManagementPolicy`); a disabled
policy (`isEnabled: false`) restricts nothing. A password restriction in it applies unless
its `state` is `disabled` or the application was created before its
`restrictForAppsCreatedAfterDateTime`. Then:

- `passwordAddition` makes Entra ID refuse `addPassword` (400
  `CredentialTypeNotAllowedAsPerAppPolicy`): preflight is blocked, naming the policy;
  manual review instead when the restriction exempts callers by custom security
  attribute, which keyshift cannot check for its own identity.
- `passwordLifetime` makes Entra ID refuse a secret that lives longer than `maxLifetime`
  (400 `CredentialInvalidLifetimeAsPerAppPolicy`), Graph's two-year default included:
  `create` caps the secret's `endDateTime` at `maxLifetime` from now (less a margin for
  clock skew) and records the cap in the version's attributes (`lifetime_cap`, the
  `maxLifetime`, and `lifetime_cap_policy`); preflight says so. A year in `maxLifetime`
  counts 365 days and a month 28, so the cap never exceeds the policy.
- `customPasswordAddition` forbids secrets the caller chooses; `addPassword` lets Entra
  ID generate the secret, so it does not concern keyshift.

Reading the policies needs `Policy.Read.All`, which keyshift's identity may lack. Without
it preflight stays ready and says a restriction would only show at `creating`, where a
refusal fails the rotation before anything is published, with an error naming the
policy's rule.

`verify` signs in as the application itself with the version's secret (the client
credentials grant): the proof a consumer would get. Entra ID may take a short while
to accept a secret just added; a refusal then makes the step fail and be retried.

Residual use. Entra ID keeps no sessions, but its sign-in log records each time a
consumer gets a token with a client secret, and which secret (keyId) it used.
`residual_use` counts the application's sign-ins with the old version's keyId (each
adopted keyId, for an adopted version) over a look-back window. What this relies on,
from Microsoft's Graph documentation:

- `GET /beta/auditLogs/signIns` lists sign-ins newest first (`createdDateTime`
  descending), pages of at most 1,000 linked by `@odata.nextLink`. Without a
  `signInEventTypes` filter it lists only interactive user sign-ins; an application
  signing in as itself is `signInEventTypes/any(t: t eq 'servicePrincipal')`.
  `appId` filters with `eq`, `createdDateTime` with `ge`/`le`.
- The credential used is `servicePrincipalCredentialKeyId` (a secret's or a
  certificate's keyId; `servicePrincipalCredentialThumbprint` for certificates). Only
  the beta `signIn` resource has it, and it cannot be filtered on, so keyshift reads the
  application's sign-ins in the window and picks the keyIds out itself.
- Reading the log needs the application permission `AuditLog.Read.All` and a Microsoft
  Entra ID P1 or P2 licence; logs are kept for the licence's retention (30 days).
- Throttling is 429 with `Retry-After`, absorbed by the Graph client's retries.
- Sign-ins reach the log late: Microsoft gave 2 minutes (95th percentile) and 5 minutes
  (99th) for sign-in logs; operators report longer for non-interactive sign-ins.
- `GET /beta/reports/appCredentialSignInActivities` (keyId and last sign-in per
  credential) was considered and not used: it is a preview report, served in the global
  cloud only, with one last sign-in time per credential and no count, addresses or
  resources, and it has been reported to return nothing for long periods.

The window is `sign_in_lookback` plus the policy's `residual_use.check_every`, so a
sign-in that reaches the log up to `sign_in_lookback` late is still seen by some check.
A consumer caches its token (about an hour) and signs in again only when it expires,
so the 2-hour default covers a consumer still on the old secret that signs in once an
hour; the engine then revokes once no check has seen a sign-in for `quiet_for`, at the
earliest about `sign_in_lookback + check_every + quiet_for` after the last one. A
sign-in that reaches the log later than `sign_in_lookback` is missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.estate import Policy
from keyshift.errors import KeyshiftError, PermanentError, TransientError
from keyshift.providers.base import (
    AdoptedVersion,
    AdoptRequest,
    Capability,
    CreateRequest,
    IssuedVersion,
    ListRequest,
    PreflightRequest,
    PreflightResult,
    Propagation,
    Readiness,
    RevokeRequest,
    RevokeResult,
    UsageReport,
    UsageRequest,
    VerifyRequest,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.connection import ConnectedProvider
from keyshift.providers.graph import (
    AUDIT_LOG_ROLE,
    NEEDED_PERMISSION,
    POLICY_PERMISSION,
    WRITE_ROLES,
    Application,
    AppManagementPolicy,
    GraphClient,
    GraphRequestFailed,
    PasswordRestriction,
    SignIn,
    TokenRefused,
    azure_identity_token_source,
    odata_literal,
    parse_iso_duration,
    token_roles,
)

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

log = structlog.get_logger("keyshift.providers.entra")

MIN_SIGN_IN_LOOKBACK: Final = timedelta(minutes=5)
"""Microsoft's documented 99th-percentile delay before a sign-in appears in the log."""
MAX_SIGN_IN_LOOKBACK: Final = timedelta(days=7)
"""Sign-in logs are kept 7 days without a premium licence; longer reads add nothing."""
LISTED_AT_MOST: Final = 20
"""Distinct client addresses and resources kept in the residual-use evidence."""


NOT_YET_CODES = frozenset({"AADSTS7000215", "AADSTS7000222"})
"""Sign-in refusals Entra ID gives a secret it has not replicated yet (invalid secret,
expired keys); within the propagation timeout they mean "not yet", not "wrong"."""
GRAPH_DEFAULT_LIFETIME: Final = timedelta(days=730)
"""The lifetime Graph gives a secret added without `endDateTime`: two years."""
CAP_MARGIN: Final = timedelta(minutes=5)
"""How much earlier than `maxLifetime` from keyshift's clock a capped secret ends, so a
clock ahead of Entra ID's does not make the secret outlive the policy's limit."""
POLICY_REFUSALS: Final = {
    "CredentialTypeNotAllowedAsPerAppPolicy": "passwordAddition",
    "CredentialInvalidLifetimeAsPerAppPolicy": "passwordLifetime",
}
"""addPassword's 400 codes for an app management policy's refusal, and the rule behind each."""
TOKENS_STAY_VALID: Final = (
    "access tokens issued with the removed secret stay valid until they expire (up to 90 minutes)"
)


@dataclass(frozen=True)
class SecretRules:
    """What the app management policy in force allows for the application's client secrets."""

    policy: AppManagementPolicy
    addition: PasswordRestriction | None
    """The `passwordAddition` restriction that applies to the application, if any."""
    lifetime: PasswordRestriction | None
    """The `passwordLifetime` restriction that applies to the application, if any."""
    max_lifetime: timedelta | None
    """`lifetime`'s `maxLifetime`, None if there is none or it does not parse."""

    @classmethod
    def of(cls, policy: AppManagementPolicy, created: datetime | None) -> SecretRules:
        """The restrictions of `policy` that apply to an application created at `created`."""
        applying = (
            {r.restriction_type: r for r in policy.password_restrictions if r.applies_to(created)}
            if policy.is_enabled
            else {}
        )
        lifetime = applying.get("passwordLifetime")
        max_lifetime: timedelta | None = None
        if lifetime is not None and lifetime.max_lifetime is not None:
            try:
                max_lifetime = parse_iso_duration(lifetime.max_lifetime)
            except ValueError:
                max_lifetime = None
        return cls(policy, applying.get("passwordAddition"), lifetime, max_lifetime)

    @property
    def limit(self) -> str:
        """The `maxLifetime` as the policy writes it, e.g. `P90D`; empty without one."""
        return (self.lifetime.max_lifetime if self.lifetime else None) or ""

    def cap(self, requested: timedelta) -> timedelta | None:
        """The lifetime to ask for instead of `requested`, or None if `requested` is allowed."""
        if self.max_lifetime is None or self.max_lifetime >= requested:
            return None
        return self.max_lifetime - min(CAP_MARGIN, self.max_lifetime / 10)


def _since(restriction: PasswordRestriction) -> str:
    moment = restriction.applies_from
    return f" for apps created after {moment.date().isoformat()}" if moment else ""


class EntraSecretConfig(BaseModel):
    """Which application's client secrets to rotate."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str
    """The `entra` integration (tenant and keyshift's identity) to use; may be left out when
    the estate declares exactly one."""
    app_id: str = Field(min_length=1)
    """The application (client) id, `appId`, of the app registration whose secrets rotate."""
    display_name_prefix: str = Field(default="keyshift", min_length=1)
    """Start of the display name of each secret keyshift adds; the rotation marker follows."""
    adopt_existing: Literal["keep", "retire"] = "keep"
    """What the first rotation does with client secrets the application already holds that
    keyshift did not add (display name not `<display_name_prefix> <marker>`): `keep` leaves
    them valid; `retire` treats them as the old version, so they are removed (by keyId)
    when the grace period ends, after the residual-use and approval gates like any old
    version. Secrets added by hand later are not touched; `keyshift entra report` lists them."""
    sign_in_lookback: Duration = timedelta(hours=2)
    """With a `residual_use` policy: how far back each check reads Entra ID's sign-in log
    for sign-ins with the old secret, on top of the policy's `check_every`. It must cover
    the log's delay (minutes) and, to see consumers that cache their token, the time
    between their sign-ins (about an hour). Between 5m and 7d; keyshift's identity needs
    AuditLog.Read.All."""

    @field_validator("sign_in_lookback")
    @classmethod
    def _lookback_in_range(cls, value: timedelta) -> timedelta:
        if not MIN_SIGN_IN_LOOKBACK <= value <= MAX_SIGN_IN_LOOKBACK:
            raise ValueError(
                f"must be between {format_duration(MIN_SIGN_IN_LOOKBACK)} (the sign-in log's "
                f"delay) and {format_duration(MAX_SIGN_IN_LOOKBACK)} (its shortest retention)"
            )
        return value


class EntraSecretProvider(ConnectedProvider[EntraSecretConfig, EntraIntegration]):
    """Adds, verifies and removes client secrets of an Entra ID application."""

    kind: ClassVar[str] = "entra_client_secret"
    Config: ClassVar[type[BaseModel]] = EntraSecretConfig
    propagation: ClassVar[Propagation] = Propagation(
        timedelta(minutes=5),
        "Entra ID replicates a new client secret before it signs in (AADSTS7000215 until "
        "then): 4-18 s reported, about 2 min in the tail; a removed secret keeps signing in "
        "for minutes, and tokens issued with it stay valid up to 90 min",
    )
    integration_type: ClassVar[str] = "entra"
    integration_model = EntraIntegration

    @classmethod
    def describe(
        cls, config: EntraSecretConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """What it changes: the client secrets of one application in one tenant."""
        integration = cls.declared(config, integrations)
        tenant = integration.tenant_id if integration is not None else "(integration not declared)"
        return {
            "integration": config.integration,
            "tenant": tenant,
            "app_id": config.app_id,
            "changes": "client secrets (passwordCredentials) of the application",
        }

    def __init__(self, config: EntraSecretConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._credential: AsyncTokenCredential | None = None
        self._graph: GraphClient | None = None

    @property
    def capabilities(self) -> frozenset[Capability]:
        held = {Capability.DUAL_ACTIVE, Capability.AUTHENTICATES, Capability.RESIDUAL_USE}
        if self.config.adopt_existing == "retire":
            held.add(Capability.ADOPTS_EXISTING)
        return frozenset(held)

    # --- connections ---------------------------------------------------------------------

    def _client(self) -> GraphClient:
        if self._graph is None:
            integration = self._integration
            self._credential = credential = integration.credential(self.context)
            self._graph = GraphClient(
                azure_identity_token_source(credential),
                self.context,
                base_url=integration.graph_url,
                verify=integration.ssl_verify(),
            )
        return self._graph

    async def _application(self, graph: GraphClient) -> Application:
        app_id = self.config.app_id
        found = [app async for app in graph.list_applications(f"appId eq {odata_literal(app_id)}")]
        if not found:
            raise PermanentError(
                f"no application with appId {app_id} in tenant {self._integration.tenant_id} "
                "(or keyshift may not read it)"
            )
        return found[0]

    async def _secret_rules(self, graph: GraphClient, app: Application) -> SecretRules:
        """The restrictions on client secrets in force for `app`: its assigned app
        management policy, else the tenant default. Raises GraphRequestFailed (403 without
        Policy.Read.All) when a policy cannot be read."""
        assigned = await graph.list_app_management_policies(app.id)
        policy = assigned[0] if assigned else await graph.get_default_app_management_policy()
        return SecretRules.of(policy, app.created)

    def _requested_lifetime(self, policy: Policy) -> timedelta:
        return policy.max_lifetime or GRAPH_DEFAULT_LIFETIME

    def _display_name(self, marker: str) -> str:
        return f"{self.config.display_name_prefix} {marker}"

    def _marker_of(self, display_name: str | None) -> str | None:
        head = self.config.display_name_prefix + " "
        if display_name and display_name.startswith(head) and len(display_name) > len(head):
            return display_name[len(head) :]
        return None

    def _ref(self, marker: str) -> str:
        return f"{self.config.app_id}:{marker}"

    async def _remove(self, graph: GraphClient, app: Application, key_id: str) -> bool:
        """Remove `key_id`; False if Graph no longer holds it."""
        try:
            await graph.remove_password(app.id, key_id)
        except GraphRequestFailed as exc:
            if exc.status in (400, 404) and "keyid" in exc.graph_message.lower():
                return False
            raise
        return True

    # --- the contract --------------------------------------------------------------------

    async def create(self, request: CreateRequest) -> IssuedVersion:
        """Add a client secret named `<prefix> <marker>`; the old ones stay valid.

        A repeat for the same rotation removes the secret of that name (its value was
        lost) and adds a fresh one: same version, new value, one secret per rotation.
        """
        graph = self._client()
        app = await self._application(graph)
        display_name = self._display_name(request.marker)
        for orphan in app.password_credentials:
            if orphan.display_name == display_name:
                await self._remove(graph, app, orphan.key_id)
                log.info("entra.orphan_removed", app_id=self.config.app_id, key_id=orphan.key_id)
        lifetime = request.policy.max_lifetime
        now = self.context.now()
        end = now + lifetime if lifetime is not None else None
        # No lifetime in the policy (end None): Graph's default end applies.
        capped = await self._lifetime_cap(graph, app, self._requested_lifetime(request.policy))
        attributes = {
            "key_id": "",
            "hint": "",
            "app_id": self.config.app_id,
            "tenant_id": self._integration.tenant_id,
        }
        if capped is not None:
            cap, rules = capped
            end = now + cap
            attributes["lifetime_cap"] = rules.limit
            attributes["lifetime_cap_policy"] = rules.policy.label
            log.info(
                "entra.lifetime_capped",
                app_id=self.config.app_id,
                policy_id=rules.policy.id,
                max_lifetime=rules.limit,
                requested=format_duration(self._requested_lifetime(request.policy)),
                end=end.isoformat(),
            )
        try:
            added = await graph.add_password(app.id, display_name, end)
        except GraphRequestFailed as exc:
            refusal = self._refusal(exc)
            if refusal is None:
                raise
            raise refusal from exc
        attributes["key_id"] = added.key_id
        attributes["hint"] = added.hint or ""
        return IssuedVersion(
            provider_ref=self._ref(request.marker),
            value=added.secret,
            attributes=attributes,
            expires_at=added.end or end,
        )

    async def _lifetime_cap(
        self, graph: GraphClient, app: Application, requested: timedelta
    ) -> tuple[timedelta, SecretRules] | None:
        """The shorter lifetime a `passwordLifetime` restriction in force allows, with the
        rules it comes from; None when `requested` is allowed or no policy can be read (a
        refusal of addPassword then names the rule)."""
        try:
            rules = await self._secret_rules(graph, app)
        except GraphRequestFailed as exc:
            # Reading the policy is advisory: without Policy.Read.All addPassword still
            # runs, and Entra ID's refusal, if any, is reported by `_refusal`.
            log.info(
                "entra.app_policy_unreadable",
                app_id=self.config.app_id,
                status=exc.status,
                code=exc.code,
            )
            return None
        cap = rules.cap(requested)
        return (cap, rules) if cap is not None else None

    def _refusal(self, exc: GraphRequestFailed) -> PermanentError | None:
        """addPassword's error reworded when an app management policy refused it, else None."""
        rule = POLICY_REFUSALS.get(exc.code) if exc.status == 400 else None
        if rule is None:
            return None
        what = (
            "client secrets on this application"
            if rule == "passwordAddition"
            else "a client secret living this long"
        )
        hint = (
            "use a certificate, or exempt the application with an appManagementPolicy"
            if rule == "passwordAddition"
            else "shorten the credential policy's max_lifetime to the policy's maxLifetime "
            "(keyshift caps it itself when it may read the policy, with Policy.Read.All)"
        )
        return PermanentError(
            f"Entra ID refused addPassword on {self.config.app_id}: an app management policy's "
            f"{rule} restriction forbids {what} ({exc.code}: {exc.graph_message}); {hint}"
        )

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        """Sign in as the application with the version's secret (client credentials). A
        refusal is `ok=False` with the AADSTS code, and `not_yet` for the codes Entra ID
        gives a secret that is still replicating; an unreachable endpoint raises
        TransientError."""
        app_id = request.version.attributes.get("app_id") or self.config.app_id
        key_id = request.version.attributes.get("key_id", "")
        as_app = self._integration.credential(
            self.context, client_id=app_id, secret=request.version.value
        )
        async with as_app as credential:
            try:
                await azure_identity_token_source(credential)()
            except TokenRefused as exc:
                return VerifyResult(
                    ok=False,
                    detail=f"sign-in as {app_id} refused ({exc.code})",
                    # Entra ID answers these while a new secret replicates: "not yet".
                    not_yet=exc.code in NOT_YET_CODES,
                )
        return VerifyResult(ok=True, detail=f"signed in as {app_id} with secret {key_id}")

    async def adopt_existing(self, request: AdoptRequest) -> AdoptedVersion | None:
        """The client secrets of the application that keyshift did not add, as one
        version identified by their keyIds (`key_ids`, comma-separated); None if there
        are none. Changes nothing."""
        app = await self._application(self._client())
        found = [p for p in app.password_credentials if self._marker_of(p.display_name) is None]
        if not found:
            return None
        ends = [p.end for p in found if p.end is not None]
        return AdoptedVersion(
            provider_ref=f"{self.config.app_id}:adopted",
            attributes={
                "key_ids": ",".join(sorted(p.key_id for p in found)),
                "app_id": self.config.app_id,
                "tenant_id": self._integration.tenant_id,
            },
            expires_at=max(ends) if ends else None,
        )

    async def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Remove the version's secret from the application. Succeeds with
        `already_gone=True` if the application no longer holds it. Access tokens already
        issued with it stay valid until they expire (up to 90 minutes); the detail's
        `tokens` says so whenever a secret was removed.

        An adopted version (`key_ids` in its attributes) is removed keyId by keyId;
        keyIds already gone are skipped, so a repeat removes none twice."""
        graph = self._client()
        app = await self._application(graph)
        adopted = [k for k in request.version.attributes.get("key_ids", "").split(",") if k]
        if adopted:
            return await self._retire(graph, app, adopted)
        key_id = request.version.attributes.get("key_id", "")
        held = {p.key_id for p in app.password_credentials}
        if not key_id or key_id not in held:
            return RevokeResult(already_gone=True, detail={"key_id": key_id})
        if not await self._remove(graph, app, key_id):
            return RevokeResult(already_gone=True, detail={"key_id": key_id})
        log.info("entra.password_revoked", app_id=self.config.app_id, key_id=key_id)
        return RevokeResult(
            detail={
                "key_id": key_id,
                "remaining": str(len(held) - 1),
                "tokens": TOKENS_STAY_VALID,
            }
        )

    async def _retire(
        self, graph: GraphClient, app: Application, key_ids: list[str]
    ) -> RevokeResult:
        """Remove the adopted secrets, then read the application again to prove them gone:
        keyshift never held their values, so it cannot try a sign-in with them."""
        held = {p.key_id for p in app.password_credentials}
        removed: list[str] = []
        for key_id in key_ids:
            if key_id in held and await self._remove(graph, app, key_id):
                removed.append(key_id)
                log.info("entra.adopted_password_removed", app_id=self.config.app_id, key_id=key_id)
        after = {p.key_id for p in (await self._application(graph)).password_credentials}
        still = [k for k in key_ids if k in after]
        if still:
            raise PermanentError(
                f"application {self.config.app_id} still lists the adopted client secret(s) "
                f"{', '.join(still)} after removePassword"
            )
        detail = {
            "key_ids": ",".join(key_ids),
            "removed_key_ids": ",".join(removed),
            "gone_before_key_ids": ",".join(k for k in key_ids if k not in removed),
            "remaining": str(len(after)),
        }
        if removed:
            detail["tokens"] = TOKENS_STAY_VALID
        return RevokeResult(already_gone=not removed, detail=detail)

    async def residual_use(self, request: UsageRequest) -> UsageReport:
        """Sign-ins of the application with the version's secret (every adopted keyId, for
        an adopted version) in the sign-in log over the last `sign_in_lookback` plus the
        policy's `check_every`; failed attempts count too, as a consumer trying the old
        secret. `detail` has the count, the last sign-in, the distinct client addresses
        and resources, and the sign-ins with the application's other secrets. Changes
        nothing; a 403 (no AuditLog.Read.All, or no P1/P2 licence) raises
        GraphRequestFailed naming the permission."""
        attributes = request.version.attributes
        key_ids = [k for k in attributes.get("key_ids", "").split(",") if k]
        if not key_ids and attributes.get("key_id"):
            key_ids = [attributes["key_id"]]
        if not key_ids:
            raise PermanentError(
                f"version {request.version.provider_ref} names no keyId, so its sign-ins "
                "cannot be told from the application's others"
            )
        app_id = attributes.get("app_id") or self.config.app_id
        window = self._sign_in_window(request.policy)
        since = self.context.now() - window
        wanted = {k.lower() for k in key_ids}
        matched: list[SignIn] = []
        others = 0
        async for sign_in in self._client().list_service_principal_sign_ins(app_id, since):
            if sign_in.key_id is not None and sign_in.key_id.lower() in wanted:
                matched.append(sign_in)
            else:
                others += 1
        addresses = sorted({s.ip_address for s in matched if s.ip_address})
        resources = sorted({s.resource for s in matched if s.resource})
        detail: dict[str, Any] = {
            "source": "Entra ID sign-in log (service principal sign-ins)",
            "app_id": app_id,
            "key_ids": ",".join(key_ids),
            "window": format_duration(window),
            "since": since.isoformat(),
            "sign_ins": len(matched),
            "failed_sign_ins": sum(1 for s in matched if s.error_code != 0),
            "last_sign_in": max(s.created for s in matched).isoformat() if matched else None,
            "ip_addresses": addresses[:LISTED_AT_MOST],
            "resources": resources[:LISTED_AT_MOST],
            "sign_ins_with_other_secrets": others,
        }
        if len(addresses) > LISTED_AT_MOST or len(resources) > LISTED_AT_MOST:
            detail["listed_at_most"] = LISTED_AT_MOST
        return UsageReport(sessions=len(matched), detail=detail)

    def _sign_in_window(self, policy: Policy | None) -> timedelta:
        """The look-back of one check: the log's allowed delay plus the time since the
        previous check, so a late sign-in still lands in some check's window."""
        gate = policy.residual_use if policy is not None else None
        return self.config.sign_in_lookback + (gate.check_every if gate else timedelta(0))

    async def list_versions(self, request: ListRequest) -> list[VersionInfo]:
        """Every client secret of the application. Those keyshift added carry the
        rotation's marker; others are listed by keyId."""
        app = await self._application(self._client())
        out: list[VersionInfo] = []
        for p in app.password_credentials:
            marker = self._marker_of(p.display_name)
            out.append(
                VersionInfo(
                    provider_ref=self._ref(marker) if marker else p.key_id,
                    marker=marker,
                    created_at=p.start,
                    expires_at=p.end,
                )
            )
        return out

    async def aclose(self) -> None:
        graph, credential = self._graph, self._credential
        self._graph = self._credential = None
        if graph is not None:
            await graph.aclose()
        if credential is not None:
            await credential.close()

    # --- preflight -----------------------------------------------------------------------

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Sign in to Graph, read the token's `roles` claim, find the application by its
        appId and read the app management policy in force for it; with a `residual_use`
        policy, also read one page of its sign-in log. Changes nothing.

        Blocked when Entra ID refuses keyshift's sign-in (the AADSTS code is named), the
        token holds neither Application.ReadWrite.OwnedBy nor Application.ReadWrite.All,
        the policy has `residual_use` and the token lacks AuditLog.Read.All (or the
        sign-in log refuses to answer), no application has the appId (or keyshift may
        not read it), or an app management policy forbids adding client secrets to it
        (`passwordAddition`). Manual review when the token's claims cannot be read, so the
        permissions stay unproven; when the `passwordAddition` restriction exempts callers
        by custom security attribute; when a `passwordLifetime` has a `maxLifetime` that
        does not parse; or when its cap leaves a secret no longer than the credential
        policy's `rotate_before_expiry`. A policy keyshift may not read (no
        Policy.Read.All) leaves it ready, saying so.
        """
        tenant = self._integration.tenant_id
        reads_log = request.policy is not None and request.policy.residual_use is not None
        try:
            graph = self._client()
            roles = token_roles(await graph.token())
            if roles is not None and not any(r in WRITE_ROLES for r in roles):
                granted = ", ".join(roles) or "none"
                return PreflightResult(
                    Readiness.BLOCKED,
                    f"keyshift's identity in tenant {tenant} lacks {NEEDED_PERMISSION}, "
                    f"needed to add and remove client secrets (granted: {granted})",
                )
            if reads_log and roles is not None and AUDIT_LOG_ROLE not in roles:
                return PreflightResult(
                    Readiness.BLOCKED,
                    f"keyshift's identity in tenant {tenant} lacks the Graph application "
                    f"permission {AUDIT_LOG_ROLE}, needed to read the sign-in log for the "
                    f"policy's residual_use (granted: {', '.join(roles)})",
                )
            app = await self._application(graph)
            if reads_log:
                window = self._sign_in_window(request.policy)
                since = self.context.now() - window
                # One page of one entry proves the log answers (permission and licence).
                async for _ in graph.list_service_principal_sign_ins(
                    app.app_id, since, page_size=1
                ):
                    break
            rules: SecretRules | GraphRequestFailed
            try:
                rules = await self._secret_rules(graph, app)
            except GraphRequestFailed as exc:
                # Advisory: the policy only explains a refusal addPassword would give anyway.
                rules = exc
        except TransientError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        secrets = self._secrets_preflight(rules, request.policy)
        if secrets.readiness == Readiness.BLOCKED:
            return secrets
        found = (
            f"application {app.display_name} ({app.app_id}) holds "
            f"{len(app.password_credentials)} client secret(s)"
        )
        if roles is None:
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"{found}; the token's roles claim is not readable, so the permission to add "
                f"and remove client secrets is unproven; {secrets.reason}",
            )
        held = [r for r in roles if r in WRITE_ROLES]
        owned_only = held == ["Application.ReadWrite.OwnedBy"]
        log_read = (
            f"; residual_use reads the sign-in log ({AUDIT_LOG_ROLE}) over the last "
            f"{format_duration(self._sign_in_window(request.policy))} at each check"
            if reads_log
            else ""
        )
        return PreflightResult(
            secrets.readiness,
            f"signed in to tenant {tenant}; granted {', '.join(held)}; {found}"
            + ("; keyshift must be an owner of the application" if owned_only else "")
            + log_read
            + f"; {secrets.reason}",
        )

    def _secrets_preflight(
        self, rules: SecretRules | GraphRequestFailed, policy: Policy | None
    ) -> PreflightResult:
        """What the app management policy in force means for adding this rotation's secret."""
        app_id = self.config.app_id
        if isinstance(rules, GraphRequestFailed):
            why = (
                f"Graph answered 403 {rules.code}; keyshift needs {POLICY_PERMISSION}"
                if rules.status == 403
                else f"Graph answered {rules.status} {rules.code}"
            )
            return PreflightResult(
                Readiness.READY,
                f"the app management policy in force could not be read ({why}), so a "
                "restriction on client secrets would only show at creating",
            )
        label = rules.policy.label
        if rules.addition is not None:
            remedy = (
                "exempt the application with an appManagementPolicy"
                if rules.policy.tenant_default
                else "disable that restriction in the policy"
            )
            text = f"{label} restricts passwordAddition{_since(rules.addition)}"
            if rules.addition.exempts_actors:
                return PreflightResult(
                    Readiness.MANUAL_REVIEW,
                    f"{text} except for callers with certain custom security attributes; "
                    f"keyshift cannot tell whether its identity is exempt, so addPassword on "
                    f"{app_id} may be refused",
                )
            return PreflightResult(
                Readiness.BLOCKED,
                f"{text}; keyshift cannot add a client secret to {app_id} (use a certificate, "
                f"or {remedy})",
            )
        if rules.lifetime is None:
            return PreflightResult(Readiness.READY, f"{label} does not restrict its client secrets")
        limit = f"{rules.limit} (passwordLifetime{_since(rules.lifetime)})"
        if rules.max_lifetime is None:
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"{label} limits client secrets to {limit}, which keyshift cannot read as "
                "a duration; addPassword may be refused",
            )
        max_lifetime = policy.max_lifetime if policy is not None else None
        requested = max_lifetime or GRAPH_DEFAULT_LIFETIME
        cap = rules.cap(requested)
        if cap is None:
            return PreflightResult(
                Readiness.READY,
                f"{label} limits client secrets to {limit}; the rotation asks for "
                f"{format_duration(requested)}",
            )
        asked = "the policy's max_lifetime" if max_lifetime else "Graph's default, no max_lifetime"
        text = (
            f"{label} limits client secrets to {limit}, shorter than the "
            f"{format_duration(requested)} the rotation would ask for ({asked}): the "
            f"secret's endDateTime will be capped at {rules.limit} from its creation"
        )
        early = policy.rotate_before_expiry if policy is not None else None
        if early is not None and cap <= early:
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"{text}, which is not longer than rotate_before_expiry "
                f"({format_duration(early)}), so the new secret would be due for rotation "
                "as soon as it is added",
            )
        return PreflightResult(Readiness.READY, text)
