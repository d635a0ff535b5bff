"""The `postgres` provider against a real PostgreSQL 15 server with SCRAM password logins.

Store tests trust every login; these use a server that checks passwords, so a
revoked or replaced password is really refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.errors import PermanentError, TransientError
from keyshift.providers.base import (
    CreateRequest,
    IssuedVersion,
    PreflightRequest,
    PreflightResult,
    Readiness,
    VerifyRequest,
)
from keyshift.providers.postgres import (
    PostgresConfig,
    PostgresIntegration,
    PostgresProvider,
    password_matches,
    scram_verifier,
)
from keyshift.service import rotations
from keyshift.store.store import Store
from keyshift.testing import assert_provider_contract
from tests.conftest import Cli, run_subprocess
from tests.doubles.kubernetes import KubernetesDouble
from tests.doubles.tls import make_pki
from tests.helpers import (
    env_value,
    rotate_under_load,
    rotations_of,
    save_estate,
    steps,
    table_rows,
    versions,
)
from tests.servers import postgres_server

SUPERUSER_PASSWORD = "su-" + uuid.uuid4().hex
ADMIN_PASSWORD = "ADMIN-" + uuid.uuid4().hex


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture(scope="module")
def scram_server() -> Iterator[str]:
    with postgres_server(SUPERUSER_PASSWORD) as dsn:
        yield dsn


@dataclass
class Database:
    """One test's database and roles on the shared server."""

    host: str
    port: int
    name: str
    admin: str
    group: str
    users: tuple[str, str]
    single: str
    superuser_dsn: str

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{self.admin}@{self.host}:{self.port}/{self.name}"

    def connect(self, user: str, password: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=self.name,
            user=user,
            password=password,
            connect_timeout=5,
        )

    def can_login(self, user: str, password: str) -> bool:
        try:
            with self.connect(user, password) as conn:
                return conn.execute("SELECT count(*) FROM items").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def role(self, name: str) -> tuple[bool, str | None]:
        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles "
                "WHERE rolname = %s",
                (name,),
            ).fetchone()
        assert row is not None
        return bool(row[0]), row[1]


@pytest.fixture
def db(scram_server: str) -> Database:
    """A database with an admin (CREATEROLE), a group role holding a grant, two
    alternating login roles and one single role; all names unique to the test."""
    tag = uuid.uuid4().hex[:8]
    parts = urlsplit(scram_server)
    d = Database(
        host=parts.hostname or "",
        port=parts.port or 5432,
        name=f"app_{tag}",
        admin=f"ks_admin_{tag}",
        group=f"app_{tag}",
        users=(f"app_{tag}_a", f"app_{tag}_b"),
        single=f"single_{tag}",
        superuser_dsn=scram_server,
    )
    with psycopg.connect(scram_server, autocommit=True) as conn:
        ident = sql.Identifier
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(d.name)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                ident(d.admin), sql.Literal(ADMIN_PASSWORD)
            )
        )
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(d.group)))
        for user in d.users:
            conn.execute(
                sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE {}").format(ident(user), ident(d.group))
            )
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'initial-password' IN ROLE {}").format(
                ident(d.single), ident(d.group)
            )
        )
    db_dsn = scram_server.rsplit("/", 1)[0] + f"/{d.name}"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute("INSERT INTO items VALUES (1)")
        conn.execute(sql.SQL("GRANT SELECT ON items TO {}").format(sql.Identifier(d.group)))
    return d


def _estate(
    tmp: Path,
    d: Database,
    provider: dict[str, Any],
    *,
    dsn: str | None = None,
    extra_actions: list[dict[str, Any]] | None = None,
    policy: dict[str, Any] | None = None,
) -> Path:
    estate = {
        "integrations": [
            {
                "name": "app-db-admin",
                "type": "postgres",
                "dsn": dsn or d.admin_dsn,
                "password_from": "env:PG_ADMIN_PW",
                "connect_timeout": "3s",
            }
        ],
        "credentials": [
            {
                "name": "app-db",
                "owner": "team-app",
                "policy": policy or {"grace_period": "1h", "max_lifetime": "90d"},
                "provider": {"type": "postgres", "integration": "app-db-admin", **provider},
                "actions": [
                    {
                        "type": "file",
                        "order": 10,
                        "on_failure": "abort",
                        "config": {
                            "path": str(tmp / "db.env"),
                            "file_format": "env",
                            "keys": {"DB_USER": "username", "DB_PASSWORD": "password"},
                        },
                    },
                    *(extra_actions or []),
                ],
            }
        ],
    }
    return save_estate(tmp, estate)


