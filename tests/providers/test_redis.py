"""The `redis` provider against a real redis-server: ACL passwords overlap, revocation is
proven by a refused AUTH, repeats never leave a second password, and errors hold no value."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import redis
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError, TransientError
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    ListRequest,
    PreflightRequest,
    PreflightResult,
    Readiness,
    RevokeRequest,
    UsageRequest,
    VerifyRequest,
)
from keyshift.providers.redis import (
    MARKER_KEY_PREFIX,
    RedisConfig,
    RedisIntegration,
    RedisProvider,
    password_hash,
)
from keyshift.testing import FakeClock, assert_provider_contract, capture_logs
from tests.servers import free_port, redis_server

T = TypeVar("T")

ADMIN_PW = f"ADMIN-PW-{secrets.token_hex(12)}"
"""Recognisable, so a test can tell when it leaks into an error text."""
APP_PW = f"APP-INITIAL-{secrets.token_hex(12)}"
"""The password `app` has before any rotation: the "old" version of the first rotation."""
APP_RULES = ["~app:*", "+get", "+set", "+ping"]


def run(awaitable: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await awaitable

    return asyncio.run(wrapped())


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        with redis.Redis.from_url(url) as root:
            root.execute_command(
                "ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all"
            )
        yield url


@pytest.fixture
def root(redis_url: str) -> Iterator[redis.Redis]:
    """The server's default user (nopass, all permissions), with the users reset: `app` holds
    APP_PW only, `app_a` / `app_b` are disabled and hold no password, no markers."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.execute_command("ACL", "SETUSER", "app", "reset", "on", f">{APP_PW}", *APP_RULES)
        for user in ("app_a", "app_b"):
            client.execute_command("ACL", "SETUSER", user, "reset", "off", *APP_RULES)
        for user in ("app", "app_a", "app_b", "ghost"):
            client.delete(MARKER_KEY_PREFIX + user)
        client.execute_command("ACL", "DELUSER", "ghost")
        yield client


def admin_dsn(url: str, user: str = "admin") -> str:
    return url.replace("redis://", f"redis://{user}@")


def make(
    url: str,
    *,
    admin_pw: str = ADMIN_PW,
    clock: FakeClock | None = None,
    integration: dict[str, Any] | None = None,
    **config: Any,
) -> RedisProvider:
    """A provider on the integration `cache-admin`, its password read from `env:ADMIN_PW`.
    The test server keeps no files, so ACL persistence is off unless a test turns it on."""
    settings: dict[str, Any] = {
        "dsn": admin_dsn(url),
        "password_from": "env:ADMIN_PW",
        "persist_acl": "none",
    }
    settings.update(integration or {})
    context = PluginContext(
        now=(clock or FakeClock()).now,
        integrations={"cache-admin": RedisIntegration(**settings)},
        env={"ADMIN_PW": admin_pw},
    )
    config.setdefault("integration", "cache-admin")
    return RedisProvider(RedisConfig(**config), context)


def create_request(
    marker: str = "keyshift:rot-1", current: IssuedVersion | None = None
) -> CreateRequest:
    return CreateRequest(
        credential="cache",
        rotation_id=marker.removeprefix("keyshift:"),
        marker=marker,
        policy=Policy(),
        current=current,
    )


def revoke_request(version: IssuedVersion) -> RevokeRequest:
    return RevokeRequest(credential="cache", rotation_id="rot-1", version=version)


def authenticates(url: str, user: str, password: str) -> bool:
    """AUTH + PING as a consumer would, on a fresh connection."""
    try:
        with redis.Redis.from_url(url, username=user, password=password) as client:
            return bool(client.ping())
    except redis.AuthenticationError:
        return False


def passwords(root: redis.Redis, user: str) -> list[str]:
    info = root.acl_getuser(user)
    return list(info["passwords"]) if info else []


