"""Redis ACL rotations end to end: through the engine, with a live consumer on a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from keyshift.store.store import Store
from tests.conftest import Cli, run_subprocess
from tests.helpers import env_value, rotations_of, steps, versions
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


def _estate(tmp: Path, url: str, user: str, grace: str = "1h") -> Path:
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
                "policy": {"grace_period": grace},
                "provider": {
                    "type": "redis",
                    "integration": "cache-admin",
                    "strategy": "dual_password",
                    "user": user,
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
    path = tmp / "estate.yaml"
    path.write_text(json.dumps(estate), encoding="utf-8")
    return path


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
    consumer = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "cache.env"), redis_url, str(stop), str(out)]
    )
    try:
        time.sleep(0.5)
        started = time.monotonic()
        rotated = run_subprocess(["rotate", "cache", "--grace", "2s"], env)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        time.sleep(2.2)
        resumed = run_subprocess(["resume"], env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        duration = time.monotonic() - started
        time.sleep(0.5)
    finally:
        stop.touch()
        consumer.wait(timeout=30)
    result = json.loads(out.read_text())
    print(
        f"\nredis consumer: {result['ok']} connections, {result['failures']} failures, "
        f"pooled failures {result['pooled_failures']}; rotation incl. grace {duration:.1f}s"
    )
    assert result["ok"] > 50
    assert result["failures"] == 0, result["errors"]
    assert result["pooled_failures"] == 0
    assert not _authenticates(redis_url, app_user, old_password)
    assert rotations_of(store, "cache")[-1].state == "completed"
