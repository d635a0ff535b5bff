"""Redis ACL rotations end to end: through the engine, with a live consumer on a real server."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import update

from keyshift.context import PluginContext
from keyshift.domain.clock import utcnow
from keyshift.service import rotations
from keyshift.store.models import RotationRow
from keyshift.store.store import Store
from tests.conftest import Cli
from tests.helpers import (
    env_value,
    rotate_under_load,
    rotations_of,
    save_estate,
    steps,
    table_rows,
    versions,
)
from tests.servers import redis_server

ADMIN_PW = "ADMIN-" + uuid.uuid4().hex
APP_RULES = ("~app:*", "+@read", "+@write", "+ping", "+auth")


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url, redis.Redis.from_url(url) as root:
        root.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all")
        yield url


@pytest.fixture
def app_user(redis_url: str) -> str:
    user = f"app_{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(redis_url) as root:
        root.execute_command("ACL", "SETUSER", user, "on", ">initial-password", *APP_RULES)
    return user


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env["REDIS_ADMIN_PW"] = ADMIN_PW
    return ks_env


def _authenticates(url: str, user: str, password: str) -> bool:
    try:
        with redis.Redis.from_url(url, username=user, password=password) as client:
            return bool(client.ping())
    except redis.AuthenticationError:
        return False


def _estate(
    tmp: Path,
    url: str,
    user: str,
    grace: str = "1h",
    *,
    provider: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> Path:
    estate: dict[str, Any] = {
        "integrations": [
            {
                "name": "cache-admin",
                "type": "redis",
                "dsn": url.replace("redis://", "redis://admin@"),
                "password_from": "env:REDIS_ADMIN_PW",
                "persist_acl": "none",
            }
        ],
        "credentials": [
            {
                "name": "cache",
                "owner": "team-app",
                "policy": policy or {"grace_period": grace},
                "provider": {
                    "type": "redis",
                    "integration": "cache-admin",
                    **(provider or {"strategy": "dual_password", "user": user}),
                },
                "actions": [
                    {
                        "type": "file",
                        "order": 10,
                        "on_failure": "abort",
                        "config": {
                            "path": str(tmp / "cache.env"),
                            "file_format": "env",
                            "keys": {"REDIS_USER": "username", "REDIS_PASSWORD": "password"},
                        },
                    }
                ],
            }
        ],
    }
    return save_estate(tmp, estate)


def _published(tmp: Path) -> tuple[str, str]:
    user = env_value(tmp / "cache.env", "REDIS_USER")
    password = env_value(tmp / "cache.env", "REDIS_PASSWORD")
    assert user
    assert password
    return user, password


def test_dual_password_rotation_keeps_the_old_until_revoked_then_refuses_it(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, redis_url, app_user))).exit_code == 0
    first = cli("rotate", "cache")
    assert first.exit_code == 0, first.output
    _, first_password = _published(tmp_path)
    assert _authenticates(redis_url, app_user, first_password)
    assert _authenticates(redis_url, app_user, "initial-password"), "old stays valid in grace"

    second = cli("rotate", "cache", "--grace", "0s")
    assert second.exit_code == 0, second.output
    _, second_password = _published(tmp_path)
    assert _authenticates(redis_url, app_user, second_password)
    assert not _authenticates(redis_url, app_user, first_password), "revoked and refused"
    _, rotation = rotations_of(store, "cache")
    [revoking] = [s for s in steps(store, rotation.id) if s.name == "revoking"]
    assert revoking.detail["revocation_proof"].startswith("refused")
    assert [v.status for v in versions(store, "cache")] == ["revoked", "current"]


CONSUMER = textwrap.dedent(
    """
    import json, os, sys, time
    import redis
    env_file, url, stop, out = sys.argv[1:5]
    def settings():
        values = dict(line.rstrip("\\n").split("=", 1) for line in open(env_file)
                      if "=" in line and not line.startswith("#"))
        return values["REDIS_USER"], values["REDIS_PASSWORD"].strip('"')
    user, password = settings()
    pooled = redis.Redis.from_url(url, username=user, password=password)
    pooled.ping()
    ok = failures = pooled_failures = 0
    errors = []
    while not os.path.exists(stop):
        user, password = settings()
        try:
            with redis.Redis.from_url(url, username=user, password=password) as client:
                client.ping()
            ok += 1
        except redis.RedisError as exc:
            failures += 1
            errors.append(type(exc).__name__)
        try:
            pooled.ping()
        except redis.RedisError:
            pooled_failures += 1
        time.sleep(0.02)
    json.dump({"ok": ok, "failures": failures, "pooled_failures": pooled_failures,
               "errors": errors[:5]}, open(out, "w"))
    """
)


@pytest.mark.slow
def test_a_live_consumer_never_fails_during_a_dual_password_rotation(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """Zero downtime: a new authenticated connection every 20 ms plus one long-lived one,
    through a whole rotation with a short grace; the old password is refused afterwards."""
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, redis_url, app_user))).exit_code == 0
    assert cli("rotate", "cache").exit_code == 0
    _, old_password = _published(tmp_path)
    script, stop, out = tmp_path / "consumer.py", tmp_path / "stop", tmp_path / "result.json"
    script.write_text(CONSUMER)
    result, _duration = rotate_under_load(
        [sys.executable, str(script), str(tmp_path / "cache.env"), redis_url, str(stop), str(out)],
        stop,
        out,
        "cache",
        env,
    )
    assert result["ok"] > 50
    assert result["failures"] == 0, result["errors"]
    assert result["pooled_failures"] == 0
    assert not _authenticates(redis_url, app_user, old_password)
    assert rotations_of(store, "cache")[-1].state == "completed"


# --- residual use (alternating_users) ---------------------------------------------------


@pytest.fixture
def app_users(redis_url: str) -> tuple[str, str]:
    """Two disabled users with the application's permissions, unique to the test."""
    stem = f"app_{uuid.uuid4().hex[:8]}"
    users = (f"{stem}_a", f"{stem}_b")
    with redis.Redis.from_url(redis_url) as root:
        for user in users:
            root.execute_command("ACL", "SETUSER", user, "off", *APP_RULES)
    return users


