"""ACL users and keyshift's marker key, read and written through one node's admin connection.

Next to each rotated user keyshift keeps the hash `keyshift:marker:<user>` (`marker`,
`sha256`, `created_at`, `expires_at`, and `adopted` for `adopt_existing: retire`); Redis
itself keeps only SHA-256 hashes of passwords, which `ACL GETUSER` lists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from keyshift.errors import PermanentError
from keyshift.providers.redis.nodes import RedisNodes, classify

MARKER_KEY_PREFIX = "keyshift:marker:"
"""The marker of the rotation that last set a user's password lives at this key + user."""
ADOPTED_FIELD = "adopted"
"""The marker key's field listing the hashes the first rotation adopted (`retire`)."""

_PERSIST_HINT = "set persist_acl: none on the integration if its ACL is kept elsewhere"

log = structlog.get_logger("keyshift.providers.redis")


def password_hash(password: str) -> str:
    """The SHA-256 hex digest Redis stores for `password` and lists in `ACL GETUSER`."""
    return hashlib.sha256(password.encode()).hexdigest()


async def setuser(conn: aioredis.Redis, user: str, rules: list[str]) -> None:
    """`ACL SETUSER user rules...` as written. redis-py's `acl_setuser` always sends `on`
    or `off`, which a password change must not do to a user it does not mean to toggle."""
    await conn.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]


def as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AclUser:
    """What `ACL GETUSER` says about a user: enabled or not, flags, password hashes."""

    def __init__(self, reply: Mapping[str, Any]) -> None:
        self.flags = [as_str(f) for f in reply.get("flags", [])]
        self.passwords = [as_str(p) for p in reply.get("passwords", [])]
        self.enabled = "on" in self.flags


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class AclAdmin:
    """The ACL reads and writes a rotation makes on a node, through its admin connection."""

    def __init__(self, nodes: RedisNodes) -> None:
        self.nodes = nodes

    async def getuser(self, conn: aioredis.Redis, user: str) -> AclUser | None:
        with self.nodes.errors(f"reading ACL user {user}"):
            reply = await conn.acl_getuser(user)
        return AclUser(reply) if reply else None

    async def require_user(self, conn: aioredis.Redis, user: str) -> AclUser:
        found = await self.getuser(conn, user)
        if found is None:
            # keyshift never creates ACL users: their permissions are the operator's.
            raise PermanentError(f"ACL user {user} does not exist on {self.nodes.where()}")
        return found

    async def marker(self, conn: aioredis.Redis, user: str) -> dict[str, str]:
        with self.nodes.errors(f"reading the rotation marker of {user}"):
            reply = await conn.hgetall(MARKER_KEY_PREFIX + user)
        return {as_str(k): as_str(v) for k, v in reply.items()}

    def _not_persisted(self, reason: str) -> None:
        log.warning(
            "redis.acl_not_persisted", server=self.nodes.where(), reason=reason, hint=_PERSIST_HINT
        )

    async def persist(self, conn: aioredis.Redis) -> None:
        """Save the ACL so a restart of the server does not bring back what was changed."""
        mode = self.nodes.integration.persist_acl
        if mode == "none":
            return
        if mode == "auto":
            try:
                aclfile = (await conn.config_get("aclfile")).get("aclfile", "")
                config_file = (await conn.info("server")).get("config_file", "")
            except NoPermissionError:
                self._not_persisted("the admin user may not run CONFIG GET / INFO")
                return
            except RedisError as exc:
                raise classify(exc, "looking up ACL persistence", self.nodes.where(), ()) from exc
            if aclfile:
                mode = "acl_save"
            elif config_file:
                mode = "config_rewrite"
            else:
                self._not_persisted("the server has neither an aclfile nor a config file")
                return
        with self.nodes.errors(f"saving the ACL ({mode})"):
            if mode == "acl_save":
                await conn.acl_save()
            else:
                await conn.config_rewrite()

    def rotation_commands(self, user: str) -> list[tuple[str, ...]]:
        """The commands a rotation of `user` runs as the admin, for `ACL DRYRUN`."""
        key = MARKER_KEY_PREFIX + user
        commands: list[tuple[str, ...]] = [
            ("ACL", "SETUSER", user, "on"),
            ("HGETALL", key),
            ("HSET", key, "marker", "preflight"),
            ("MULTI",),
            ("EXEC",),
        ]
        mode = self.nodes.integration.persist_acl
        if mode == "acl_save":
            commands.append(("ACL", "SAVE"))
        elif mode == "config_rewrite":
            commands.append(("CONFIG", "REWRITE"))
        return commands

    async def dry_run(
        self, conn: aioredis.Redis, admin: str, users: list[str]
    ) -> tuple[str | None, bool]:
        """(the first command `ACL DRYRUN` refuses the admin, or None; whether the dry run
        could be asked at all)."""
        for user in users:
            for command in self.rotation_commands(user):
                try:
                    reply = await conn.execute_command("ACL", "DRYRUN", admin, *command)  # type: ignore[no-untyped-call]
                except NoPermissionError:
                    return None, False
                except ResponseError as exc:
                    if "unknown" in str(exc).lower():
                        return None, False  # Redis 6 has no ACL DRYRUN
                    raise classify(exc, "ACL DRYRUN", self.nodes.where(), ()) from exc
                except RedisError as exc:
                    raise classify(exc, "ACL DRYRUN", self.nodes.where(), ()) from exc
                if reply is not True and as_str(reply) != "OK":
                    return (
                        f"admin user {admin} on {self.nodes.where()} may not run "
                        f"{' '.join(command[:2])} for ACL user {user}: {as_str(reply)}",
                        True,
                    )
        return None, True