def version_of(user: str, password: str, url: str) -> IssuedVersion:
    """A version as an earlier rotation would have stored it."""
    parts = urlsplit(url)
    return IssuedVersion(
        provider_ref=f"{user}:keyshift:rot-0",
        value=Secret(password),
        attributes={
            "username": user,
            "host": parts.hostname or "",
            "port": str(parts.port),
            "database": "0",
        },
    )


def assert_no_secret(exc: BaseException, *values: str) -> None:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for link in chain:
        text = f"{link} {link!r}"
        for value in (ADMIN_PW, APP_PW, *values):
            assert value not in text, f"{type(link).__name__} holds a secret value"


# --- the contract ----------------------------------------------------------------------


def test_dual_password_keeps_the_provider_contract(redis_url: str, root: redis.Redis) -> None:
    run(assert_provider_contract(make(redis_url, user="app")))
    assert passwords(root, "app") == [password_hash(APP_PW)], "the contract revoked its version"


def test_alternating_users_keeps_the_provider_contract(redis_url: str, root: redis.Redis) -> None:
    run(
        assert_provider_contract(
            make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
        )
    )
    assert passwords(root, "app_a") == []
    assert "off" in root.acl_getuser("app_a")["flags"]


def test_capabilities_are_dual_active_authenticating_inspecting_and_importing(
    redis_url: str,
) -> None:
    assert make(redis_url, user="app").capabilities == {
        Capability.DUAL_ACTIVE,
        Capability.AUTHENTICATES,
        Capability.INSPECTS,
        Capability.IMPORTS,
    }
    alternating = make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
    assert alternating.capabilities == {
        Capability.DUAL_ACTIVE,
        Capability.AUTHENTICATES,
        Capability.RESIDUAL_USE,
        Capability.INSPECTS,
        Capability.IMPORTS,
    }


def test_inspect_reads_the_acl_hash_without_signing_in(redis_url: str, root: redis.Redis) -> None:
    provider = make(redis_url, user="app")
    version = version_of("app", APP_PW, redis_url)

    held = run(provider.inspect(VerifyRequest("cache", version)))
    root.execute_command("ACL", "SETUSER", "app", "resetpass", ">changed-by-hand")
    changed = run(provider.inspect(VerifyRequest("cache", version)))
    root.execute_command("ACL", "SETUSER", "app", "off")
    disabled = run(provider.inspect(VerifyRequest("cache", version)))

    assert held.ok
    assert not changed.ok
    assert "does not list this version's password hash" in changed.detail
    assert "ACL user app is disabled" in disabled.detail
    assert APP_PW not in changed.detail + disabled.detail


def test_dual_password_does_not_declare_residual_use(redis_url: str) -> None:
    """Old and new passwords belong to one user: CLIENT LIST cannot tell them apart."""
    provider = make(redis_url, user="app")
    assert Capability.RESIDUAL_USE not in provider.capabilities
    usage = UsageRequest(credential="cache", version=version_of("app", APP_PW, redis_url))
    with pytest.raises(PermanentError, match="alternating_users"):
        run(provider.residual_use(usage))


# --- dual_password ---------------------------------------------------------------------


def test_dual_password_old_and_new_both_authenticate_after_create(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, user="app")
    new = run(provider.create(create_request()))
    assert new.attributes["username"] == "app"
    assert authenticates(redis_url, "app", APP_PW)
    assert authenticates(redis_url, "app", new.value.reveal())
    assert passwords(root, "app") == [password_hash(APP_PW), password_hash(new.value.reveal())]
    assert run(provider.verify(VerifyRequest(credential="cache", version=new))).ok


def test_dual_password_revoke_refuses_the_old_and_keeps_the_new(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, user="app")
    new = run(provider.create(create_request()))
    old = version_of("app", APP_PW, redis_url)
    result = run(provider.revoke(revoke_request(old)))
    assert not result.already_gone
    assert not authenticates(redis_url, "app", APP_PW)
    assert authenticates(redis_url, "app", new.value.reveal())
    refused = run(provider.verify(VerifyRequest(credential="cache", version=old)))
    assert not refused.ok
    assert "app" in refused.detail
    assert APP_PW not in refused.detail
    assert passwords(root, "app") == [password_hash(new.value.reveal())]
    again = run(provider.revoke(revoke_request(old)))
    assert again.already_gone