def _alternating(d: Database) -> dict[str, Any]:
    return {"strategy": "alternating_users", "users": list(d.users), "group_role": d.group}


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env["PG_ADMIN_PW"] = ADMIN_PASSWORD
    return ks_env


@pytest.fixture
def pgcli(env: dict[str, str]) -> Cli:
    return Cli(env)


def _consumer(tmp: Path) -> tuple[str, str]:
    user, password = env_value(tmp / "db.env", "DB_USER"), env_value(tmp / "db.env", "DB_PASSWORD")
    assert user
    assert password
    return user, password


def test_alternating_users_switch_roles_and_disable_the_old_login(
    db: Database, pgcli: Cli, store: Store, tmp_path: Path
) -> None:
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, _alternating(db)))).exit_code == 0
    first = pgcli("rotate", "app-db")
    assert first.exit_code == 0, first.output
    user_a, password_a = _consumer(tmp_path)
    assert user_a == db.users[0]
    assert db.can_login(user_a, password_a)
    assert db.role(user_a)[1] is not None
    assert db.role(user_a)[1].startswith("keyshift:")

    second = pgcli("rotate", "app-db", "--grace", "0s")
    assert second.exit_code == 0, second.output
    user_b, password_b = _consumer(tmp_path)
    assert user_b == db.users[1]
    assert db.can_login(user_b, password_b)
    assert not db.can_login(user_a, password_a), "the old role's login is disabled"
    assert db.role(user_a)[0] is False, "NOLOGIN, and the role still exists"
    _, rotation = rotations_of(store, "app-db")
    [revoking] = [s for s in steps(store, rotation.id) if s.name == "revoking"]
    assert revoking.detail["revocation_proof"].startswith("refused")
    assert [v.status for v in versions(store, "app-db")] == ["revoked", "current"]


def test_a_kubernetes_secret_with_keys_gets_each_new_role_with_its_password(
    db: Database, pgcli: Cli, tmp_path: Path
) -> None:
    """The Secret's user and password change together, so the pods never read a new
    password beside the old role."""
    with KubernetesDouble(make_pki(tmp_path / "pki")) as kube:
        kube.add_secret("payments", "payments-db", {"DB_HOST": "db.internal"})
        secret = {
            "type": "kubernetes_secret",
            "order": 20,
            "on_failure": "abort",
            "config": {
                "kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig")),
                "namespace": "payments",
                "secret": "payments-db",
                "keys": {"DB_USER": "username", "DB_PASSWORD": "password"},
            },
        }
        estate = _estate(tmp_path, db, _alternating(db), extra_actions=[secret])
        assert pgcli("apply", "-f", str(estate)).exit_code == 0

        seen = []
        for grace in ("1h", "0s"):
            rotated = pgcli("rotate", "app-db", "--grace", grace)
            assert rotated.exit_code == 0, rotated.output
            data = kube.secret_data("payments", "payments-db") or {}
            seen.append((data["DB_USER"], data["DB_PASSWORD"]))
            assert (data["DB_USER"], data["DB_PASSWORD"]) == _consumer(tmp_path)
            assert data["DB_HOST"] == "db.internal"
            assert db.can_login(data["DB_USER"], data["DB_PASSWORD"])

    assert [user for user, _ in seen] == list(db.users)
    assert kube.writes == [("PATCH", "/api/v1/namespaces/payments/secrets/payments-db")] * 2


