"""`postgres`: login passwords of PostgreSQL roles, set through an admin connection.

Two strategies, as the serious tools offer them:

- `alternating_users`: two login roles (`app_a`, `app_b`) that are members of one
  group role holding the grants. A rotation sets a fresh password on the role not
  in use; consumers switch to that user; revocation disables the old role's login
  (`NOLOGIN`, `PASSWORD NULL`), never dropping it. Old and new are valid together,
  so the cutover has no window.
- `single_user`: `ALTER ROLE ... PASSWORD` on one role. A role has one password,
  so the old one stops working the moment the new one is set: consumers that have
  not reloaded yet fail to open *new* connections until they do (open sessions
  stay up). That cutover window lasts from `creating` until the last consumer
  reloads; `keyshift status` marks such credentials `in place`.

Passwords are sent as SCRAM-SHA-256 verifiers computed here, so the plain password
never reaches the server's statement log. Identifiers and literals are quoted with
psycopg's `sql` module. The role carries the rotation marker as its comment, so
the issuer itself records which rotation set its password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, LiteralString

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, model_validator

from keyshift.domain.secret import Secret
from keyshift.errors import KeyshiftError, PermanentError, TransientError
from keyshift.providers import base
from keyshift.providers.base import (
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
    AdminConnection,
    ConnectedProvider,
    alternate_user,
    imported_login,
    login_version,
)
from keyshift.providers.random import DEFAULT_ALPHABET, Alphabet, draw

SCRAM_ITERATIONS = 4096
"""PostgreSQL's default `scram_iterations`."""
ADMIN_OPTION_SINCE = 160000
"""From PostgreSQL 16 a CREATEROLE role alters only roles it holds ADMIN OPTION on."""


class PostgresIntegration(AdminConnection):
    """A PostgreSQL admin connection. The admin role needs `CREATEROLE` (or to be the
    roles' owner) to alter the rotated roles."""

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    default_port: ClassVar[int] = 5432
    default_database: ClassVar[str] = "postgres"


class PostgresConfig(BaseModel):
    """Which roles to rotate, and how."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str
    """The `postgres` integration (admin connection) to use; may be left out when the estate
    declares exactly one."""
    strategy: Literal["alternating_users", "single_user"] = "alternating_users"
    """`alternating_users` (no cutover window) or `single_user` (one role, in place)."""
    users: list[str] | None = None
    """alternating_users: the two login roles that take turns."""
    group_role: str | None = None
    """alternating_users: the role holding the grants; both users must be members."""
    user: str | None = None
    """single_user: the role whose password is replaced."""
    password_length: int = Field(default=32, ge=16, le=128)
    """Length of generated passwords."""
    password_alphabet: Alphabet = DEFAULT_ALPHABET
    """Characters generated passwords are drawn from."""

    @model_validator(mode="after")
    def _strategy_fields(self) -> PostgresConfig:
        if self.strategy == "alternating_users":
            if not self.users or len(self.users) != 2 or self.users[0] == self.users[1]:
                raise ValueError("alternating_users needs users: [two distinct roles]")
            if not self.group_role:
                raise ValueError("alternating_users needs group_role (the role with the grants)")
            if self.user:
                raise ValueError("user belongs to single_user; alternating_users takes users")
        else:
            if not self.user:
                raise ValueError("single_user needs user (the role whose password changes)")
            if self.users or self.group_role:
                raise ValueError("users and group_role belong to alternating_users")
        return self


def scram_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _classify(exc: psycopg.Error, doing: str) -> PermanentError | TransientError:
    """Map a driver error to keyshift's: permissions and missing roles are permanent."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PermanentError(f"{doing}: the admin role lacks the privilege ({first})")
    if sqlstate == "28P01" or "password authentication failed" in first:
        return PermanentError(f"{doing}: authentication failed ({first})")
    if isinstance(exc, psycopg.OperationalError):
        return TransientError(f"{doing}: cannot reach the server ({first})")
    return PermanentError(f"{doing}: {first}")


