"""`redis`: passwords of Redis 6+ ACL users, set through an admin connection.

Two strategies:

- `dual_password` (default): one ACL user holds several passwords at once. A rotation
  adds the new one (`ACL SETUSER user on #<sha256>`) and the old one stays valid;
  revocation removes the old one by its hash (`!<sha256>`). Consumers switch without
  a window, and the user's permissions are never touched.
- `alternating_users`: two ACL users with the same permissions take turns. A rotation
  gives the user not in use exactly one fresh password (`on resetpass #<sha256>`);
  revocation disables the old user (`off resetpass`), never deleting it.

keyshift never creates ACL users or changes their permissions: the users must exist.
The admin connection sends only SHA-256 hashes of passwords (`#` adds, `!` removes),
so no plain password crosses it, reaches `MONITOR` or is echoed in an ACL error.

Idempotency. Redis keeps only password hashes, so a value cannot be read back after
a crash. Next to each rotated user keyshift keeps the hash `keyshift:marker:<user>`
(`marker`, `sha256`, `created_at`, `expires_at`) in the admin connection's database,
written in the same `MULTI` as the `ACL SETUSER` that adds the password. A repeated
`create` for the same rotation (after a crash lost the value it returned) finds the
marker, removes that orphaned password by its hash and adds a fresh one in one
`ACL SETUSER`: the version (`provider_ref`) is the same, its value is new, and exactly
one password of the rotation remains at the issuer.

Limits an operator should know:

- Removing a password or disabling a user does not drop connections that already
  authenticated with it; residual use shows in `CLIENT LIST` (`user=`). With
  `alternating_users` each version is its own user, so `residual_use` counts those
  clients and a `residual_use` policy holds revocation until they are gone. With
  `dual_password` the old and new passwords belong to one user and `CLIENT LIST` cannot
  tell which password a client used, so that strategy reports no residual use.
- Passwords a `dual_password` user held before keyshift managed it stay valid unless
  `adopt_existing: retire`: then the first rotation takes them over as its old version,
  listing their hashes in the marker key (field `adopted`, on the server that already
  lists them in `ACL GETUSER`; nothing hash-derived leaves Redis), and removes exactly
  those (`!<sha256>`) when its grace period ends.
- ACL changes live in memory until saved: `persist_acl` saves them to the ACL file or
  redis.conf. ACL rules are not replicated: list the replicas (every node consumers
  authenticate to) under the integration's `nodes`, and keyshift applies, saves and
  proves each change on every node. A node that cannot be reached fails the step (the
  proof before cutover waits for it within `propagation_timeout`) and is named.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from keyshift.domain.secret import Secret
from keyshift.errors import KeyshiftError, PermanentError, PluginError, TransientError, scrub
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
from keyshift.providers.connection import (
    AdminConnection,
    ConnectedProvider,
    alternate_user,
    login_version,
)
from keyshift.providers.random import DEFAULT_ALPHABET, Alphabet, draw

MARKER_KEY_PREFIX = "keyshift:marker:"
"""The marker of the rotation that last set a user's password lives at this key + user."""
ADOPTED_FIELD = "adopted"
"""The marker key's field listing the hashes the first rotation adopted (`retire`)."""
MAX_ADDRESSES = 5
"""`residual_use` names at most this many client addresses."""

_NODE: ContextVar[str | None] = ContextVar("keyshift_redis_node", default=None)
"""The `host:port` of the node the admin connection open in this task talks to."""
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")

_PERSIST_HINT = "set persist_acl: none on the integration if its ACL is kept elsewhere"

log = structlog.get_logger("keyshift.providers.redis")