def test_single_user_replaces_the_password_in_place(
    db: Database, pgcli: Cli, store: Store, tmp_path: Path
) -> None:
    provider = {"strategy": "single_user", "user": db.single}
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, provider))).exit_code == 0
    assert pgcli("rotate", "app-db").exit_code == 0
    assert not db.can_login(db.single, "initial-password"), "one password per role"
    user, first_password = _consumer(tmp_path)
    assert db.can_login(user, first_password)
    assert pgcli("rotate", "app-db", "--grace", "0s").exit_code == 0
    _, second_password = _consumer(tmp_path)
    assert db.can_login(user, second_password)
    assert not db.can_login(user, first_password)
    status = pgcli("status").output
    assert "in place" in status


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable admin server", "cannot reach the server"),
        ("wrong admin password", "authentication failed"),
        ("admin without CREATEROLE", "lacks the privilege"),
        ("unknown role", "does not exist"),
    ],
)
def test_admin_problems_fail_with_one_clear_error_and_publish_nothing(
    case: str,
    expected: str,
    db: Database,
    pgcli: Cli,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    provider = _alternating(db)
    dsn = None
    if case == "unreachable admin server":
        dsn = f"postgresql://{db.admin}@127.0.0.1:1/{db.name}"
    elif case == "wrong admin password":
        env["PG_ADMIN_PW"] = "not-the-password"
    elif case == "admin without CREATEROLE":
        with psycopg.connect(db.superuser_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(sql.Identifier(db.admin)))
    else:
        provider = {**provider, "users": ["no_such_role", db.users[1]]}
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, provider, dsn=dsn))).exit_code == 0
    result = pgcli("rotate", "app-db")
    assert result.exit_code == 1
    assert "app-db: rotation" in result.output, "the error names the credential"
    assert "failed" in result.output
    assert expected in result.output, "and the cause"
    [rotation] = rotations_of(store, "app-db")
    assert rotation.state == "failed"
    assert rotation.error is not None
    # The provider's preflight finds the problem before anything is created.
    assert rotation.error.startswith("preflighted: preflight blocked: provider:postgres: "), (
        rotation.error
    )
    assert expected in rotation.error
    assert ADMIN_PASSWORD not in result.output + rotation.error
    assert not (tmp_path / "db.env").exists(), "nothing was published"
    assert versions(store, "app-db") == []