class PostgresProvider(ConnectedProvider[PostgresConfig, PostgresIntegration]):
    """Sets, verifies and disables PostgreSQL role passwords."""

    kind: ClassVar[str] = "postgres"
    Config: ClassVar[type[BaseModel]] = PostgresConfig
    capability_fields: ClassVar[tuple[str, ...]] = ("strategy",)
    propagation: ClassVar[Propagation] = Propagation(
        timedelta(seconds=30),
        "a password change is immediate on the primary; replicas and poolers follow "
        "within seconds (WAL replay, pooler auth cache)",
    )
    integration_type: ClassVar[str] = "postgres"
    integration_model = PostgresIntegration

    @classmethod
    def describe(
        cls, config: PostgresConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """What it changes: the passwords of these roles on this server."""
        integration = cls.declared(config, integrations)
        server = integration.server() if integration is not None else "(integration not declared)"
        roles = config.users if config.strategy == "alternating_users" else [config.user]
        where = {
            "integration": config.integration,
            "server": server,
            "strategy": config.strategy,
            "roles": ", ".join(r for r in roles or [] if r),
        }
        if config.group_role:
            where["group_role"] = config.group_role
        return where

    @property
    def capabilities(self) -> frozenset[Capability]:
        overlap = (
            Capability.DUAL_ACTIVE
            if self.config.strategy == "alternating_users"
            else Capability.IN_PLACE
        )
        if self.config.strategy == "alternating_users":
            # Each version is its own role, so sessions per role show who still uses it.
            return frozenset(
                {
                    overlap,
                    Capability.AUTHENTICATES,
                    Capability.RESIDUAL_USE,
                    Capability.INSPECTS,
                    Capability.IMPORTS,
                }
            )
        return frozenset(
            {overlap, Capability.AUTHENTICATES, Capability.INSPECTS, Capability.IMPORTS}
        )

    @asynccontextmanager
    async def _admin(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        integration = self._integration
        password = self.context.secret("password_from", integration.password_from)
        try:
            conn = await psycopg.AsyncConnection.connect(
                integration.dsn,
                password=password.reveal(),
                connect_timeout=max(1, int(integration.connect_timeout.total_seconds())),
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise _classify(exc, f"admin connection to {self._where()}") from None
        try:
            yield conn
        finally:
            await conn.close()

    async def _rows(
        self, query: LiteralString, params: tuple[object, ...]
    ) -> list[tuple[Any, ...]]:
        """The rows `query` answers on a fresh admin connection."""
        async with self._admin() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    def _where(self) -> str:
        return self._integration.server()

    def _generate(self) -> str:
        return draw(self.config.password_alphabet, self.config.password_length)

    async def _check_role(self, conn: psycopg.AsyncConnection[Any], role: str) -> None:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if await cur.fetchone() is None:
            raise PermanentError(f"role {role} does not exist on {self._where()}")
        group = self.config.group_role
        if group is not None:
            cur = await conn.execute(
                "SELECT pg_has_role(%s, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s",
                (role, group, group),
            )
            row = await cur.fetchone()
            if row is None:
                raise PermanentError(f"group role {group} does not exist on {self._where()}")
            if not row[0]:
                raise PermanentError(f"role {role} is not a member of group role {group}")

    def _pick_user(self, current: IssuedVersion | None) -> str:
        if self.config.strategy == "single_user":
            assert self.config.user is not None  # noqa: S101 (guaranteed by the config model)
            return self.config.user
        # The role not in use takes the new password.
        return alternate_user(self.config.users or [], current)

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Log in as the admin and check each rotated role: it exists, belongs to the group
        role (alternating_users), and the admin may alter it. Changes nothing.

        The admin may alter a role when it is a superuser, or when it has CREATEROLE and
        the role is neither a superuser nor a replication role; from PostgreSQL 16 it
        also needs ADMIN OPTION on the role (which the role's creator holds).
        """
        roles = self.config.users or [self.config.user or ""]
        try:
            async with self._admin() as conn:
                try:
                    problem, admin = await self._alter_problem(conn, roles)
                except psycopg.Error as exc:
                    raise _classify(exc, f"preflight on {self._where()}") from None
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if problem is not None:
            return PreflightResult(Readiness.BLOCKED, problem)
        return PreflightResult(
            Readiness.READY, f"{admin} may alter role(s) {', '.join(roles)} on {self._where()}"
        )

    async def _alter_problem(
        self, conn: psycopg.AsyncConnection[Any], roles: list[str]
    ) -> tuple[str | None, str]:
        """(why the admin may not alter one of `roles`, or None; the admin and its right)."""
        cur = await conn.execute(
            "SELECT rolname, rolsuper, rolcreaterole, current_setting('server_version_num')::int "
            "FROM pg_roles WHERE rolname = current_user"
        )
        row = await cur.fetchone()
        if row is None:
            raise PermanentError(f"the admin role is not listed in pg_roles on {self._where()}")
        admin, is_super, createrole, version = row
        who = f"admin {admin} ({'superuser' if is_super else 'CREATEROLE'})"
        for role in roles:
            await self._check_role(conn, role)
            if is_super:
                continue
            cur = await conn.execute(
                "SELECT rolsuper, rolreplication, "
                "pg_has_role(%s, oid, 'MEMBER WITH ADMIN OPTION') "
                "FROM pg_roles WHERE rolname = %s",
                (admin, role),
            )
            found = await cur.fetchone()
            if found is None:
                return f"role {role} does not exist on {self._where()}", who
            role_super, replication, admin_option = found
            if role_super or replication:
                kind = "superuser" if role_super else "replication role"
                return f"role {role} is a {kind}; only a superuser admin may alter it", who
            if not createrole:
                return (
                    f"admin role {admin} on {self._where()} lacks the privilege to alter role "
                    f"{role}: it has neither SUPERUSER nor CREATEROLE",
                    who,
                )
            if version >= ADMIN_OPTION_SINCE and not admin_option:
                return (
                    f"admin role {admin} lacks ADMIN OPTION on role {role} (PostgreSQL 16+: "
                    f"GRANT {role} TO {admin} WITH ADMIN OPTION)",
                    who,
                )
        return None, who

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Set a fresh password on the role that is not in use (or the single role).

        Idempotent in versions: after a crash the engine calls again for the same
        rotation and the same role simply gets another fresh password; no second
        role is ever switched. The role's comment records the rotation marker.
        """
        user = self._pick_user(request.current)
        password = Secret(self._generate())
        lifetime = request.policy.max_lifetime
        expires = self.context.now() + lifetime if lifetime is not None else None
        valid_until = expires.isoformat() if expires is not None else "infinity"
        async with self._admin() as conn:
            await self._check_role(conn, user)
            try:
                await conn.execute(
                    sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {}").format(
                        sql.Identifier(user),
                        sql.Literal(scram_verifier(password.reveal())),
                        sql.Literal(valid_until),
                    )
                )
                await conn.execute(
                    sql.SQL("COMMENT ON ROLE {} IS {}").format(
                        sql.Identifier(user), sql.Literal(request.marker)
                    )
                )
            except psycopg.Error as exc:
                raise _classify(exc, f"setting the password of role {user}") from None
        return login_version(self._integration, user, request.marker, password, expires)

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """The role whose password the value is, proven by logging in as a consumer would
        (the single role, or the alternating role named or found); its expiry is the
        role's `VALID UNTIL`. Changes nothing."""
        users = self.config.users or [self.config.user or ""]
        version = await imported_login(self._integration, users, request, self.verify)
        user = version.attributes.get("username", "")
        rows = await self._rows(
            "SELECT NULLIF(rolvaliduntil, 'infinity') FROM pg_roles WHERE rolname = %s", (user,)
        )
        until = rows[0][0] if rows and isinstance(rows[0][0], datetime) else None
        return IssuedVersion(version.provider_ref, version.value, version.attributes, until)

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """Log in as a consumer would and run `SELECT 1`."""
        attrs = request.version.attributes
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=attrs.get("host"),
                port=attrs.get("port"),
                dbname=attrs.get("database"),
                user=attrs.get("username"),
                password=request.version.value.reveal(),
                connect_timeout=max(1, int(self._integration.connect_timeout.total_seconds())),
            )
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            return VerifyResult(ok=False, detail=f"login as {attrs.get('username')}: {first}")
        try:
            cur = await conn.execute("SELECT 1")
            ok = (await cur.fetchone()) == (1,)
        finally:
            await conn.close()
        return VerifyResult(ok=ok, detail=f"logged in as {attrs.get('username')}; SELECT 1")

    async def inspect(self, request: base.VerifyRequest) -> VerifyResult | None:
        """Whether the role still holds the version, read from `pg_authid`: the password
        matches the stored SCRAM-SHA-256 verifier (or md5 hash) and the role may log in.
        No login is tried, so none fails. None when the admin may not read `pg_authid`
        (only superusers may): the caller then signs in instead."""
        user = request.version.attributes.get("username", "")
        async with self._admin() as conn:
            try:
                cur = await conn.execute(
                    "SELECT rolpassword, rolcanlogin FROM pg_authid WHERE rolname = %s", (user,)
                )
                row = await cur.fetchone()
            except psycopg.errors.InsufficientPrivilege:
                return None
            except psycopg.Error as exc:
                raise _classify(exc, f"reading pg_authid on {self._where()}") from None
        if row is None:
            return VerifyResult(ok=False, detail=f"role {user} does not exist")
        stored, can_login = row
        if not can_login:
            return VerifyResult(ok=False, detail=f"role {user} may not log in")
        if not stored or not password_matches(stored, user, request.version.value.reveal()):
            return VerifyResult(
                ok=False, detail=f"pg_authid holds another password for role {user}"
            )
        return VerifyResult(ok=True, detail=f"pg_authid holds this password for role {user}")

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """alternating_users: disable the old role's login (`NOLOGIN`, `PASSWORD NULL`);
        never drop it. Succeeds if it is already disabled. single_user: the old password
        was replaced at creation, so there is nothing left to revoke."""
        user = request.version.attributes.get("username", "")
        if self.config.strategy == "single_user":
            return RevokeResult(already_gone=True, detail={"role": user, "strategy": "in place"})
        if user not in (self.config.users or []):
            raise PermanentError(f"version {request.version.provider_ref} names no rotated role")
        async with self._admin() as conn:
            cur = await conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (user,))
            row = await cur.fetchone()
            if row is None:
                return RevokeResult(already_gone=True, detail={"role": user, "missing": "yes"})
            if not row[0]:
                # NOLOGIN and PASSWORD NULL are set by one statement: already revoked.
                return RevokeResult(already_gone=True, detail={"role": user})
            try:
                await conn.execute(
                    sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(sql.Identifier(user))
                )
            except psycopg.Error as exc:
                raise _classify(exc, f"disabling the login of role {user}") from None
        return RevokeResult(detail={"role": user, "login": "disabled"})

    async def residual_use(self, request: base.UsageRequest) -> UsageReport:
        """Client sessions of the version's role, from `pg_stat_activity` (all databases).

        Any role sees every session's `usename`; without `pg_read_all_stats` the other
        columns (backend type, client address, start) read NULL, so only the count is
        relied on and the addresses are reported when visible.
        """
        user = request.version.attributes.get("username", "")
        rows = await self._rows(
            "SELECT count(*), count(DISTINCT client_addr), min(backend_start) "
            "FROM pg_stat_activity WHERE usename = %s "
            "AND (backend_type IS NULL OR backend_type = 'client backend')",
            (user,),
        )
        sessions, clients, oldest = rows[0] if rows else (0, 0, None)
        detail: dict[str, Any] = {"role": user, "clients": int(clients)}
        if isinstance(oldest, datetime):
            detail["oldest_session_start"] = oldest.isoformat()
        return UsageReport(sessions=int(sessions), detail=detail)

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """The rotated roles, with the marker of the rotation that last set each password."""
        roles = self.config.users or [self.config.user or ""]
        rows = await self._rows(
            "SELECT rolname, shobj_description(oid, 'pg_authid'), "
            "NULLIF(rolvaliduntil, 'infinity') "
            "FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
            (roles,),
        )
        out: list[VersionInfo] = []
        for name, comment, valid_until in rows:
            marker = (
                comment if isinstance(comment, str) and comment.startswith("keyshift:") else None
            )
            expires = valid_until if isinstance(valid_until, datetime) else None
            out.append(
                VersionInfo(provider_ref=name, marker=marker, created_at=None, expires_at=expires)
            )
        return out

    async def aclose(self) -> None:
        """Connections are opened per call; nothing stays open."""
        return


def password_matches(stored: str, user: str, password: str) -> bool:
    """Whether `password` is the one PostgreSQL stored as `stored` (`rolpassword`): a
    SCRAM-SHA-256 verifier (recomputed with its own salt and iterations) or an md5 hash
    (`md5` + md5(password + user)). Unknown or malformed forms do not match."""
    if stored.startswith("SCRAM-SHA-256$"):
        try:
            iterations, salt = stored.split("$")[1].split(":")
            again = scram_verifier(
                password, salt=base64.b64decode(salt, validate=True), iterations=int(iterations)
            )
        except (ValueError, IndexError):
            return False
        return hmac.compare_digest(again, stored)
    if stored.startswith("md5"):
        digest = "md5" + hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324
        return hmac.compare_digest(digest, stored)
    return False