def test_dual_password_never_changes_the_users_permissions(
    redis_url: str, root: redis.Redis
) -> None:
    before = root.acl_getuser("app")
    provider = make(redis_url, user="app")
    run(provider.create(create_request()))
    run(provider.revoke(revoke_request(version_of("app", APP_PW, redis_url))))
    after = root.acl_getuser("app")
    for field in ("flags", "commands", "keys", "channels", "selectors"):
        assert after[field] == before[field], field


def test_connection_opened_with_the_old_password_survives_revoke(
    redis_url: str, root: redis.Redis
) -> None:
    """Redis drops no authenticated connection when a password goes: residual use stays."""
    provider = make(redis_url, user="app")
    run(provider.create(create_request()))
    with redis.Redis.from_url(
        redis_url, username="app", password=APP_PW, single_connection_client=True
    ) as open_before:
        assert open_before.ping()
        run(provider.revoke(revoke_request(version_of("app", APP_PW, redis_url))))
        assert open_before.ping()
    assert not authenticates(redis_url, "app", APP_PW)


def test_revoke_refuses_to_remove_the_only_password(redis_url: str, root: redis.Redis) -> None:
    provider = make(redis_url, user="app")
    with pytest.raises(PermanentError, match="only password of ACL user app") as caught:
        run(provider.revoke(revoke_request(version_of("app", APP_PW, redis_url))))
    assert_no_secret(caught.value)
    assert authenticates(redis_url, "app", APP_PW)


def test_dual_password_refuses_a_nopass_user(redis_url: str, root: redis.Redis) -> None:
    root.execute_command("ACL", "SETUSER", "app", "nopass")
    with pytest.raises(PermanentError, match=r"ACL user app on \S+ has nopass"):
        run(make(redis_url, user="app").create(create_request()))
    assert "nopass" in root.acl_getuser("app")["flags"]


# --- idempotency -----------------------------------------------------------------------


def test_repeated_create_in_the_same_process_leaves_one_password_of_the_rotation(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, user="app")
    first = run(provider.create(create_request()))
    second = run(provider.create(create_request()))
    assert second.provider_ref == first.provider_ref
    assert passwords(root, "app") == [password_hash(APP_PW), password_hash(second.value.reveal())]
    assert not authenticates(redis_url, "app", first.value.reveal())


def test_create_repeated_after_a_restart_does_not_leave_a_second_new_password(
    redis_url: str, root: redis.Redis
) -> None:
    """A crash lost the first value: the repeat replaces it, so old + one new remain."""
    first = run(make(redis_url, user="app").create(create_request()))
    restarted = make(redis_url, user="app")
    second = run(restarted.create(create_request()))
    assert second.provider_ref == first.provider_ref
    assert passwords(root, "app") == [password_hash(APP_PW), password_hash(second.value.reveal())]
    assert not authenticates(redis_url, "app", first.value.reveal())
    assert authenticates(redis_url, "app", second.value.reveal())
    assert authenticates(redis_url, "app", APP_PW)
    listed = run(restarted.list_versions(ListRequest(credential="cache")))
    assert [v.marker for v in listed] == [None, "keyshift:rot-1"]
    assert listed[1].provider_ref == second.provider_ref


def test_a_new_rotation_adds_its_own_password_and_keeps_the_previous(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, user="app")
    first = run(provider.create(create_request("keyshift:rot-1")))
    second = run(make(redis_url, user="app").create(create_request("keyshift:rot-2", first)))
    assert len(passwords(root, "app")) == 3
    assert authenticates(redis_url, "app", first.value.reveal())
    assert authenticates(redis_url, "app", second.value.reveal())