CRASH_POINTS = ["creating:issuer", "creating", "publishing:10:file", "revoking:issuer", "revoking"]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", CRASH_POINTS, ids=lambda b: f"killed after {b}")
def test_crash_then_resume_sets_one_password_and_disables_the_old_role_once(
    boundary: str, db: Database, pgcli: Cli, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, _alternating(db)))).exit_code == 0
    assert pgcli("rotate", "app-db").exit_code == 0
    user_a, password_a = _consumer(tmp_path)

    crashed = run_subprocess(["rotate", "app-db", "--grace", "0s"], {**env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    resumed = run_subprocess(["resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    _, rotation = rotations_of(store, "app-db")
    assert rotation.state == "completed"
    assert len(versions(store, "app-db")) == 2, "exactly one new version"
    user_b, password_b = _consumer(tmp_path)
    assert user_b == db.users[1]
    assert db.can_login(user_b, password_b), "the consumer connects with what was published"
    assert not db.can_login(user_a, password_a)
    journal = steps(store, rotation.id)
    revokes = [s for s in journal if s.name == "revoking" and s.status == "succeeded"]
    assert len(revokes) == 1
    # The issuer disabled the role once: a revoke re-run after the crash finds it disabled,
    # and after a crash past the store write the issuer is not called again at all.
    detail = revokes[0].detail
    if boundary == "revoking":
        assert detail["already_revoked"] is True
    else:
        assert detail["already_gone"] is (boundary == "revoking:issuer")


CONSUMER = textwrap.dedent(
    """
    import json, os, sys, time
    import psycopg
    env_file, host, port, db, stop, out = sys.argv[1:7]
    def settings():
        values = {}
        for line in open(env_file):
            if "=" in line and not line.startswith("#"):
                k, v = line.rstrip("\\n").split("=", 1)
                values[k] = v.strip('"')
        return values["DB_USER"], values["DB_PASSWORD"]
    def connect():
        user, password = settings()
        return psycopg.connect(host=host, port=port, dbname=db, user=user, password=password,
                               connect_timeout=5)
    pooled = connect()
    ok = failures = pooled_failures = 0
    errors = []
    while not os.path.exists(stop):
        try:
            with connect() as conn:
                conn.execute("SELECT count(*) FROM items").fetchone()
            ok += 1
        except psycopg.OperationalError as exc:
            failures += 1
            errors.append(str(exc).splitlines()[0])
        try:
            pooled.execute("SELECT 1").fetchone()
        except psycopg.Error:
            pooled_failures += 1
        time.sleep(0.02)
    json.dump({"ok": ok, "failures": failures, "pooled_failures": pooled_failures,
               "errors": errors[:5]}, open(out, "w"))
    """
)


@pytest.mark.slow
def test_a_live_consumer_never_fails_during_an_alternating_rotation(
    db: Database, pgcli: Cli, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """Zero downtime: new connections every 20 ms plus one long-lived connection, through a
    whole rotation with a short grace; the old password is refused afterwards."""
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, _alternating(db)))).exit_code == 0
    assert pgcli("rotate", "app-db").exit_code == 0
    old_user, old_password = _consumer(tmp_path)
    script, stop, out = tmp_path / "consumer.py", tmp_path / "stop", tmp_path / "result.json"
    script.write_text(CONSUMER)
    result, _duration = rotate_under_load(
        [
            sys.executable,
            str(script),
            str(tmp_path / "db.env"),
            db.host,
            str(db.port),
            db.name,
            str(stop),
            str(out),
        ],
        stop,
        out,
        "app-db",
        env,
    )
    assert result["ok"] > 50
    assert result["failures"] == 0, result["errors"]
    assert result["pooled_failures"] == 0
    assert not db.can_login(old_user, old_password)
    assert rotations_of(store, "app-db")[-1].state == "completed"


def _provider(d: Database, **config: Any) -> PostgresProvider:
    context = PluginContext(
        integrations={
            "admin": PostgresIntegration(dsn=d.admin_dsn, password_from="env:PG_ADMIN_PW")
        },
        env={"PG_ADMIN_PW": ADMIN_PASSWORD},
    )
    return PostgresProvider(PostgresConfig(integration="admin", **config), context)


def test_provider_meets_the_provider_contract(db: Database) -> None:
    asyncio.run(
        assert_provider_contract(
            _provider(db, strategy="alternating_users", users=list(db.users), group_role=db.group)
        )
    )


# --- preflight ------------------------------------------------------------------------------


def _roles_state(d: Database) -> list[tuple[Any, ...]]:
    """Every attribute, password verifier and comment of the test's roles, as stored."""
    with psycopg.connect(d.superuser_dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT a.rolname, a.rolcanlogin, a.rolpassword, a.rolvaliduntil, "
            "a.rolcreaterole, shobj_description(a.oid, 'pg_authid') FROM pg_authid a "
            "WHERE a.rolname = ANY(%s) ORDER BY a.rolname",
            ([d.admin, d.group, *d.users, d.single],),
        ).fetchall()


def _preflight(provider: PostgresProvider) -> PreflightResult:
    return asyncio.run(provider.preflight(PreflightRequest("app-db")))


@pytest.mark.parametrize("strategy", ["alternating_users", "single_user"])
def test_preflight_is_ready_when_the_admin_may_alter_the_roles_and_changes_nothing(
    db: Database, strategy: str
) -> None:
    config: dict[str, Any] = (
        {"strategy": strategy, "users": list(db.users), "group_role": db.group}
        if strategy == "alternating_users"
        else {"strategy": strategy, "user": db.single}
    )
    before = _roles_state(db)

    result = _preflight(_provider(db, **config))

    assert result.readiness == Readiness.READY, result.reason
    assert f"admin {db.admin} (CREATEROLE)" in result.reason
    for role in config.get("users") or [db.single]:
        assert role in result.reason
    assert _roles_state(db) == before


def _revoke_createrole(d: Database) -> None:
    with psycopg.connect(d.superuser_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(sql.Identifier(d.admin)))


def _make_superuser(d: Database, role: str) -> None:
    with psycopg.connect(d.superuser_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(role)))


def _drop_from_group(d: Database, role: str) -> None:
    with psycopg.connect(d.superuser_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(d.group), sql.Identifier(role))
        )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("admin without CREATEROLE", "lacks the privilege to alter role {user_a}"),
        ("rotated role is a superuser", "role {user_b} is a superuser"),
        ("rotated role missing", "role no_such_role does not exist"),
        ("rotated role not in the group role", "is not a member of group role {group}"),
        ("wrong admin password", "authentication failed"),
        ("unreachable admin server", "cannot reach the server"),
    ],
)
def test_preflight_is_blocked_naming_the_problem_and_changes_nothing(
    db: Database, case: str, expected: str
) -> None:
    users = list(db.users)
    provider = _provider(db, strategy="alternating_users", users=users, group_role=db.group)
    if case == "admin without CREATEROLE":
        _revoke_createrole(db)
    elif case == "rotated role is a superuser":
        _make_superuser(db, db.users[1])
    elif case == "rotated role missing":
        provider = _provider(
            db,
            strategy="alternating_users",
            users=[db.users[0], "no_such_role"],
            group_role=db.group,
        )
    elif case == "rotated role not in the group role":
        _drop_from_group(db, db.users[1])
    elif case == "wrong admin password":
        provider.context.env["PG_ADMIN_PW"] = "not-the-password"  # type: ignore[index]
    else:
        provider.context.integrations["admin"] = PostgresIntegration(  # type: ignore[index]
            dsn=f"postgresql://{db.admin}@127.0.0.1:1/{db.name}",
            password_from="env:PG_ADMIN_PW",
            connect_timeout="1s",
        )
    before = _roles_state(db)

    result = _preflight(provider)

    assert result.readiness == Readiness.BLOCKED
    assert expected.format(user_a=db.users[0], user_b=db.users[1], group=db.group) in result.reason
    assert ADMIN_PASSWORD not in result.reason
    assert _roles_state(db) == before