class RedisIntegration(AdminConnection):
    """A Redis admin connection, e.g. `redis://keyshift_admin@cache:6379/0` (`rediss://` for
    TLS). The admin user needs `+acl|getuser +acl|setuser +multi +exec +hset +hgetall` on
    `~keyshift:*`, plus `+config|get +info +acl|save +config|rewrite` for `persist_acl`,
    and `+client|list +client|id` for residual use (`alternating_users` with a
    `residual_use` policy). With `+acl|dryrun` (Redis 7+) a preflight proves these
    permissions without changing anything."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    default_port: ClassVar[int] = 6379
    default_database: ClassVar[str] = "0"

    persist_acl: Literal["auto", "acl_save", "config_rewrite", "none"] = "auto"
    """How ACL changes survive a server restart: `acl_save` (users in an ACL file),
    `config_rewrite` (users in redis.conf), `none` (a managed service persists them), or
    `auto`: `acl_save` if `aclfile` is set, else `config_rewrite` if the server runs from
    a config file, else nothing (with a warning)."""
    nodes: list[str] = Field(default_factory=list, max_length=32)
    """Further nodes as `host:port` (replicas, or every node consumers authenticate to),
    reached with the same scheme, admin user, password and database as `dsn`. Redis does
    not replicate ACLs: keyshift applies, saves and proves every ACL change on `dsn` and
    on each node; one that cannot be reached fails the step, named."""

    @field_validator("nodes")
    @classmethod
    def _host_ports(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            match = _HOST_PORT.match(node)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"{node!r} is not host:port (e.g. cache-replica-1:6379)")
        if len(set(nodes)) != len(nodes):
            raise ValueError("lists a node twice")
        return nodes

    def node_urls(self) -> list[str]:
        """`dsn` first, then one URL per node: the same URL at the node's host and port."""
        parts = urlsplit(self.dsn)
        user = parts.netloc.rpartition("@")[0]
        return [self.dsn] + [
            urlunsplit((parts.scheme, f"{user}@{node}", parts.path, parts.query, ""))
            for node in self.nodes
        ]

    def host_port(self, url: str | None = None) -> str:
        """`host:port` of `url` (the `dsn` unless given): how messages name a node."""
        end = self.endpoint(url)
        return f"{end['host']}:{end['port']}"


class RedisConfig(BaseModel):
    """Which ACL users to rotate, and how."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str
    """The `redis` integration (admin connection) to use; may be left out when the estate
    declares exactly one."""
    strategy: Literal["dual_password", "alternating_users"] = "dual_password"
    """`dual_password` (one user, old and new password valid together) or
    `alternating_users` (two users take turns)."""
    user: str | None = None
    """dual_password: the ACL user whose passwords rotate. It must exist."""
    users: list[str] | None = None
    """alternating_users: the two ACL users, with the same permissions, that take turns."""
    password_length: int = Field(default=32, ge=16, le=128)
    """Length of generated passwords."""
    password_alphabet: Alphabet = DEFAULT_ALPHABET
    """Characters generated passwords are drawn from (at least 10 distinct)."""
    adopt_existing: Literal["keep", "retire"] = "keep"
    """dual_password: what the first rotation does with passwords the user already holds
    that keyshift did not add: `keep` leaves them valid (preflight says so); `retire`
    treats them as the old version, so they are removed (by hash) when the grace period
    ends, after the residual-use and approval gates like any old version. Passwords added
    by hand later are not touched. alternating_users needs neither: each user's
    passwords are reset when it takes its turn."""

    @field_validator("user")
    @classmethod
    def _user_name(cls, user: str | None) -> str | None:
        if user is not None:
            _check_username(user)
        return user

    @field_validator("users")
    @classmethod
    def _user_names(cls, users: list[str] | None) -> list[str] | None:
        for user in users or []:
            _check_username(user)
        return users

    @model_validator(mode="after")
    def _strategy_fields(self) -> RedisConfig:
        if self.strategy == "dual_password":
            if not self.user:
                raise ValueError("dual_password needs user (the ACL user whose passwords rotate)")
            if self.users:
                raise ValueError("users belongs to alternating_users; dual_password takes user")
        else:
            if not self.users or len(self.users) != 2 or self.users[0] == self.users[1]:
                raise ValueError("alternating_users needs users: [two distinct ACL users]")
            if self.user:
                raise ValueError("user belongs to dual_password; alternating_users takes users")
            if self.adopt_existing == "retire":
                raise ValueError(
                    "adopt_existing: retire belongs to dual_password; alternating_users "
                    "resets each user's passwords when it takes its turn"
                )
        if any(c.isspace() or not c.isprintable() for c in self.password_alphabet):
            raise ValueError("password_alphabet must hold printable characters without spaces")
        return self


def _check_username(user: str) -> None:
    if not user or any(c.isspace() or not c.isprintable() for c in user):
        raise ValueError(f"{user!r} is not an ACL user name (printable, no spaces)")


def password_hash(password: str) -> str:
    """The SHA-256 hex digest Redis stores for `password` and lists in `ACL GETUSER`."""
    return hashlib.sha256(password.encode()).hexdigest()


def _first_line(exc: BaseException, known: Iterable[str]) -> str:
    return scrub((str(exc).strip().splitlines() or [""])[0], known)


def _classify(exc: RedisError, doing: str, where: str, known: Iterable[str]) -> PluginError:
    """Map a redis-py error to keyshift's: refusals are permanent, an unreachable or
    loading server is transient. `known` are values scrubbed from the server's text."""
    first = _first_line(exc, known)
    # AuthenticationError and BusyLoadingError are ConnectionErrors: test them first.
    if isinstance(exc, AuthenticationError):
        return PermanentError(f"{doing}: {where} refused the admin credentials ({first})")
    if isinstance(exc, BusyLoadingError):
        return TransientError(f"{doing}: {where} is loading its dataset ({first})")
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return TransientError(f"{doing}: cannot reach {where} ({first})")
    if isinstance(exc, NoPermissionError):
        return PermanentError(f"{doing}: the admin user lacks the permission on {where} ({first})")
    if isinstance(exc, ReadOnlyError):
        return PermanentError(f"{doing}: {where} is a read-only replica; use the primary")
    if isinstance(exc, ResponseError) and "unknown command" in first.lower():
        return PermanentError(f"{doing}: {where} has no ACL support (Redis 6+ needed; {first})")
    return PermanentError(f"{doing} on {where}: {first}")


