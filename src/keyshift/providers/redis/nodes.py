"""The admin connections to every node of a Redis integration, and what their errors mean.

Redis does not replicate ACL rules, so keyshift makes each change on `dsn` (the primary)
and on every node listed under `nodes`. `RedisNodes` opens the admin connection to one
node at a time, names that node in every error and translates redis-py's errors into
TransientError / PermanentError.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import ClassVar, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import Field, field_validator
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

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError, PluginError, TransientError, scrub
from keyshift.providers.base import IssuedVersion
from keyshift.providers.connection import AdminConnection

_NODE: ContextVar[str | None] = ContextVar("keyshift_redis_node", default=None)
"""The `host:port` of the node the admin connection open in this task talks to."""
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


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


def first_line(exc: BaseException, known: Iterable[str]) -> str:
    return scrub((str(exc).strip().splitlines() or [""])[0], known)


def classify(exc: RedisError, doing: str, where: str, known: Iterable[str]) -> PluginError:
    """Map a redis-py error to keyshift's: refusals are permanent, an unreachable or
    loading server is transient. `known` are values scrubbed from the server's text."""
    first = first_line(exc, known)
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


class RedisNodes:
    """The nodes of one integration, reached as its admin user: `dsn` first, then each of
    `nodes`. Built for each step from the integration as the step finds it."""

    def __init__(self, integration: RedisIntegration, context: PluginContext) -> None:
        self.integration = integration
        self.context = context

    def where(self) -> str:
        """The node the open admin connection talks to (the `dsn` outside of one)."""
        return _NODE.get() or self.integration.host_port()

    def urls(self) -> list[str]:
        return self.integration.node_urls()

    def timeout(self) -> float:
        return max(0.1, self.integration.connect_timeout.total_seconds())

    @asynccontextmanager
    async def admin(self, url: str | None = None) -> AsyncIterator[aioredis.Redis]:
        """An admin connection to `url` (a node URL; the `dsn`, the primary, by default)."""
        integration = self.integration
        url = url or integration.dsn
        password = self.context.secret("password_from", integration.password_from)
        # No client-side retries: the engine retries a step that raised TransientError.
        node = _NODE.set(integration.host_port(url))
        client = aioredis.Redis.from_url(
            url,
            password=password.reveal(),
            socket_connect_timeout=self.timeout(),
            socket_timeout=self.timeout(),
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            with self.errors("admin connection", password):
                yield client
        finally:
            await client.aclose()
            _NODE.reset(node)

    @contextmanager
    def errors(self, doing: str, *known: Secret) -> Iterator[None]:
        """Translate redis-py errors raised inside into TransientError / PermanentError."""
        try:
            yield
        except RedisError as exc:
            values = [s.reveal() for s in known]
            admin = unquote(urlsplit(self.integration.dsn).username or "")
            where = f"{self.where()} (admin user {admin})"
            raise classify(exc, doing, where, values) from exc

    def consumer_url(self, attributes: Mapping[str, str], node: str | None = None) -> str:
        """The integration's URL (scheme and TLS options) at the version's host, port and
        database (or at `node`, a further node's URL), without the admin user."""
        parts = urlsplit(self.integration.dsn)
        ep = self.integration.endpoint(node)
        host = ep["host"] if node else attributes.get("host") or ep["host"]
        port = ep["port"] if node else attributes.get("port") or ep["port"]
        database = attributes.get("database") or ep["database"]
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))

    async def auth_everywhere(self, version: IssuedVersion) -> list[tuple[str, bool, str]]:
        """(node, accepted, what it said) for one AUTH as the version's user on each node,
        the `dsn` first."""
        replicas = self.urls()[1:]
        answers = [await self.auth(version, None)]
        for url in replicas:
            answers.append(await self.auth(version, url))
        return answers

    async def client_addresses(self, user: str) -> list[str]:
        """The address of each client connected as `user` on every node (`CLIENT LIST`),
        not counting the admin connection asking (`CLIENT ID`)."""
        addresses: list[str] = []
        for url in self.urls():
            async with self.admin(url) as conn:
                with self.errors(f"listing the clients of ACL user {user}"):
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
        return addresses

    async def auth(self, version: IssuedVersion, node: str | None) -> tuple[str, bool, str]:
        """(node, accepted, what it said) for one AUTH as the version's user."""
        attrs = version.attributes
        user = attrs.get("username", "")
        value = version.value
        url = self.consumer_url(attrs, node)
        where = self.integration.host_port(url)
        client = aioredis.Redis.from_url(
            url,
            username=user,
            password=value.reveal(),
            socket_connect_timeout=self.timeout(),
            socket_timeout=self.timeout(),
            retry=Retry(NoBackoff(), 0),
        )
        try:
            try:
                pong = await client.ping()
            except AuthenticationError as exc:
                detail = first_line(exc, [value.reveal()])
                return where, False, f"AUTH as {user} refused: {detail}"
            except NoPermissionError:
                # AUTH succeeded on connect; the user may simply not be allowed PING.
                return where, True, f"AUTH as {user} ok; PING not permitted"
            except RedisError as exc:
                raise classify(exc, f"AUTH as {user}", where, [value.reveal()]) from exc
        finally:
            await client.aclose()
        return where, bool(pong), f"AUTH as {user} ok; PING"