def test_preflight_accepts_a_superuser_admin_for_a_superuser_role(db: Database) -> None:
    _make_superuser(db, db.admin)
    _make_superuser(db, db.single)

    result = _preflight(_provider(db, strategy="single_user", user=db.single))

    assert result.readiness == Readiness.READY, result.reason
    assert "(superuser)" in result.reason


def test_cli_preflight_of_a_postgres_credential_lists_the_provider_first(
    db: Database, pgcli: Cli, store: Store, tmp_path: Path
) -> None:
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, _alternating(db)))).exit_code == 0
    _revoke_createrole(db)
    before = _roles_state(db)

    result = pgcli("preflight", "app-db")

    assert result.exit_code == 1, result.output
    rows = table_rows(result.output)
    assert [row[:2] for row in rows] == [
        ["provider:postgres", "blocked"],
        ["publishing:10:file", "ready"],
    ]
    assert f"lacks the privilege to alter role {db.users[0]}" in rows[0][2]
    assert _roles_state(db) == before
    assert versions(store, "app-db") == []
    assert rotations_of(store, "app-db") == []


def test_passwords_reach_the_server_only_as_scram_verifiers(db: Database) -> None:
    provider = _provider(db, strategy="single_user", user=db.single)
    issued = asyncio.run(
        provider.create(
            CreateRequest(
                credential="c", rotation_id="r", marker="keyshift:r", policy=Policy(), current=None
            )
        )
    )
    with psycopg.connect(db.superuser_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (db.single,)
        ).fetchone()
    assert row is not None
    assert row[0].startswith("SCRAM-SHA-256$4096:")
    assert issued.value.reveal() not in row[0]
    assert db.can_login(db.single, issued.value.reveal())


def test_scram_verifier_matches_the_rfc_7677_shape() -> None:
    verifier = scram_verifier("pencil", salt=b"0123456789abcdef")
    head, keys = verifier.split("$", 1)[1].split("$")
    assert head.startswith("4096:")
    assert len(keys.split(":")) == 2
    assert scram_verifier("pencil", salt=b"0123456789abcdef") == verifier


