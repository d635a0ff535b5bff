"""Redis ACLs on a primary and a real replica (`REPLICAOF`): Redis replicates data, not ACL
rules, so keyshift applies, saves and proves each change on every node it is told of."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.states import RotationState
from keyshift.providers.base import CreateRequest, PreflightRequest, Readiness, VerifyRequest
from keyshift.providers.redis import RedisConfig, RedisIntegration, RedisProvider
from keyshift.service import alerting, notifications, rotations, scheduler
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli
from tests.helpers import env_value, rotations_of, save_estate, steps
from tests.servers import free_port, redis_replica, redis_server

ADMIN_PW = "ADMIN-" + uuid.uuid4().hex
APP_RULES = ("~app:*", "+@read", "+@write", "+ping", "+auth")


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[str, str]]:
    """(primary URL, replica URL), each with the admin user: ACL users exist per node."""
    with redis_server() as primary, redis_replica(primary) as replica:
        for url in (primary, replica):
            with redis.Redis.from_url(url) as root:
                root.execute_command(
                    "ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all"
                )
        yield primary, replica


@pytest.fixture
def app_user(nodes: tuple[str, str]) -> str:
    """A user with the same rules and initial password on both nodes, as an operator
    configures ACLs that Redis does not replicate."""
    user = f"app_{uuid.uuid4().hex[:8]}"
    for url in nodes:
        with redis.Redis.from_url(url) as root:
            root.execute_command("ACL", "SETUSER", user, "on", ">initial-password", *APP_RULES)
    return user


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def _signs_in(url: str, user: str, password: str) -> bool:
    try:
        with redis.Redis.from_url(url, username=user, password=password) as client:
            return bool(client.ping())
    except redis.AuthenticationError:
        return False


def _passwords(url: str, user: str) -> list[str]:
    with redis.Redis.from_url(url, decode_responses=True) as root:
        return list(root.acl_getuser(user)["passwords"])


def _provider(primary: str, user: str, node_list: list[str]) -> RedisProvider:
    integration = RedisIntegration(
        dsn=primary.replace("redis://", "redis://admin@"),
        password_from="env:ADMIN_PW",
        persist_acl="none",
        nodes=node_list,
    )
    context = PluginContext(integrations={"cache-admin": integration}, env={"ADMIN_PW": ADMIN_PW})
    return RedisProvider(RedisConfig(integration="cache-admin", user=user), context)


def _estate(tmp: Path, primary: str, user: str, node_list: list[str]) -> Path:
    estate: dict[str, Any] = {
        "integrations": [
            {
                "name": "cache-admin",
                "type": "redis",
                "dsn": primary.replace("redis://", "redis://admin@"),
                "password_from": "env:REDIS_ADMIN_PW",
                "persist_acl": "none",
                "nodes": node_list,
            }
        ],
        "credentials": [
            {
                "name": "cache",
                "owner": "team-app",
                "policy": {"grace_period": "1h", "propagation_timeout": "5s"},
                "provider": {"type": "redis", "integration": "cache-admin", "user": user},
                "actions": [
                    {
                        "type": "file",
                        "order": 10,
                        "on_failure": "abort",
                        "config": {
                            "path": str(tmp / "cache.env"),
                            "file_format": "env",
                            "keys": {"REDIS_PASSWORD": "password"},
                        },
                    }
                ],
            }
        ],
    }
    return save_estate(tmp, estate)


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env["REDIS_ADMIN_PW"] = ADMIN_PW
    return ks_env


def test_without_nodes_the_replica_never_learns_the_new_password(
    nodes: tuple[str, str], app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """The documented Redis behaviour the `nodes` setting exists for."""
    primary, replica = nodes
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, primary, app_user, []))).exit_code == 0
    assert cli("rotate", "cache").exit_code == 0
    password = env_value(tmp_path / "cache.env", "REDIS_PASSWORD") or ""
    assert _signs_in(primary, app_user, password)
    assert not _signs_in(replica, app_user, password)


def test_a_rotation_applies_and_proves_each_acl_change_on_every_node(
    nodes: tuple[str, str], app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    primary, replica = nodes
    cli = Cli(env)
    estate = _estate(tmp_path, primary, app_user, [_host_port(replica)])
    assert cli("apply", "-f", str(estate)).exit_code == 0
    assert cli("rotate", "cache", "--grace", "0s").exit_code == 0
    first = env_value(tmp_path / "cache.env", "REDIS_PASSWORD") or ""
    rotated = cli("rotate", "cache", "--grace", "0s")
    assert rotated.exit_code == 0, rotated.output
    second = env_value(tmp_path / "cache.env", "REDIS_PASSWORD") or ""

    for url in nodes:
        assert _signs_in(url, app_user, second), f"the new password signs in on {url}"
        assert not _signs_in(url, app_user, first), f"the old one is refused on {url}"
        assert len(_passwords(url, app_user)) == 2, "initial (kept) and the current one"
    last = rotations_of(store, "cache")[-1]
    [revoking] = [s for s in steps(store, last.id) if s.name == "revoking"]
    assert revoking.detail["nodes"] == "2"
    assert revoking.detail["revocation_proof"].startswith("refused")


def test_a_node_that_cannot_be_reached_blocks_the_rotation_and_is_named(
    nodes: tuple[str, str], app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    primary, _replica = nodes
    gone = f"127.0.0.1:{free_port()}"
    before = _passwords(primary, app_user)
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, primary, app_user, [gone]))).exit_code == 0
    said = cli("preflight", "cache")
    assert said.exit_code != 0
    assert gone in said.output
    clock = FakeClock()
    _, state = asyncio.run(
        rotations.rotate(store, "cache", actor="test", context=clock.context(env))
    )
    assert state == RotationState.FAILED
    assert gone in (rotations_of(store, "cache")[-1].error or "")
    assert _passwords(primary, app_user) == before, "nothing changed on the primary"
    assert not (tmp_path / "cache.env").exists()


def test_a_node_without_the_user_blocks_preflight_naming_the_node(
    nodes: tuple[str, str], app_user: str
) -> None:
    primary, replica = nodes
    with redis.Redis.from_url(replica) as root:
        root.execute_command("ACL", "DELUSER", app_user)
    result = asyncio.run(
        _provider(primary, app_user, [_host_port(replica)]).preflight(PreflightRequest("cache"))
    )
    assert result.readiness is Readiness.BLOCKED
    assert f"ACL user {app_user} does not exist on {_host_port(replica)}" in result.reason


def test_a_repeated_create_leaves_one_password_of_the_rotation_on_every_node(
    nodes: tuple[str, str], app_user: str
) -> None:
    primary, replica = nodes
    provider = _provider(primary, app_user, [_host_port(replica)])
    request = CreateRequest("cache", "rot-1", "keyshift:rot-1", Policy(), current=None)
    asyncio.run(provider.create(request))  # its value is lost, as in a crash
    again = asyncio.run(provider.create(request))

    for url in nodes:
        held = _passwords(url, app_user)
        assert len(held) == 2, f"the initial password and one of the rotation on {url}"
        assert _signs_in(url, app_user, again.value.reveal())
        assert _signs_in(url, app_user, "initial-password")


def test_a_node_without_the_new_password_yet_answers_partial_so_the_proof_waits(
    nodes: tuple[str, str], app_user: str
) -> None:
    """A replica that has not taken the ACL change (yet) refuses while the primary
    accepts: `partial`, which the proof before cutover counts as "not yet"."""
    primary, replica = nodes
    request = CreateRequest("cache", "rot-1", "keyshift:rot-1", Policy(), current=None)
    version = asyncio.run(_provider(primary, app_user, []).create(request))  # primary only

    answer = asyncio.run(
        _provider(primary, app_user, [_host_port(replica)]).verify(VerifyRequest("cache", version))
    )
    assert (answer.ok, answer.partial) == (False, True)
    assert f"accepted on {_host_port(primary)}" in answer.detail
    assert f"refused on {_host_port(replica)}" in answer.detail
    assert version.value.reveal() not in answer.detail


def _entry(entry: object) -> dict[str, object]:
    """An `ACL LOG` entry as a mapping (RESP2 answers a flat list of pairs)."""
    if isinstance(entry, dict):
        return entry
    items = list(entry)  # type: ignore[call-overload]
    return dict(zip(items[::2], items[1::2], strict=True))


def test_a_password_changed_outside_keyshift_raises_one_alert_and_event(
    nodes: tuple[str, str], app_user: str, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    primary, _replica = nodes
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, primary, app_user, []))).exit_code == 0
    assert cli("rotate", "cache", "--grace", "0s").exit_code == 0
    clock = FakeClock()

    def check() -> int:
        return asyncio.run(
            alerting.raise_changed_outside(store, actor="worker", context=clock.context(env))
        )

    assert check() == 0, "the current version signs in: nothing changed"
    with redis.Redis.from_url(primary) as root:  # someone resets the password by hand
        root.execute_command("ACL", "SETUSER", app_user, "resetpass", ">set-by-hand")
    assert check() == 0, "checked less than an hour ago"
    clock.advance(timedelta(hours=1))
    assert check() == 1
    clock.advance(timedelta(hours=1))
    assert check() == 0, "raised once per version"

    [alert] = [a for a in scheduler.alerts(store) if a.kind == "changed_outside"]
    assert alert.detail["credential"] == "cache"
    assert "changed outside keyshift" in alert.detail["attention"]
    assert "does not list this version's password hash" in alert.detail["attention"]
    with redis.Redis.from_url(primary, decode_responses=True) as root:
        log = root.execute_command("ACL", "LOG")
    failed = [e for e in log if _entry(e).get("username") == app_user]
    assert failed == [], "found by reading ACL GETUSER, not by a failed AUTH"
    kinds = [n.kind for n in notifications.listing(store) if n.credential == "cache"]
    assert kinds.count("credential.changed_outside_keyshift") == 1
    password = env_value(tmp_path / "cache.env", "REDIS_PASSWORD") or ""
    assert password not in str(alert.detail)