def _alternating_estate(
    tmp: Path, url: str, users: tuple[str, str], grace: str, on_timeout: str
) -> Path:
    policy = {
        "grace_period": grace,
        "residual_use": {"check_every": "200ms", "quiet_for": "1s", "on_timeout": on_timeout},
    }
    provider = {"strategy": "alternating_users", "users": list(users)}
    return _estate(tmp, url, users[0], provider=provider, policy=policy)


def _resume_until(store: Store, env: dict[str, str], done: Any, timeout: float) -> str:
    """Run the worker's resume pass every 250 ms until `done(state)` or the timeout."""
    deadline = time.monotonic() + timeout
    context = PluginContext(env=env)
    while True:
        asyncio.run(rotations.resume(store, actor="worker", context=context))
        state = rotations_of(store, "cache")[-1].state
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.25)


def _hold(url: str, user: str, password: str) -> redis.Redis:
    """One authenticated connection kept open, as a long-running consumer would."""
    client = redis.Redis.from_url(
        url, username=user, password=password, single_connection_client=True
    )
    assert client.ping()
    return client


def _acl_flags(url: str, user: str) -> list[str]:
    with redis.Redis.from_url(url, decode_responses=True) as root:
        return list(root.acl_getuser(user)["flags"])


def test_revocation_waits_until_the_old_user_has_no_clients_for_quiet_for(
    redis_url: str,
    app_users: tuple[str, str],
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    estate = _alternating_estate(tmp_path, redis_url, app_users, "60s", "fail")
    assert cli("apply", "-f", str(estate)).exit_code == 0
    first = cli("rotate", "cache")
    assert first.exit_code == 0, first.output
    old_user, old_password = _published(tmp_path)
    assert old_user == app_users[0]
    session = _hold(redis_url, old_user, old_password)  # a worker still on the old user
    try:
        second = cli("rotate", "cache")
        assert second.exit_code == 0, second.output
        assert _published(tmp_path)[0] == app_users[1]
        state = _resume_until(store, env, lambda s: s != "grace", timeout=2.5)
        assert state == "grace", "revocation waits while a client uses the old user"
        evidence = rotations_of(store, "cache")[-1].residual
        assert evidence is not None
        assert evidence["checks"] >= 3
        assert evidence["last_sessions"] == 1
        assert evidence["last_detail"]["provider"]["user"] == old_user
        assert session.ping(), "the old user still works during grace"
    finally:
        session.close()
    closed = time.monotonic()
    state = _resume_until(store, env, lambda s: s != "grace", timeout=15)
    waited = time.monotonic() - closed
    assert state == "completed"
    assert waited >= 1.0, "revoked only after quiet_for without clients"
    assert "off" in _acl_flags(redis_url, old_user)
    assert not _authenticates(redis_url, old_user, old_password)
    rotation = rotations_of(store, "cache")[-1]
    [revoking] = [s for s in steps(store, rotation.id) if s.name == "revoking"]
    assert revoking.detail["revocation_proof"].startswith("refused")
    evidence = revoking.detail["residual_use"]
    assert evidence["max_sessions"] == 1
    assert evidence["last_sessions"] == 0
    assert evidence["outcome"].startswith("unused since")
    assert [v.status for v in versions(store, "cache")] == ["revoked", "current"]


def test_on_timeout_fail_ends_needs_attention_and_keeps_the_old_user(
    redis_url: str,
    app_users: tuple[str, str],
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    estate = _alternating_estate(tmp_path, redis_url, app_users, "1s", "fail")
    assert cli("apply", "-f", str(estate)).exit_code == 0
    assert cli("rotate", "cache").exit_code == 0
    old_user, old_password = _published(tmp_path)
    session = _hold(redis_url, old_user, old_password)
    try:
        assert cli("rotate", "cache").exit_code == 0
        state = _resume_until(store, env, lambda s: s != "grace", timeout=10)
    finally:
        session.close()
    assert state == "needs_attention"
    rotation = rotations_of(store, "cache")[-1]
    assert rotation.error is not None
    assert "still in use" in rotation.error
    assert _authenticates(redis_url, old_user, old_password), "not revoked"
    assert "on" in _acl_flags(redis_url, old_user)
    assert [v.status for v in versions(store, "cache")] == ["previous", "current"]
    assert "revoking" not in {s.name for s in steps(store, rotation.id)}


# --- passwords keyshift did not issue --------------------------------------------------------


def _end_grace(store: Store, rotation_id: str) -> None:
    with store.transaction() as s:
        s.execute(
            update(RotationRow)
            .where(RotationRow.id == rotation_id)
            .values(grace_until=utcnow() - timedelta(seconds=1))
        )


def test_adopt_existing_retire_ends_the_password_keyshift_did_not_issue_when_grace_ends(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    cli = Cli(env)
    provider = {"strategy": "dual_password", "user": app_user, "adopt_existing": "retire"}
    estate = _estate(tmp_path, redis_url, app_user, provider=provider)
    assert cli("apply", "-f", str(estate)).exit_code == 0
    said = cli("preflight", "cache")
    assert "1 password(s) of " + app_user + " that keyshift did not add are retired" in said.output

    first = cli("rotate", "cache")
    assert first.exit_code == 0, first.output
    [rotation] = rotations_of(store, "cache")
    assert rotation.state == "grace", "the adopted password is the old version, kept in grace"
    _, password = _published(tmp_path)
    assert _authenticates(redis_url, app_user, "initial-password"), "valid through grace"
    with redis.Redis.from_url(redis_url) as root:  # someone adds one by hand meanwhile
        root.execute_command("ACL", "SETUSER", app_user, ">added-later")

    _end_grace(store, rotation.id)
    resumed = cli("resume")
    assert resumed.exit_code == 0, resumed.output
    assert rotations_of(store, "cache")[-1].state == "completed"
    assert not _authenticates(redis_url, app_user, "initial-password"), "retired"
    assert _authenticates(redis_url, app_user, password)
    assert _authenticates(redis_url, app_user, "added-later"), "only what was adopted is retired"
    adopted, current = versions(store, "cache")
    assert (adopted.status, current.status) == ("revoked", "current")
    assert adopted.attributes["adopted_passwords"] == "1"
    [revoking] = [s for s in steps(store, rotation.id) if s.name == "revoking"]
    assert revoking.detail["retired_passwords"] == "1"
    later = cli("preflight", "cache")
    assert "1 password(s) of " + app_user + " that keyshift did not issue stay valid" in (
        later.output
    )
    export = cli("audit", "export")
    with redis.Redis.from_url(redis_url, decode_responses=True) as root:
        hashes = root.acl_getuser(app_user)["passwords"]
    for digest in hashes:
        assert digest not in export.output, "no password hash leaves Redis"


def test_adopt_existing_keep_leaves_the_pre_existing_password_valid_and_preflight_says_so(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, redis_url, app_user))).exit_code == 0
    for _ in range(2):
        assert cli("rotate", "cache", "--grace", "0s").exit_code == 0
    assert _authenticates(redis_url, app_user, "initial-password")
    said = cli("preflight", "cache")
    assert said.exit_code == 0, said.output
    assert "1 password(s) of " + app_user + " that keyshift did not issue stay valid" in (
        said.output
    )
    assert "adopt_existing: keep" in said.output


def test_adopt_existing_retire_with_alternating_users_is_refused_naming_the_field(
    redis_url: str, app_user: str, env: dict[str, str], tmp_path: Path
) -> None:
    provider = {"strategy": "alternating_users", "users": ["a", "b"], "adopt_existing": "retire"}
    estate = _estate(tmp_path, redis_url, app_user, provider=provider)
    refused = Cli(env)("apply", "-f", str(estate))
    assert refused.exit_code == 2
    assert "credentials[0].provider" in refused.output
    assert "adopt_existing: retire belongs to dual_password" in refused.output


def test_foreign_names_a_password_keyshift_did_not_issue_once_no_rotation_is_open(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, redis_url, app_user))).exit_code == 0
    assert cli("rotate", "cache").exit_code == 0
    assert cli("rotate", "cache").exit_code == 0  # in grace: keyshift's old one is valid
    in_grace = cli("foreign")
    assert in_grace.exit_code == 0, in_grace.output
    assert "not checked: cache: rotation" in in_grace.output

    rotation = rotations_of(store, "cache")[-1]
    _end_grace(store, rotation.id)
    assert cli("resume").exit_code == 0
    found = cli("foreign")
    assert found.exit_code == 1, found.output
    [row] = [r for r in table_rows(found.output) if r and r[0] == "cache"]
    assert row[1:3] == ["redis", f"{app_user}:password-1"]
    assert "adopt_existing: keep" in found.output
    _, password = _published(tmp_path)
    assert password not in found.output