def test_unreachable_server_is_transient_and_names_no_secret(db: Database) -> None:
    context = PluginContext(
        integrations={
            "admin": PostgresIntegration(
                dsn=f"postgresql://{db.admin}@127.0.0.1:1/{db.name}",
                password_from="env:PW",
                connect_timeout="1s",
            )
        },
        env={"PW": ADMIN_PASSWORD},
    )
    provider = PostgresProvider(
        PostgresConfig(integration="admin", strategy="single_user", user=db.single), context
    )
    request = CreateRequest(
        credential="c", rotation_id="r", marker="keyshift:r", policy=Policy(), current=None
    )
    with pytest.raises(TransientError) as caught:
        asyncio.run(provider.create(request))
    assert ADMIN_PASSWORD not in str(caught.value)
    assert not isinstance(caught.value, PermanentError)


def _drain_policy(grace: str, on_timeout: str) -> dict[str, Any]:
    return {
        "grace_period": grace,
        "max_lifetime": "90d",
        "residual_use": {"check_every": "200ms", "quiet_for": "1s", "on_timeout": on_timeout},
    }


def _resume_until(store: Store, env: dict[str, str], done: Any, timeout: float) -> str:
    """Run the worker's resume pass every 250 ms until `done(state)` or the timeout."""
    deadline = time.monotonic() + timeout
    context = PluginContext(env=env)
    while True:
        asyncio.run(rotations.resume(store, actor="worker", context=context))
        state = rotations_of(store, "app-db")[-1].state
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.25)


