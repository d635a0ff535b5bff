"""The `entra_client_secret` provider: adds, verifies and removes client secrets of an
Entra ID application. See `keyshift.providers.entra` for idempotency, adoption, app
management policies and residual use.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Final

import structlog
from pydantic import BaseModel

from keyshift.context import PluginContext
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import Policy
from keyshift.errors import PermanentError
from keyshift.providers import base
from keyshift.providers.base import (
    AdoptedVersion,
    Capability,
    IssuedVersion,
    PreflightResult,
    Propagation,
    RevokeResult,
    UsageReport,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.entra.application import GraphApplicationProvider
from keyshift.providers.entra.config import EntraSecretConfig
from keyshift.providers.entra.policy import (
    GRAPH_DEFAULT_LIFETIME,
    RulesMemo,
    app_preflight,
    lifetime_cap,
    refusal,
)
from keyshift.providers.entra.signins import sign_ins_with
from keyshift.providers.graph import (
    Application,
    GraphClient,
    GraphRequestFailed,
    TokenRefused,
    azure_identity_token_source,
)

if TYPE_CHECKING:
    pass

log = structlog.get_logger("keyshift.providers.entra")


NOT_YET_CODES = frozenset({"AADSTS7000215", "AADSTS7000222"})
"""Sign-in refusals Entra ID gives a secret it has not replicated yet (invalid secret,
expired keys); within the propagation timeout they mean "not yet", not "wrong"."""
TOKENS_STAY_VALID: Final = (
    "access tokens issued with the removed secret stay valid until they expire (up to 90 minutes)"
)


class EntraSecretProvider(GraphApplicationProvider[EntraSecretConfig]):
    """Adds, verifies and removes client secrets of an Entra ID application."""

    kind: ClassVar[str] = "entra_client_secret"
    Config: ClassVar[type[BaseModel]] = EntraSecretConfig
    capability_fields: ClassVar[tuple[str, ...]] = ("adopt_existing",)
    propagation: ClassVar[Propagation] = Propagation(
        timedelta(minutes=5),
        "Entra ID replicates a new client secret before it signs in (AADSTS7000215 until "
        "then): 4-18 s reported, about 2 min in the tail; a removed secret keeps signing in "
        "for minutes, and tokens issued with it stay valid up to 90 min",
    )
    integration_type: ClassVar[str] = "entra"

    def __init__(self, config: EntraSecretConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._rules: RulesMemo = {}

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

    @property
    def capabilities(self) -> frozenset[Capability]:
        held = {Capability.DUAL_ACTIVE, Capability.AUTHENTICATES, Capability.RESIDUAL_USE}
        if self.config.adopt_existing == "retire":
            held.add(Capability.ADOPTS_EXISTING)
        return frozenset(held)

    # --- lifetimes ---------------------------------------------------------------------

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

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
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
        capped = await lifetime_cap(
            graph, app, self._requested_lifetime(request.policy), self.config.app_id, self._rules
        )
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
            refused = refusal(exc, self.config.app_id)
            if refused is None:
                raise
            raise refused from exc
        attributes["key_id"] = added.key_id
        attributes["hint"] = added.hint or ""
        return IssuedVersion(
            provider_ref=self._ref(request.marker),
            value=added.secret,
            attributes=attributes,
            expires_at=added.end or end,
        )

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
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

    async def adopt_existing(self, request: base.AdoptRequest) -> AdoptedVersion | None:
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

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
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

    async def residual_use(self, request: base.UsageRequest) -> UsageReport:
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
        return await sign_ins_with(self._client(), app_id, key_ids, window, since)

    def _sign_in_window(self, policy: Policy | None) -> timedelta:
        """The look-back of one check: the log's allowed delay plus the time since the
        previous check, so a late sign-in still lands in some check's window."""
        gate = policy.residual_use if policy is not None else None
        return self.config.sign_in_lookback + (gate.check_every if gate else timedelta(0))

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
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

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
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
        return await app_preflight(
            self._client,
            self._application,
            tenant=self._integration.tenant_id,
            app_id=self.config.app_id,
            policy=request.policy,
            window=self._sign_in_window(request.policy),
            now=self.context.now,
            memo=self._rules,
        )
