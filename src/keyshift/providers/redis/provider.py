"""The `redis` provider: adds, verifies and removes passwords of Redis ACL users.

See `keyshift.providers.redis` for the strategies, the marker key and the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import structlog
from pydantic import BaseModel
from redis.typing import EncodableT, FieldT

from keyshift.domain.secret import Secret
from keyshift.errors import KeyshiftError, PermanentError
from keyshift.providers import base
from keyshift.providers.base import (
    AdoptedVersion,
    Capability,
    IssuedVersion,
    PreflightResult,
    Propagation,
    Readiness,
    RevokeResult,
    UsageReport,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.connection import (
    ConnectedProvider,
    alternate_user,
    imported_login,
    login_version,
)
from keyshift.providers.random import draw
from keyshift.providers.redis.acl import (
    MARKER_KEY_PREFIX,
    AclAdmin,
    AclUser,
    parse_time,
    password_hash,
    setuser,
)
from keyshift.providers.redis.adopt import Adoption
from keyshift.providers.redis.config import RedisConfig
from keyshift.providers.redis.nodes import RedisIntegration, RedisNodes

MAX_ADDRESSES = 5
"""`residual_use` names at most this many client addresses."""

log = structlog.get_logger("keyshift.providers.redis")


class RedisProvider(ConnectedProvider[RedisConfig, RedisIntegration]):
    """Adds, verifies and removes passwords of Redis ACL users."""

    kind: ClassVar[str] = "redis"
    Config: ClassVar[type[BaseModel]] = RedisConfig
    capability_fields: ClassVar[tuple[str, ...]] = ("strategy", "adopt_existing")
    propagation: ClassVar[Propagation] = Propagation(
        timedelta(seconds=10),
        "ACL SETUSER applies at once on the node that runs it; ACLs are not replicated, "
        "so keyshift applies and proves them on every node itself",
    )
    integration_type: ClassVar[str] = "redis"
    integration_model = RedisIntegration

    @classmethod
    def describe(cls, config: RedisConfig, integrations: Mapping[str, BaseModel]) -> dict[str, str]:
        """What it changes: the passwords of these ACL users on this server."""
        integration = cls.declared(config, integrations)
        server = integration.server() if integration is not None else "(integration not declared)"
        users = config.users if config.strategy == "alternating_users" else [config.user]
        return {
            "integration": config.integration,
            "server": server,
            "strategy": config.strategy,
            "users": ", ".join(u for u in users or [] if u),
        }

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.config.strategy == "alternating_users":
            # Each version is its own user, so clients per user show who still uses it.
            # dual_password: old and new are passwords of one user, which CLIENT LIST
            # cannot tell apart, so residual use is not declared there.
            return frozenset(
                {
                    Capability.DUAL_ACTIVE,
                    Capability.AUTHENTICATES,
                    Capability.RESIDUAL_USE,
                    Capability.INSPECTS,
                    Capability.IMPORTS,
                }
            )
        held = {
            Capability.DUAL_ACTIVE,
            Capability.AUTHENTICATES,
            Capability.INSPECTS,
            Capability.IMPORTS,
        }
        if self.config.adopt_existing == "retire":
            held.add(Capability.ADOPTS_EXISTING)
        return frozenset(held)

    @property
    def _nodes(self) -> RedisNodes:
        return RedisNodes(self._integration, self.context)

    @property
    def _acl(self) -> AclAdmin:
        return AclAdmin(self._nodes)

    @property
    def _adoption(self) -> Adoption:
        return Adoption(self.config, self._nodes)

    def _generate(self) -> Secret:
        return Secret(draw(self.config.password_alphabet, self.config.password_length))

    def _pick_user(self, current: IssuedVersion | None) -> str:
        if self.config.strategy == "dual_password":
            assert self.config.user is not None  # noqa: S101 (guaranteed by the config model)
            return self.config.user
        # The user not in use takes the new password.
        return alternate_user(self.config.users or [], current)

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Log in as the admin on every node, read each rotated user (`ACL GETUSER`) and ask
        the primary whether the admin may run what a rotation runs (`ACL DRYRUN`, Redis
        7+). Changes nothing.

        Blocked when a node cannot be reached (named), the admin cannot log in or read the
        users, a user does not exist on a node, a dual_password user has `nopass` (adding
        a password would lock its consumers out), or the dry run refuses a command. When
        the admin may not run `ACL DRYRUN` (or the server predates it), the write
        permissions are proven at the first rotation and the reason says so.
        """
        users = self.config.users or [self.config.user or ""]
        admin = unquote(urlsplit(self._integration.dsn).username or "")
        others = ""
        primary, *replicas = self._nodes.urls()
        try:
            async with self._nodes.admin(primary) as conn:
                for user in users:
                    acl = await self._acl.require_user(conn, user)
                    if blocked := self._nopass(user, acl):
                        return PreflightResult(Readiness.BLOCKED, blocked)
                    if self.config.strategy == "dual_password":
                        others = self._adoption.others_said(
                            user, acl, await self._acl.marker(conn, user)
                        )
                refused, proven = await self._acl.dry_run(conn, admin, users)
            for url in replicas:
                async with self._nodes.admin(url) as conn:
                    for user in users:
                        acl = await self._acl.require_user(conn, user)
                        if blocked := self._nopass(user, acl):
                            return PreflightResult(Readiness.BLOCKED, blocked)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if refused is not None:
            return PreflightResult(Readiness.BLOCKED, refused)
        where = ", ".join(self._integration.host_port(url) for url in self._nodes.urls())
        found = f"ACL user(s) {', '.join(users)} exist on {where}{others}"
        if not proven:
            return PreflightResult(
                Readiness.READY,
                f"{found}; admin {admin} may not run ACL DRYRUN, so its permission to change "
                "them is proven at the first rotation",
            )
        return PreflightResult(
            Readiness.READY, f"{found}; admin {admin} may change them (ACL DRYRUN)"
        )

    def _nopass(self, user: str, acl: AclUser) -> str | None:
        """Why a password cannot be added to `user` on this node, or None. Adding one ends
        `nopass`: every consumer of the user would be refused until it has the new
        password, which is no overlap at all."""
        if self.config.strategy == "dual_password" and "nopass" in acl.flags:
            return (
                f"ACL user {user} on {self._nodes.where()} has nopass; adding a password "
                "would lock out its consumers (give it a password first)"
            )
        return None

    async def adopt_existing(self, request: base.AdoptRequest) -> AdoptedVersion | None:
        """The user's passwords that keyshift did not add, on any node, as one version
        (None if there are none). Their hashes are listed in the marker key on the primary,
        for `revoke`; the version carries only their count. Changes no password."""
        return await self._adoption.adopt(self._pick_user(None))

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Add a fresh password to the user (dual_password) or make it the only password of
        the user not in use (alternating_users), on the primary and then on every node.
        The old version stays valid.

        Idempotent in versions: a repeat for the same rotation returns the same version
        (`provider_ref`) with a fresh value, replacing the rotation's earlier password (found
        through the marker key) in the same `ACL SETUSER` on each node that holds it, so
        the user never holds two passwords of one rotation.
        """
        user = self._pick_user(request.current)
        lifetime = request.policy.max_lifetime
        now = self.context.now()
        expires = now + lifetime if lifetime is not None else None
        password = self._generate()
        digest = password_hash(password.reveal())
        primary, *replicas = self._nodes.urls()
        async with self._nodes.admin(primary) as conn:
            acl = await self._acl.require_user(conn, user)
            marker = await self._acl.marker(conn, user)
            orphan = marker.get("sha256") if marker.get("marker") == request.marker else None
            self._refuse_nopass(user, acl)
            record: dict[FieldT, EncodableT] = {
                "marker": request.marker,
                "sha256": digest,
                "created_at": now.isoformat(),
                "expires_at": expires.isoformat() if expires is not None else "",
            }
            # Marker and password in one MULTI: the password is never added without the
            # record that lets a later create find it.
            with self._nodes.errors(f"adding a password to ACL user {user}", password):
                async with conn.pipeline(transaction=True) as pipe:
                    pipe.hset(MARKER_KEY_PREFIX + user, mapping=record)
                    pipe.execute_command(
                        "ACL", "SETUSER", user, *self._add_rules(acl, orphan, digest)
                    )
                    await pipe.execute()
            await self._acl.persist(conn)
        for url in replicas:
            # ACLs are not replicated: the same change on each node, where it holds the
            # user (a repeat finds the orphan by the primary's marker).
            async with self._nodes.admin(url) as conn:
                acl = await self._acl.require_user(conn, user)
                self._refuse_nopass(user, acl)
                with self._nodes.errors(f"adding a password to ACL user {user}", password):
                    await setuser(conn, user, self._add_rules(acl, orphan, digest))
                await self._acl.persist(conn)
        log.info("redis.password_added", user=user, nodes=len(replicas) + 1, marker=request.marker)
        return login_version(self._integration, user, request.marker, password, expires)

    def _refuse_nopass(self, user: str, acl: AclUser) -> None:
        if refused := self._nopass(user, acl):
            raise PermanentError(refused)

    def _add_rules(self, acl: AclUser, orphan: str | None, digest: str) -> list[str]:
        """The `ACL SETUSER` rules that add the password with hash `digest` on a node."""
        rules = ["on"]
        if self.config.strategy == "alternating_users":
            # The user is not in use: it ends with only the new password.
            rules.append("resetpass")
        elif orphan is not None and orphan in acl.passwords:
            # A create of this rotation ran before and its value is lost: remove
            # that orphan so exactly one password of this rotation remains.
            rules.append(f"!{orphan}")
        return [*rules, f"#{digest}"]

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """The ACL user whose password the value is (the dual_password user, or the
        alternating user named or found), proven by `AUTH` on every node as a consumer
        would. Changes nothing; no expiry is known to Redis."""
        users = self.config.users or [self.config.user or ""]
        return await imported_login(self._integration, users, request, self.verify)

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """Authenticate as a consumer would (`AUTH user password`, then `PING`) on a new
        connection to every node. Accepted on some nodes and refused on others is
        `partial` (a node has not the change yet, or still has it); refused everywhere is
        `ok=False`. An unreachable node raises TransientError naming it, since it proves
        nothing about the version."""
        answers = await self._nodes.auth_everywhere(request.version)
        accepted = [where for where, ok, _ in answers if ok]
        refused = [f"{where}: {detail}" for where, ok, detail in answers if not ok]
        if not refused:
            return VerifyResult(ok=True, detail=answers[0][2])
        if not accepted:
            return VerifyResult(
                ok=False, detail="; ".join(refused) if len(answers) > 1 else answers[0][2]
            )
        return VerifyResult(
            ok=False,
            partial=True,
            detail=f"accepted on {', '.join(accepted)}; refused on {'; '.join(refused)}",
        )

    async def inspect(self, request: base.VerifyRequest) -> VerifyResult:
        """Whether every node still holds the version: its user exists, is enabled and
        lists the SHA-256 of the version's password in `ACL GETUSER`. Reads only, so a
        password changed by someone else shows here without a failed AUTH in `ACL LOG`."""
        user = request.version.attributes.get("username", "")
        digest = password_hash(request.version.value.reveal())
        missing: list[str] = []
        for url in self._nodes.urls():
            async with self._nodes.admin(url) as conn:
                where = self._nodes.where()
                acl = await self._acl.getuser(conn, user)
            if acl is None:
                missing.append(f"{where}: ACL user {user} does not exist")
            elif not acl.enabled:
                missing.append(f"{where}: ACL user {user} is disabled")
            elif digest not in acl.passwords:
                missing.append(
                    f"{where}: ACL GETUSER {user} does not list this version's password hash"
                )
        if missing:
            return VerifyResult(ok=False, detail="; ".join(missing))
        return VerifyResult(ok=True, detail=f"ACL user {user} holds it on every node")

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """dual_password: remove the old password by its hash (an adopted version: the
        adopted passwords listed in the marker key). alternating_users: disable the old
        user (`off resetpass`), never deleting it. On every node. Succeeds, with
        `already_gone=True`, if no node's user holds the version's password any more
        (revoked before, or a later rotation set the user's password). Connections that
        already authenticated with it stay open."""
        user = request.version.attributes.get("username", "")
        allowed = self.config.users or [self.config.user or ""]
        if user not in allowed:
            raise PermanentError(f"version {request.version.provider_ref} names no rotated user")
        if "adopted_passwords" in request.version.attributes:
            return await self._adoption.retire(user)
        digest = password_hash(request.version.value.reveal())
        outcome: dict[str, str] = {"user": user}
        revoked_on = 0
        for url in self._nodes.urls():
            async with self._nodes.admin(url) as conn:
                acl = await self._acl.getuser(conn, user)
                if acl is None or digest not in acl.passwords:
                    # Persist anyway: a revoke that failed after the change but before the
                    # save would otherwise leave the password in the saved ACL.
                    await self._acl.persist(conn)
                    continue
                if self.config.strategy == "alternating_users":
                    rules, outcome = ["off", "resetpass"], {"user": user, "login": "disabled"}
                else:
                    if acl.passwords == [digest]:
                        # The only password left: the new version is gone, and removing
                        # this one would lock every consumer out.
                        raise PermanentError(
                            f"refusing to remove the only password of ACL user {user} on "
                            f"{self._nodes.where()}; the new version is missing"
                        )
                    rules = [f"!{digest}"]
                    outcome = {
                        "user": user,
                        "password": "removed",
                        "remaining": str(len(acl.passwords) - 1),
                    }
                with self._nodes.errors(f"revoking a password of ACL user {user}"):
                    await setuser(conn, user, rules)
                await self._acl.persist(conn)
                revoked_on += 1
        if not revoked_on:
            return RevokeResult(already_gone=True, detail={"user": user})
        if len(self._nodes.urls()) > 1:
            outcome["nodes"] = str(revoked_on)
        log.info("redis.password_revoked", user=user, nodes=revoked_on)
        return RevokeResult(detail=outcome)

    async def residual_use(self, request: base.UsageRequest) -> UsageReport:
        """Clients connected as the version's user on every node, from `CLIENT LIST`
        (`user=`), not counting the admin connection asking (`CLIENT ID`).
        alternating_users only: with dual_password old and new passwords belong to one
        user, and `CLIENT LIST` does not say which password a client authenticated with,
        so the capability is not declared there. Detail: the user, the count, and up to
        five client addresses."""
        if self.config.strategy != "alternating_users":
            raise PermanentError(
                "residual use needs strategy alternating_users: with dual_password the old "
                "and new passwords belong to one user, which CLIENT LIST cannot tell apart"
            )
        user = request.version.attributes.get("username", "")
        if user not in (self.config.users or []):
            raise PermanentError(f"version {request.version.provider_ref} names no rotated user")
        addresses = await self._nodes.client_addresses(user)
        detail: dict[str, Any] = {
            "user": user,
            "clients": len(addresses),
            "addresses": addresses[:MAX_ADDRESSES],
        }
        return UsageReport(sessions=len(addresses), detail=detail)

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """One entry per password the rotated user(s) hold, oldest first. The password a
        rotation added carries its marker; others are named `user:password-N`."""
        users = self.config.users or [self.config.user or ""]
        out: list[VersionInfo] = []
        async with self._nodes.admin() as conn:
            for user in users:
                acl = await self._acl.getuser(conn, user)
                if acl is None or not acl.enabled:
                    continue
                marker = await self._acl.marker(conn, user)
                for i, digest in enumerate(acl.passwords, start=1):
                    if digest == marker.get("sha256") and marker.get("marker"):
                        out.append(
                            VersionInfo(
                                provider_ref=f"{user}:{marker['marker']}",
                                marker=marker["marker"],
                                created_at=parse_time(marker.get("created_at")),
                                expires_at=parse_time(marker.get("expires_at")),
                            )
                        )
                    else:
                        out.append(
                            VersionInfo(
                                provider_ref=f"{user}:password-{i}",
                                marker=None,
                                created_at=None,
                                expires_at=None,
                            )
                        )
        return out

    async def aclose(self) -> None:
        """Connections are opened per call; nothing stays open."""
        return