def test_revocation_waits_until_the_old_role_has_no_sessions_for_quiet_for(
    db: Database, pgcli: Cli, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    estate = _estate(tmp_path, db, _alternating(db), policy=_drain_policy("60s", "fail"))
    assert pgcli("apply", "-f", str(estate)).exit_code == 0
    assert pgcli("rotate", "app-db").exit_code == 0
    old_user, old_password = _consumer(tmp_path)
    session = db.connect(old_user, old_password)  # a batch job still on the old role
    try:
        assert pgcli("rotate", "app-db").exit_code == 0
        state = _resume_until(store, env, lambda s: s != "grace", timeout=2.5)
        assert state == "grace", "revocation waits while a session uses the old role"
        evidence = rotations_of(store, "app-db")[-1].residual
        assert evidence is not None
        assert evidence["checks"] >= 3
        assert evidence["last_sessions"] == 1
    finally:
        session.close()
    closed = time.monotonic()
    state = _resume_until(store, env, lambda s: s != "grace", timeout=15)
    waited = time.monotonic() - closed
    assert state == "completed"
    assert waited >= 1.0, "revoked only after quiet_for without sessions"
    assert not db.can_login(old_user, old_password)
    rotation = rotations_of(store, "app-db")[-1]
    [revoking] = [s for s in steps(store, rotation.id) if s.name == "revoking"]
    evidence = revoking.detail["residual_use"]
    assert evidence["max_sessions"] == 1
    assert evidence["last_sessions"] == 0
    assert evidence["outcome"].startswith("unused since")


def test_on_timeout_fail_ends_needs_attention_and_keeps_the_old_role(
    db: Database, pgcli: Cli, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    estate = _estate(tmp_path, db, _alternating(db), policy=_drain_policy("1s", "fail"))
    assert pgcli("apply", "-f", str(estate)).exit_code == 0
    assert pgcli("rotate", "app-db").exit_code == 0
    old_user, old_password = _consumer(tmp_path)
    with db.connect(old_user, old_password):
        assert pgcli("rotate", "app-db").exit_code == 0
        state = _resume_until(store, env, lambda s: s != "grace", timeout=10)
    assert state == "needs_attention"
    rotation = rotations_of(store, "app-db")[-1]
    assert rotation.error is not None
    assert "still in use" in rotation.error
    assert db.can_login(old_user, old_password), "not revoked"
    assert [v.status for v in versions(store, "app-db")] == ["previous", "current"]
    assert "revoking" not in {s.name for s in steps(store, rotation.id)}


# --- inspect: the stored SCRAM verifier ---------------------------------------------------


def _superuser_provider(d: Database, **config: Any) -> PostgresProvider:
    """A provider whose admin is the server's superuser, who may read pg_authid."""
    parts = urlsplit(d.superuser_dsn)
    dsn = f"postgresql://{parts.username}@{parts.hostname}:{parts.port}/{d.name}"
    context = PluginContext(
        integrations={"admin": PostgresIntegration(dsn=dsn, password_from="env:PG_SU_PW")},
        env={"PG_SU_PW": SUPERUSER_PASSWORD},
    )
    return PostgresProvider(PostgresConfig(integration="admin", **config), context)


def test_inspect_compares_the_stored_scram_verifier_without_logging_in(db: Database) -> None:
    version = IssuedVersion(
        "single",
        Secret("initial-password"),
        {"username": db.single, "host": db.host, "port": str(db.port), "database": db.name},
    )
    provider = _superuser_provider(db, strategy="single_user", user=db.single)

    held = asyncio.run(provider.inspect(VerifyRequest("app-db", version)))
    with psycopg.connect(db.superuser_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD 'changed-by-hand'").format(sql.Identifier(db.single))
        )
    changed = asyncio.run(provider.inspect(VerifyRequest("app-db", version)))
    not_allowed = asyncio.run(
        _provider(db, strategy="single_user", user=db.single).inspect(
            VerifyRequest("app-db", version)
        )
    )

    assert held is not None
    assert held.ok, held.detail
    assert changed is not None
    assert not changed.ok
    assert f"pg_authid holds another password for role {db.single}" == changed.detail
    assert not_allowed is None, "a CREATEROLE admin may not read pg_authid: cannot tell"


def test_password_matches_reads_scram_and_md5_forms() -> None:
    # PostgreSQL's own verifier of "pencil" with a fixed salt (RFC 7677's test vector).
    scram = (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )
    assert password_matches(scram, "user", "pencil")
    assert not password_matches(scram, "user", "pencil2")
    md5 = "md5" + hashlib.md5(b"secretalice").hexdigest()  # noqa: S324 - PostgreSQL md5 form
    assert password_matches(md5, "alice", "secret")
    assert not password_matches(md5, "bob", "secret")
    assert not password_matches("SCRAM-SHA-256$broken", "user", "pencil")
    assert password_matches(scram_verifier("pencil"), "user", "pencil"), "our own verifiers"


def test_an_imported_password_is_proven_and_the_next_rotation_switches_to_the_other_role(
    db: Database, pgcli: Cli, store: Store, tmp_path: Path
) -> None:
    """`keyshift import` signs in with the value before storing it, finds the role it
    belongs to, and the first rotation afterwards takes the other role and disables it."""
    by_hand = "set-by-hand-" + uuid.uuid4().hex
    with psycopg.connect(db.superuser_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(db.users[0]), sql.Literal(by_hand)
            )
        )
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, _alternating(db)))).exit_code == 0

    wrong = pgcli("import", "app-db", stdin="not-the-password")
    assert wrong.exit_code == 1, wrong.output
    assert "does not authenticate" in wrong.output
    assert "not-the-password" not in wrong.output
    assert versions(store, "app-db") == []

    done = pgcli("import", "app-db", stdin=by_hand + "\n")
    assert done.exit_code == 0, done.output
    assert by_hand not in done.output
    [imported] = versions(store, "app-db")
    assert (imported.provenance, imported.attributes["username"]) == ("imported", db.users[0])
    assert not (tmp_path / "db.env").exists(), "no consumer was written"
    assert db.can_login(db.users[0], by_hand), "the issuer was not changed"

    rotated = pgcli("rotate", "app-db", "--grace", "0s")
    assert rotated.exit_code == 0, rotated.output
    user, password = _consumer(tmp_path)
    assert user == db.users[1]
    assert db.can_login(user, password)
    assert not db.can_login(db.users[0], by_hand), "the imported role's login is disabled"
    assert [v.status for v in versions(store, "app-db")] == ["revoked", "current"]


def test_an_import_naming_a_role_not_rotated_is_refused(
    db: Database, pgcli: Cli, store: Store, tmp_path: Path
) -> None:
    assert pgcli("apply", "-f", str(_estate(tmp_path, db, _alternating(db)))).exit_code == 0
    refused = pgcli("import", "app-db", "--user", "postgres", stdin="whatever-it-is")
    assert refused.exit_code == 1, refused.output
    assert "not rotated by this credential" in refused.output
    assert versions(store, "app-db") == []