def test_list_versions_names_the_marked_password_with_its_times(
    redis_url: str, root: redis.Redis
) -> None:
    clock = FakeClock()
    provider = make(redis_url, clock=clock, user="app")
    policy = Policy(max_lifetime=timedelta(days=90))
    request = CreateRequest(
        credential="cache",
        rotation_id="rot-1",
        marker="keyshift:rot-1",
        policy=policy,
        current=None,
    )
    new = run(provider.create(request))
    listed = run(provider.list_versions(ListRequest(credential="cache")))
    assert [(v.provider_ref, v.marker) for v in listed] == [
        ("app:password-1", None),
        (new.provider_ref, "keyshift:rot-1"),
    ]
    assert listed[1].created_at == clock.now()
    assert listed[1].expires_at == clock.now() + timedelta(days=90) == new.expires_at


# --- alternating_users -----------------------------------------------------------------


def test_alternating_users_sets_the_user_not_in_use_and_revoke_disables_the_old(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
    first = run(provider.create(create_request("keyshift:rot-1")))
    assert first.attributes["username"] == "app_a"
    second = run(provider.create(create_request("keyshift:rot-2", current=first)))
    assert second.attributes["username"] == "app_b"
    assert authenticates(redis_url, "app_a", first.value.reveal())
    assert authenticates(redis_url, "app_b", second.value.reveal())

    result = run(provider.revoke(revoke_request(first)))
    assert result.detail == {"user": "app_a", "login": "disabled"}
    assert not authenticates(redis_url, "app_a", first.value.reveal())
    assert not run(provider.verify(VerifyRequest(credential="cache", version=first))).ok
    assert authenticates(redis_url, "app_b", second.value.reveal())
    assert passwords(root, "app_a") == []
    assert "off" in root.acl_getuser("app_a")["flags"]
    assert root.acl_getuser("app_a")["commands"] == root.acl_getuser("app_b")["commands"]
    assert run(provider.revoke(revoke_request(first))).already_gone

    third = run(provider.create(create_request("keyshift:rot-3", current=second)))
    assert third.attributes["username"] == "app_a"
    assert passwords(root, "app_a") == [password_hash(third.value.reveal())]


def test_alternating_create_repeated_after_a_restart_leaves_one_password(
    redis_url: str, root: redis.Redis
) -> None:
    config: dict[str, Any] = {"strategy": "alternating_users", "users": ["app_a", "app_b"]}
    first = run(make(redis_url, **config).create(create_request()))
    second = run(make(redis_url, **config).create(create_request()))
    assert second.provider_ref == first.provider_ref
    assert passwords(root, "app_a") == [password_hash(second.value.reveal())]


def test_late_revoke_does_not_disable_a_user_a_later_rotation_set(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
    first = run(provider.create(create_request("keyshift:rot-1")))
    second = run(provider.create(create_request("keyshift:rot-2", current=first)))
    third = run(provider.create(create_request("keyshift:rot-3", current=second)))
    assert run(provider.revoke(revoke_request(first))).already_gone
    assert authenticates(redis_url, "app_a", third.value.reveal())


def usage_of(provider: RedisProvider, version: IssuedVersion) -> tuple[int, dict[str, Any]]:
    report = run(provider.residual_use(UsageRequest(credential="cache", version=version)))
    return report.sessions, dict(report.detail)


def addresses_of(root: redis.Redis, user: str) -> list[str]:
    return [c["addr"] for c in root.client_list() if c.get("user") == user]


def test_residual_use_counts_clients_of_the_old_user_until_they_close(
    redis_url: str, root: redis.Redis
) -> None:
    provider = make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
    first = run(provider.create(create_request("keyshift:rot-1")))
    second = run(provider.create(create_request("keyshift:rot-2", current=first)))
    assert usage_of(provider, first) == (0, {"user": "app_a", "clients": 0, "addresses": []})
    with redis.Redis.from_url(
        redis_url, username="app_a", password=first.value.reveal(), single_connection_client=True
    ) as held:
        assert held.ping()
        sessions, detail = usage_of(provider, first)
        assert sessions == 1
        assert detail == {"user": "app_a", "clients": 1, "addresses": addresses_of(root, "app_a")}
        assert len(detail["addresses"]) == 1
        assert usage_of(provider, second)[0] == 0, "clients of the new user are not counted"
    assert usage_of(provider, first) == (0, {"user": "app_a", "clients": 0, "addresses": []})


def test_residual_use_names_at_most_five_addresses(redis_url: str, root: redis.Redis) -> None:
    provider = make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
    first = run(provider.create(create_request()))
    held = [
        redis.Redis.from_url(
            redis_url,
            username="app_a",
            password=first.value.reveal(),
            single_connection_client=True,
        )
        for _ in range(7)
    ]
    try:
        for client in held:
            assert client.ping()
        sessions, detail = usage_of(provider, first)
        assert sessions == detail["clients"] == 7
        assert len(detail["addresses"]) == 5
        assert set(detail["addresses"]) <= set(addresses_of(root, "app_a"))
    finally:
        for client in held:
            client.close()


def test_residual_use_does_not_count_the_admin_connection_asking(
    redis_url: str, root: redis.Redis
) -> None:
    """Were the admin user a rotated user, its own CLIENT LIST connection is no consumer."""
    provider = make(redis_url, strategy="alternating_users", users=["admin", "app_b"])
    admin = version_of("admin", ADMIN_PW, redis_url)
    assert usage_of(provider, admin)[0] == 0
    with redis.Redis.from_url(
        admin_dsn(redis_url), password=ADMIN_PW, single_connection_client=True
    ) as other:
        assert other.ping()
        others = addresses_of(root, "admin")
        sessions, detail = usage_of(provider, admin)
    assert len(others) == 1
    assert sessions == 1, "another connection of the admin user still counts"
    assert detail["addresses"] == others


def test_residual_use_names_no_user_it_does_not_rotate(redis_url: str, root: redis.Redis) -> None:
    provider = make(redis_url, strategy="alternating_users", users=["app_a", "app_b"])
    with pytest.raises(PermanentError, match="names no rotated user"):
        usage_of(provider, version_of("app", APP_PW, redis_url))


# --- errors ----------------------------------------------------------------------------


def test_unknown_user_is_a_permanent_error_naming_the_user(
    redis_url: str, root: redis.Redis
) -> None:
    with pytest.raises(PermanentError, match="ACL user ghost does not exist") as caught:
        run(make(redis_url, user="ghost").create(create_request()))
    assert_no_secret(caught.value)
    assert root.acl_getuser("ghost") is None, "keyshift must never create users"


def test_wrong_admin_password_is_a_permanent_error_naming_server_and_admin(
    redis_url: str, root: redis.Redis
) -> None:
    wrong = f"WRONG-ADMIN-{secrets.token_hex(8)}"
    port = urlsplit(redis_url).port
    with pytest.raises(PermanentError) as caught:
        run(make(redis_url, admin_pw=wrong, user="app").create(create_request()))
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "admin user admin" in message
    assert "refused the admin credentials" in message
    assert_no_secret(caught.value, wrong)


def test_admin_without_acl_permission_is_a_permanent_error(
    redis_url: str, root: redis.Redis
) -> None:
    weak = f"WEAK-{secrets.token_hex(8)}"
    root.execute_command("ACL", "SETUSER", "weak", "reset", "on", f">{weak}", "~*", "+ping")
    try:
        integration = {"dsn": admin_dsn(redis_url, "weak")}
        provider = make(redis_url, admin_pw=weak, integration=integration, user="app")
        with pytest.raises(PermanentError, match="lacks the permission") as caught:
            run(provider.create(create_request()))
        assert_no_secret(caught.value, weak)
    finally:
        root.execute_command("ACL", "DELUSER", "weak")


# --- preflight ------------------------------------------------------------------------------

ROTATION_RULES = ["~keyshift:*", "+acl|getuser", "+acl|setuser", "+multi", "+exec"]
"""What a rotation needs of its admin (the documented list) but `+hset +hgetall`."""


def preflight(provider: RedisProvider) -> PreflightResult:
    return run(provider.preflight(PreflightRequest("cache")))


def server_state(root: redis.Redis) -> tuple[list[str], list[str]]:
    """Every ACL rule (password hashes included) and every keyshift key on the server."""
    return sorted(root.acl_list()), sorted(root.keys("keyshift:*"))


@pytest.fixture
def weak_admin(root: redis.Redis) -> Iterator[Any]:
    """Makes the ACL user `weak` with the given rules; returns its password. Deleted after."""
    password = f"WEAK-{secrets.token_hex(8)}"

    def with_rules(*rules: str) -> str:
        root.execute_command("ACL", "SETUSER", "weak", "reset", "on", f">{password}", *rules)
        return password

    yield with_rules
    root.execute_command("ACL", "DELUSER", "weak")


def weak_provider(redis_url: str, password: str, **config: Any) -> RedisProvider:
    integration = {"dsn": admin_dsn(redis_url, "weak")}
    return make(redis_url, admin_pw=password, integration=integration, **config)


@pytest.mark.parametrize(
    "config",
    [{"user": "app"}, {"strategy": "alternating_users", "users": ["app_a", "app_b"]}],
    ids=["dual_password", "alternating_users"],
)
def test_preflight_is_ready_when_the_users_exist_and_the_admin_may_change_them(
    redis_url: str, root: redis.Redis, config: dict[str, Any]
) -> None:
    before = server_state(root)

    result = preflight(make(redis_url, **config))

    assert result.readiness == Readiness.READY, result.reason
    assert "admin admin may change them (ACL DRYRUN)" in result.reason
    assert server_state(root) == before


def test_preflight_blocks_an_admin_the_dry_run_refuses_and_names_the_command(
    redis_url: str, root: redis.Redis, weak_admin: Any
) -> None:
    rules = [r for r in ROTATION_RULES if r != "+acl|setuser"]
    password = weak_admin(*rules, "+hset", "+hgetall", "+acl|dryrun")
    before = server_state(root)

    result = preflight(weak_provider(redis_url, password, user="app"))

    assert result.readiness == Readiness.BLOCKED
    assert "admin user weak" in result.reason
    assert "may not run ACL SETUSER for ACL user app" in result.reason
    assert password not in result.reason
    assert server_state(root) == before


def test_preflight_blocks_an_admin_that_may_not_write_the_marker_key(
    redis_url: str, root: redis.Redis, weak_admin: Any
) -> None:
    password = weak_admin(*ROTATION_RULES, "+hgetall", "+acl|dryrun")

    result = preflight(weak_provider(redis_url, password, user="app"))

    assert result.readiness == Readiness.BLOCKED
    assert f"may not run HSET {MARKER_KEY_PREFIX}app" in result.reason


def test_preflight_without_acl_dryrun_is_ready_and_says_writes_are_unproven(
    redis_url: str, root: redis.Redis, weak_admin: Any
) -> None:
    password = weak_admin(*ROTATION_RULES, "+hset", "+hgetall")

    result = preflight(weak_provider(redis_url, password, user="app"))

    assert result.readiness == Readiness.READY, result.reason
    assert "may not run ACL DRYRUN" in result.reason
    assert "proven at the first rotation" in result.reason


def test_preflight_blocks_an_admin_that_may_not_read_the_users(
    redis_url: str, root: redis.Redis, weak_admin: Any
) -> None:
    password = weak_admin("~*", "+ping")

    result = preflight(weak_provider(redis_url, password, user="app"))

    assert result.readiness == Readiness.BLOCKED
    assert "reading ACL user app" in result.reason
    assert "lacks the permission" in result.reason
    assert password not in result.reason


def test_preflight_blocks_a_missing_user_and_a_nopass_user(
    redis_url: str, root: redis.Redis
) -> None:
    missing = preflight(make(redis_url, strategy="alternating_users", users=["app_a", "ghost"]))
    root.execute_command("ACL", "SETUSER", "app", "nopass")
    before = server_state(root)
    nopass = preflight(make(redis_url, user="app"))

    assert missing.readiness == Readiness.BLOCKED
    assert "ACL user ghost does not exist" in missing.reason
    assert nopass.readiness == Readiness.BLOCKED
    assert "ACL user app" in nopass.reason
    assert "has nopass" in nopass.reason
    assert server_state(root) == before


def test_preflight_blocks_a_wrong_admin_password_and_an_unreachable_server(
    redis_url: str, root: redis.Redis
) -> None:
    wrong = f"WRONG-{secrets.token_hex(8)}"
    refused = preflight(make(redis_url, admin_pw=wrong, user="app"))
    gone_url = f"redis://127.0.0.1:{free_port()}/0"
    gone = preflight(make(gone_url, user="app", integration={"connect_timeout": "2s"}))

    assert refused.readiness == Readiness.BLOCKED
    assert "refused the admin credentials" in refused.reason
    assert wrong not in refused.reason
    assert ADMIN_PW not in refused.reason
    assert gone.readiness == Readiness.BLOCKED
    assert "cannot reach 127.0.0.1" in gone.reason


def test_unreachable_server_is_a_transient_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    provider = make(url, user="app", integration={"connect_timeout": "2s"})
    with pytest.raises(TransientError, match=r"cannot reach 127\.0\.0\.1") as caught:
        run(provider.create(create_request()))
    assert_no_secret(caught.value)
    with pytest.raises(TransientError):
        run(
            provider.verify(
                VerifyRequest(credential="cache", version=version_of("app", APP_PW, url))
            )
        )
    alternating = make(
        url,
        strategy="alternating_users",
        users=["app_a", "app_b"],
        integration={"connect_timeout": "2s"},
    )
    with pytest.raises(TransientError, match=r"cannot reach 127\.0\.0\.1") as caught:
        usage_of(alternating, version_of("app_a", APP_PW, url))
    assert_no_secret(caught.value)


def test_admin_without_client_list_permission_is_a_permanent_error(
    redis_url: str, root: redis.Redis
) -> None:
    weak = f"WEAK-{secrets.token_hex(8)}"
    rules = ["~*", "+acl|getuser", "+acl|setuser", "+client|id"]
    root.execute_command("ACL", "SETUSER", "weak", "reset", "on", f">{weak}", *rules)
    try:
        provider = make(
            redis_url,
            admin_pw=weak,
            integration={"dsn": admin_dsn(redis_url, "weak")},
            strategy="alternating_users",
            users=["app_a", "app_b"],
        )
        with pytest.raises(PermanentError, match="lacks the permission") as caught:
            usage_of(provider, version_of("app_a", APP_PW, redis_url))
        assert "listing the clients of ACL user app_a" in str(caught.value)
        assert_no_secret(caught.value, weak)
    finally:
        root.execute_command("ACL", "DELUSER", "weak")


def test_explicit_persistence_the_server_cannot_do_is_a_permanent_error(
    redis_url: str, root: redis.Redis
) -> None:
    """The test server runs without an ACL file: `acl_save` cannot keep the change."""
    provider = make(redis_url, integration={"persist_acl": "acl_save"}, user="app")
    with pytest.raises(PermanentError, match=r"saving the ACL \(acl_save\)") as caught:
        run(provider.create(create_request()))
    assert_no_secret(caught.value)
    # The password is live but unsaved; a repeat of the step replaces it, not adds one.
    retry = make(redis_url, user="app")
    run(retry.create(create_request()))
    assert len(passwords(root, "app")) == 2


def test_auto_persistence_saves_the_acl_file_so_a_restart_keeps_the_rotation() -> None:
    with (
        redis_server(aclfile=True) as url,
        redis.Redis.from_url(url, decode_responses=True) as root,
    ):
        root.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all")
        root.execute_command("ACL", "SETUSER", "app", "on", f">{APP_PW}", *APP_RULES)
        acl_path = Path(root.config_get("aclfile")["aclfile"])
        provider = make(url, integration={"persist_acl": "auto"}, user="app")
        new = run(provider.create(create_request()))
        saved = acl_path.read_text(encoding="utf-8")
        assert f"#{password_hash(new.value.reveal())}" in saved
        assert f"#{password_hash(APP_PW)}" in saved
        run(provider.revoke(revoke_request(version_of("app", APP_PW, url))))
        saved = acl_path.read_text(encoding="utf-8")
        assert f"#{password_hash(new.value.reveal())}" in saved
        assert password_hash(APP_PW) not in saved
        assert new.value.reveal() not in saved
        # What the file holds is what a restarted server loads.
        root.execute_command("ACL", "LOAD")
        assert authenticates(url, "app", new.value.reveal())
        assert not authenticates(url, "app", APP_PW)


def test_auto_persistence_warns_when_the_server_has_nowhere_to_save(
    redis_url: str, root: redis.Redis
) -> None:
    with capture_logs() as events:
        auto = make(redis_url, integration={"persist_acl": "auto"}, user="app")
        run(auto.create(create_request()))
    warned = [e for e in events if e["event"] == "redis.acl_not_persisted"]
    assert len(warned) == 1
    assert warned[0]["log_level"] == "warning"


def test_no_value_appears_in_logs_or_errors_across_a_rotation(
    redis_url: str, root: redis.Redis
) -> None:
    values: list[str] = [ADMIN_PW, APP_PW]
    provider = make(redis_url, user="app")
    with capture_logs(secrets=values):
        new = run(provider.create(create_request()))
        values.append(new.value.reveal())
        run(provider.revoke(revoke_request(version_of("app", APP_PW, redis_url))))
        with pytest.raises(PermanentError) as caught:
            run(provider.revoke(revoke_request(new)))
    assert_no_secret(caught.value, new.value.reveal())
    assert new.value.reveal() not in repr(new)


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        pytest.param({}, "dual_password needs user", id="dual_password without user"),
        pytest.param(
            {"user": "app", "users": ["a", "b"]},
            "users belongs to alternating_users",
            id="dual_password with users",
        ),
        pytest.param(
            {"strategy": "alternating_users", "users": ["app_a"]},
            "alternating_users needs users: [two distinct ACL users]",
            id="alternating with one user",
        ),
        pytest.param(
            {"strategy": "alternating_users", "users": ["app_a", "app_a"]},
            "alternating_users needs users: [two distinct ACL users]",
            id="alternating with the same user twice",
        ),
        pytest.param(
            {"strategy": "alternating_users", "users": ["app_a", "app_b"], "user": "app"},
            "user belongs to dual_password",
            id="alternating with user",
        ),
        pytest.param(
            {"user": "app", "password_alphabet": "abc"},
            "must hold at least 10 distinct characters",
            id="small alphabet",
        ),
        pytest.param(
            {"user": "app", "password_alphabet": "abcdefghij "},
            "printable characters without spaces",
            id="alphabet with a space",
        ),
        pytest.param({"user": "app", "password_length": 8}, "password_length", id="short"),
        pytest.param({"user": "my app"}, "is not an ACL user name", id="user with a space"),
    ],
)
def test_config_errors_name_the_problem(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RedisConfig(integration="cache-admin", **config)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        pytest.param("redis://admin:pw@cache:6379/0", "must not contain a password", id="inline"),
        pytest.param("redis://cache:6379/0", "must name the admin user", id="no user"),
        pytest.param("postgresql://admin@cache/0", "redis://user@host", id="wrong scheme"),
    ],
)
def test_integration_errors_name_the_problem(dsn: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RedisIntegration(dsn=dsn, password_from="env:ADMIN_PW")
    assert problem in str(caught.value)


def test_tls_urls_are_accepted() -> None:
    integration = RedisIntegration(dsn="rediss://admin@cache:6380/1", password_from="env:X")
    assert integration.persist_acl == "auto"