async def _setuser(conn: aioredis.Redis, user: str, rules: list[str]) -> None:
    """`ACL SETUSER user rules...` as written. redis-py's `acl_setuser` always sends `on`
    or `off`, which a password change must not do to a user it does not mean to toggle."""
    await conn.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _AclUser:
    """What `ACL GETUSER` says about a user: enabled or not, flags, password hashes."""

    def __init__(self, reply: Mapping[str, Any]) -> None:
        self.flags = [_as_str(f) for f in reply.get("flags", [])]
        self.passwords = [_as_str(p) for p in reply.get("passwords", [])]
        self.enabled = "on" in self.flags


class RedisProvider(ConnectedProvider[RedisConfig, RedisIntegration]):
    """Adds, verifies and removes passwords of Redis ACL users."""

    kind: ClassVar[str] = "redis"
    Config: ClassVar[type[BaseModel]] = RedisConfig
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
                {Capability.DUAL_ACTIVE, Capability.AUTHENTICATES, Capability.RESIDUAL_USE}
            )
        held = {Capability.DUAL_ACTIVE, Capability.AUTHENTICATES}
        if self.config.adopt_existing == "retire":
            held.add(Capability.ADOPTS_EXISTING)
        return frozenset(held)

    def _where(self) -> str:
        """The node the open admin connection talks to (the `dsn` outside of one)."""
        return _NODE.get() or self._integration.host_port()

    def _nodes(self) -> list[str]:
        return self._integration.node_urls()

    def _timeout(self) -> float:
        return max(0.1, self._integration.connect_timeout.total_seconds())

    @asynccontextmanager
    async def _admin(self, url: str | None = None) -> AsyncIterator[aioredis.Redis]:
        """An admin connection to `url` (a node URL; the `dsn`, the primary, by default)."""
        integration = self._integration
        url = url or integration.dsn
        password = self.context.secret("password_from", integration.password_from)
        # No client-side retries: the engine retries a step that raised TransientError.
        node = _NODE.set(integration.host_port(url))
        client = aioredis.Redis.from_url(
            url,
            password=password.reveal(),
            socket_connect_timeout=self._timeout(),
            socket_timeout=self._timeout(),
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            with self._errors("admin connection", password):
                yield client
        finally:
            await client.aclose()
            _NODE.reset(node)

    @contextmanager
    def _errors(self, doing: str, *known: Secret) -> Iterator[None]:
        """Translate redis-py errors raised inside into TransientError / PermanentError."""
        try:
            yield
        except RedisError as exc:
            values = [s.reveal() for s in known]
            admin = unquote(urlsplit(self._integration.dsn).username or "")
            where = f"{self._where()} (admin user {admin})"
            raise _classify(exc, doing, where, values) from exc

    def _generate(self) -> Secret:
        return Secret(draw(self.config.password_alphabet, self.config.password_length))

    async def _getuser(self, conn: aioredis.Redis, user: str) -> _AclUser | None:
        with self._errors(f"reading ACL user {user}"):
            reply = await conn.acl_getuser(user)
        return _AclUser(reply) if reply else None

    async def _require_user(self, conn: aioredis.Redis, user: str) -> _AclUser:
        found = await self._getuser(conn, user)
        if found is None:
            # keyshift never creates ACL users: their permissions are the operator's.
            raise PermanentError(f"ACL user {user} does not exist on {self._where()}")
        return found

    async def _marker(self, conn: aioredis.Redis, user: str) -> dict[str, str]:
        with self._errors(f"reading the rotation marker of {user}"):
            reply = await conn.hgetall(MARKER_KEY_PREFIX + user)
        return {_as_str(k): _as_str(v) for k, v in reply.items()}

    def _pick_user(self, current: IssuedVersion | None) -> str:
        if self.config.strategy == "dual_password":
            assert self.config.user is not None  # noqa: S101 (guaranteed by the config model)
            return self.config.user
        # The user not in use takes the new password.
        return alternate_user(self.config.users or [], current)

    async def _persist(self, conn: aioredis.Redis) -> None:
        """Save the ACL so a restart of the server does not bring back what was changed."""
        mode = self._integration.persist_acl
        if mode == "none":
            return
        if mode == "auto":
            try:
                aclfile = (await conn.config_get("aclfile")).get("aclfile", "")
                config_file = (await conn.info("server")).get("config_file", "")
            except NoPermissionError:
                log.warning(
                    "redis.acl_not_persisted",
                    server=self._where(),
                    reason="the admin user may not run CONFIG GET / INFO",
                    hint=_PERSIST_HINT,
                )
                return
            except RedisError as exc:
                raise _classify(exc, "looking up ACL persistence", self._where(), ()) from exc
            if aclfile:
                mode = "acl_save"
            elif config_file:
                mode = "config_rewrite"
            else:
                log.warning(
                    "redis.acl_not_persisted",
                    server=self._where(),
                    reason="the server has neither an aclfile nor a config file",
                    hint=_PERSIST_HINT,
                )
                return
        with self._errors(f"saving the ACL ({mode})"):
            if mode == "acl_save":
                await conn.acl_save()
            else:
                await conn.config_rewrite()

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
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
        primary, *replicas = self._nodes()
        try:
            async with self._admin(primary) as conn:
                for user in users:
                    acl = await self._require_user(conn, user)
                    if blocked := self._nopass(user, acl):
                        return PreflightResult(Readiness.BLOCKED, blocked)
                    if self.config.strategy == "dual_password":
                        others = self._others_said(user, acl, await self._marker(conn, user))
                refused, proven = await self._dry_run(conn, admin, users)
            for url in replicas:
                async with self._admin(url) as conn:
                    for user in users:
                        acl = await self._require_user(conn, user)
                        if blocked := self._nopass(user, acl):
                            return PreflightResult(Readiness.BLOCKED, blocked)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if refused is not None:
            return PreflightResult(Readiness.BLOCKED, refused)
        where = ", ".join(self._integration.host_port(url) for url in self._nodes())
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

    def _nopass(self, user: str, acl: _AclUser) -> str | None:
        """Why a password cannot be added to `user` on this node, or None. Adding one ends
        `nopass`: every consumer of the user would be refused until it has the new
        password, which is no overlap at all."""
        if self.config.strategy == "dual_password" and "nopass" in acl.flags:
            return (
                f"ACL user {user} on {self._where()} has nopass; adding a password "
                "would lock out its consumers (give it a password first)"
            )
        return None

    def _others_said(self, user: str, acl: _AclUser, marker: Mapping[str, str]) -> str:
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

    async def adopt_existing(self, request: AdoptRequest) -> AdoptedVersion | None:
        """The user's passwords that keyshift did not add, on any node, as one version
        (None if there are none). Their hashes are listed in the marker key on the primary,
        for `revoke`; the version carries only their count. Changes no password."""
        user = self._pick_user(None)
        primary, *replicas = self._nodes()
        found: list[str] = []
        async with self._admin(primary) as conn:
            ours = (await self._marker(conn, user)).get("sha256")
            for url in replicas:
                async with self._admin(url) as node:
                    found += (await self._require_user(node, user)).passwords
            found = (await self._require_user(conn, user)).passwords + found
            others = list(dict.fromkeys(h for h in found if h != ours))
            if not others:
                return None
            with self._errors(f"recording the adopted passwords of ACL user {user}"):
                await conn.hset(MARKER_KEY_PREFIX + user, ADOPTED_FIELD, ",".join(others))
        return AdoptedVersion(
            provider_ref=f"{user}:adopted",
            attributes={
                "username": user,
                "adopted_passwords": str(len(others)),
                **self._integration.endpoint(),
            },
        )

    async def _retire(self, user: str) -> RevokeResult:
        """Remove the adopted passwords still present on each node, then read the user
        again to prove them gone. Never removes keyshift's own password or a node's last."""
        primary, *_ = self._nodes()
        async with self._admin(primary) as conn:
            marker = await self._marker(conn, user)
        listed = {h for h in marker.get(ADOPTED_FIELD, "").split(",") if h} - {marker.get("sha256")}
        retired = 0
        for url in self._nodes():
            async with self._admin(url) as conn:
                acl = await self._getuser(conn, user)
                present = [h for h in (acl.passwords if acl else []) if h in listed]
                if acl is None or not present:
                    await self._persist(conn)
                    continue
                if set(acl.passwords) <= set(present):
                    raise PermanentError(
                        f"refusing to remove the last password(s) of ACL user {user} on "
                        f"{self._where()}; keyshift's own password is missing"
                    )
                with self._errors(f"retiring the adopted passwords of ACL user {user}"):
                    await _setuser(conn, user, [f"!{h}" for h in present])
                await self._persist(conn)
                left = [h for h in present if h in (await self._require_user(conn, user)).passwords]
                if left:
                    raise PermanentError(
                        f"ACL user {user} on {self._where()} still holds {len(left)} adopted "
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
                "nodes": str(len(self._nodes())),
                "proof": "ACL GETUSER no longer lists them",
            }
        )

    def _rotation_commands(self, user: str) -> list[tuple[str, ...]]:
        """The commands a rotation of `user` runs as the admin, for `ACL DRYRUN`."""
        key = MARKER_KEY_PREFIX + user
        commands: list[tuple[str, ...]] = [
            ("ACL", "SETUSER", user, "on"),
            ("HGETALL", key),
            ("HSET", key, "marker", "preflight"),
            ("MULTI",),
            ("EXEC",),
        ]
        mode = self._integration.persist_acl
        if mode == "acl_save":
            commands.append(("ACL", "SAVE"))
        elif mode == "config_rewrite":
            commands.append(("CONFIG", "REWRITE"))
        return commands

    async def _dry_run(
        self, conn: aioredis.Redis, admin: str, users: list[str]
    ) -> tuple[str | None, bool]:
        """(the first command `ACL DRYRUN` refuses the admin, or None; whether the dry run
        could be asked at all)."""
        for user in users:
            for command in self._rotation_commands(user):
                try:
                    reply = await conn.execute_command("ACL", "DRYRUN", admin, *command)  # type: ignore[no-untyped-call]
                except NoPermissionError:
                    return None, False
                except ResponseError as exc:
                    if "unknown" in str(exc).lower():
                        return None, False  # Redis 6 has no ACL DRYRUN
                    raise _classify(exc, "ACL DRYRUN", self._where(), ()) from exc
                except RedisError as exc:
                    raise _classify(exc, "ACL DRYRUN", self._where(), ()) from exc
                if reply is not True and _as_str(reply) != "OK":
                    return (
                        f"admin user {admin} on {self._where()} may not run "
                        f"{' '.join(command[:2])} for ACL user {user}: {_as_str(reply)}",
                        True,
                    )
        return None, True

    async def create(self, request: CreateRequest) -> IssuedVersion:
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
        primary, *replicas = self._nodes()
        async with self._admin(primary) as conn:
            acl = await self._require_user(conn, user)
            marker = await self._marker(conn, user)
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
            with self._errors(f"adding a password to ACL user {user}", password):
                async with conn.pipeline(transaction=True) as pipe:
                    pipe.hset(MARKER_KEY_PREFIX + user, mapping=record)
                    pipe.execute_command(
                        "ACL", "SETUSER", user, *self._add_rules(acl, orphan, digest)
                    )
                    await pipe.execute()
            await self._persist(conn)
        for url in replicas:
            # ACLs are not replicated: the same change on each node, where it holds the
            # user (a repeat finds the orphan by the primary's marker).
            async with self._admin(url) as conn:
                acl = await self._require_user(conn, user)
                self._refuse_nopass(user, acl)
                with self._errors(f"adding a password to ACL user {user}", password):
                    await _setuser(conn, user, self._add_rules(acl, orphan, digest))
                await self._persist(conn)
        log.info("redis.password_added", user=user, nodes=len(replicas) + 1, marker=request.marker)
        return login_version(self._integration, user, request.marker, password, expires)

    def _refuse_nopass(self, user: str, acl: _AclUser) -> None:
        if refused := self._nopass(user, acl):
            raise PermanentError(refused)

    def _add_rules(self, acl: _AclUser, orphan: str | None, digest: str) -> list[str]:
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

    def _consumer_url(self, attributes: Mapping[str, str], node: str | None = None) -> str:
        """The integration's URL (scheme and TLS options) at the version's host, port and
        database (or at `node`, a further node's URL), without the admin user."""
        parts = urlsplit(self._integration.dsn)
        ep = self._integration.endpoint(node)
        host = ep["host"] if node else attributes.get("host") or ep["host"]
        port = ep["port"] if node else attributes.get("port") or ep["port"]
        database = attributes.get("database") or ep["database"]
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        """Authenticate as a consumer would (`AUTH user password`, then `PING`) on a new
        connection to every node. Accepted on some nodes and refused on others is
        `partial` (a node has not the change yet, or still has it); refused everywhere is
        `ok=False`. An unreachable node raises TransientError naming it, since it proves
        nothing about the version."""
        replicas = self._nodes()[1:]
        answers = [await self._auth(request.version, None)]
        for url in replicas:
            answers.append(await self._auth(request.version, url))
        accepted = [where for where, ok, _ in answers if ok]
        refused = [f"{where}: {detail}" for where, ok, detail in answers if not ok]
        if not refused:
            return VerifyResult(ok=True, detail=answers[0][2])
        if not accepted:
            return VerifyResult(ok=False, detail="; ".join(refused) if replicas else answers[0][2])
        return VerifyResult(
            ok=False,
            partial=True,
            detail=f"accepted on {', '.join(accepted)}; refused on {'; '.join(refused)}",
        )

    async def _auth(self, version: IssuedVersion, node: str | None) -> tuple[str, bool, str]:
        """(node, accepted, what it said) for one AUTH as the version's user."""
        attrs = version.attributes
        user = attrs.get("username", "")
        value = version.value
        url = self._consumer_url(attrs, node)
        where = self._integration.host_port(url)
        client = aioredis.Redis.from_url(
            url,
            username=user,
            password=value.reveal(),
            socket_connect_timeout=self._timeout(),
            socket_timeout=self._timeout(),
            retry=Retry(NoBackoff(), 0),
        )
        try:
            try:
                pong = await client.ping()
            except AuthenticationError as exc:
                detail = _first_line(exc, [value.reveal()])
                return where, False, f"AUTH as {user} refused: {detail}"
            except NoPermissionError:
                # AUTH succeeded on connect; the user may simply not be allowed PING.
                return where, True, f"AUTH as {user} ok; PING not permitted"
            except RedisError as exc:
                raise _classify(exc, f"AUTH as {user}", where, [value.reveal()]) from exc
        finally:
            await client.aclose()
        return where, bool(pong), f"AUTH as {user} ok; PING"

    async def revoke(self, request: RevokeRequest) -> RevokeResult:
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
            return await self._retire(user)
        digest = password_hash(request.version.value.reveal())
        outcome: dict[str, str] = {"user": user}
        revoked_on = 0
        for url in self._nodes():
            async with self._admin(url) as conn:
                acl = await self._getuser(conn, user)
                if acl is None or digest not in acl.passwords:
                    # Persist anyway: a revoke that failed after the change but before the
                    # save would otherwise leave the password in the saved ACL.
                    await self._persist(conn)
                    continue
                if self.config.strategy == "alternating_users":
                    rules, outcome = ["off", "resetpass"], {"user": user, "login": "disabled"}
                else:
                    if acl.passwords == [digest]:
                        # The only password left: the new version is gone, and removing
                        # this one would lock every consumer out.
                        raise PermanentError(
                            f"refusing to remove the only password of ACL user {user} on "
                            f"{self._where()}; the new version is missing"
                        )
                    rules = [f"!{digest}"]
                    outcome = {
                        "user": user,
                        "password": "removed",
                        "remaining": str(len(acl.passwords) - 1),
                    }
                with self._errors(f"revoking a password of ACL user {user}"):
                    await _setuser(conn, user, rules)
                await self._persist(conn)
                revoked_on += 1
        if not revoked_on:
            return RevokeResult(already_gone=True, detail={"user": user})
        if len(self._nodes()) > 1:
            outcome["nodes"] = str(revoked_on)
        log.info("redis.password_revoked", user=user, nodes=revoked_on)
        return RevokeResult(detail=outcome)

    async def residual_use(self, request: UsageRequest) -> UsageReport:
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
        addresses: list[str] = []
        for url in self._nodes():
            async with self._admin(url) as conn:
                with self._errors(f"listing the clients of ACL user {user}"):
                    # One pipeline, one connection: the id is that of the connection listing.
                    async with conn.pipeline(transaction=False) as pipe:
                        pipe.client_id()
                        pipe.client_list()
                        own_id, clients = await pipe.execute()
            own = str(own_id)
            addresses += [
                str(client.get("addr", ""))
                for client in clients
                if client.get("user") == user and str(client.get("id")) != own
            ]
        detail: dict[str, Any] = {
            "user": user,
            "clients": len(addresses),
            "addresses": addresses[:MAX_ADDRESSES],
        }
        return UsageReport(sessions=len(addresses), detail=detail)

    async def list_versions(self, request: ListRequest) -> list[VersionInfo]:
        """One entry per password the rotated user(s) hold, oldest first. The password a
        rotation added carries its marker; others are named `user:password-N`."""
        users = self.config.users or [self.config.user or ""]
        out: list[VersionInfo] = []
        async with self._admin() as conn:
            for user in users:
                acl = await self._getuser(conn, user)
                if acl is None or not acl.enabled:
                    continue
                marker = await self._marker(conn, user)
                for i, digest in enumerate(acl.passwords, start=1):
                    if digest == marker.get("sha256") and marker.get("marker"):
                        out.append(
                            VersionInfo(
                                provider_ref=f"{user}:{marker['marker']}",
                                marker=marker["marker"],
                                created_at=_parse_time(marker.get("created_at")),
                                expires_at=_parse_time(marker.get("expires_at")),
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


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