def test_foreign_finds_nothing_after_adopt_existing_retire_ended_the_old_password(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    cli = Cli(env)
    provider = {"strategy": "dual_password", "user": app_user, "adopt_existing": "retire"}
    assert cli("apply", "-f", str(_estate(tmp_path, redis_url, app_user, provider=provider)))
    assert cli("rotate", "cache").exit_code == 0
    _end_grace(store, rotations_of(store, "cache")[-1].id)
    assert cli("resume").exit_code == 0
    clean = cli("foreign")
    assert clean.exit_code == 0, clean.output
    assert "No foreign versions: the issuers of 1 credential(s)" in clean.output


def test_an_imported_password_is_proven_and_revoked_by_the_next_rotation(
    redis_url: str, app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """dual_password: the password the user has now is imported after an AUTH proves
    it; the first rotation adds its own and, the grace period over, removes the imported
    one, which then no longer authenticates."""
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, redis_url, app_user, "0s"))).exit_code == 0
    wrong = cli("import", "cache", stdin="not-the-password")
    assert wrong.exit_code == 1, wrong.output
    assert "does not authenticate" in wrong.output
    assert versions(store, "cache") == []

    assert cli("import", "cache", stdin="initial-password").exit_code == 0
    [imported] = versions(store, "cache")
    assert (imported.provenance, imported.attributes["username"]) == ("imported", app_user)
    assert not (tmp_path / "cache.env").exists()

    rotated = cli("rotate", "cache")
    assert rotated.exit_code == 0, rotated.output
    user, password = _published(tmp_path)
    assert user == app_user
    assert _authenticates(redis_url, user, password)
    assert not _authenticates(redis_url, app_user, "initial-password")
    assert [v.status for v in versions(store, "cache")] == ["revoked", "current"]
