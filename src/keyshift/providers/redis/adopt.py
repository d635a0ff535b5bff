"""`adopt_existing: retire` of a dual_password user: the passwords it held before keyshift
managed it are taken over by the first rotation as its old version and removed, by hash,
when that rotation's grace period ends.

Their hashes are listed in the marker key (field `adopted`) on the primary, which already
lists them in `ACL GETUSER`: nothing hash-derived leaves Redis.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from keyshift.errors import PermanentError
from keyshift.providers.base import AdoptedVersion, RevokeResult
from keyshift.providers.redis.acl import (
    ADOPTED_FIELD,
    MARKER_KEY_PREFIX,
    AclAdmin,
    AclUser,
    setuser,
)
from keyshift.providers.redis.config import RedisConfig
from keyshift.providers.redis.nodes import RedisNodes

log = structlog.get_logger("keyshift.providers.redis")


class Adoption:
    """Finds, describes and retires the passwords of the user that keyshift did not add."""

    def __init__(self, config: RedisConfig, nodes: RedisNodes) -> None:
        self.config = config
        self.nodes = nodes
        self.acl = AclAdmin(nodes)

    def others_said(self, user: str, acl: AclUser, marker: Mapping[str, str]) -> str:
        """For preflight: what becomes of the passwords keyshift did not add (those but the
        one the marker names), in words."""
        others = [h for h in acl.passwords if h != marker.get("sha256")]
        if self.config.adopt_existing == "keep":
            pending: list[str] = []
        elif not marker.get("marker"):
            pending = others  # no rotation yet: the first one adopts them all
        else:
            listed = set(marker.get(ADOPTED_FIELD, "").split(","))
            pending = [h for h in others if h in listed]
        said = ""
        if pending:
            said += (
                f"; {len(pending)} password(s) of {user} that keyshift did not add are "
                "retired when the first rotation's grace period ends (adopt_existing: retire)"
            )
        if kept := len(others) - len(pending):
            rule = (
                "adopt_existing: keep; retire ends them"
                if self.config.adopt_existing == "keep"
                else "added after the first rotation, which retire does not touch"
            )
            said += f"; {kept} password(s) of {user} that keyshift did not issue stay valid "
            said += f"({rule})"
        return said

    async def adopt(self, user: str) -> AdoptedVersion | None:
        """The user's passwords that keyshift did not add, on any node, as one version
        (None if there are none). Their hashes are listed in the marker key on the primary,
        for `revoke`; the version carries only their count. Changes no password."""
        primary, *replicas = self.nodes.urls()
        found: list[str] = []
        async with self.nodes.admin(primary) as conn:
            ours = (await self.acl.marker(conn, user)).get("sha256")
            for url in replicas:
                async with self.nodes.admin(url) as node:
                    found += (await self.acl.require_user(node, user)).passwords
            found = (await self.acl.require_user(conn, user)).passwords + found
            others = list(dict.fromkeys(h for h in found if h != ours))
            if not others:
                return None
            with self.nodes.errors(f"recording the adopted passwords of ACL user {user}"):
                await conn.hset(MARKER_KEY_PREFIX + user, ADOPTED_FIELD, ",".join(others))
        return AdoptedVersion(
            provider_ref=f"{user}:adopted",
            attributes={
                "username": user,
                "adopted_passwords": str(len(others)),
                **self.nodes.integration.endpoint(),
            },
        )

    async def retire(self, user: str) -> RevokeResult:
        """Remove the adopted passwords still present on each node, then read the user
        again to prove them gone. Never removes keyshift's own password or a node's last."""
        primary, *_ = self.nodes.urls()
        async with self.nodes.admin(primary) as conn:
            marker = await self.acl.marker(conn, user)
        listed = {h for h in marker.get(ADOPTED_FIELD, "").split(",") if h} - {marker.get("sha256")}
        retired = 0
        for url in self.nodes.urls():
            async with self.nodes.admin(url) as conn:
                acl = await self.acl.getuser(conn, user)
                present = [h for h in (acl.passwords if acl else []) if h in listed]
                if acl is None or not present:
                    await self.acl.persist(conn)
                    continue
                if set(acl.passwords) <= set(present):
                    raise PermanentError(
                        f"refusing to remove the last password(s) of ACL user {user} on "
                        f"{self.nodes.where()}; keyshift's own password is missing"
                    )
                with self.nodes.errors(f"retiring the adopted passwords of ACL user {user}"):
                    await setuser(conn, user, [f"!{h}" for h in present])
                await self.acl.persist(conn)
                left = [
                    h for h in present if h in (await self.acl.require_user(conn, user)).passwords
                ]
                if left:
                    raise PermanentError(
                        f"ACL user {user} on {self.nodes.where()} still holds {len(left)} adopted "
                        "password(s) after removing them"
                    )
                retired += len(present)
        log.info("redis.adopted_passwords_retired", user=user, count=retired)
        if not retired:
            return RevokeResult(already_gone=True, detail={"user": user, "retired": "0"})
        return RevokeResult(
            detail={
                "user": user,
                "retired_passwords": str(retired),
                "nodes": str(len(self.nodes.urls())),
                "proof": "ACL GETUSER no longer lists them",
            }
        )
