"""A rolled-back rotation's new version is revoked at its issuer when its retention ends.

A rollback only stops keyshift from using the new version; the issuer still accepts it.
The worker's scan revokes it once `RETAIN_DISABLED` has passed (design.md: "the new
version is kept for analysis with an expiry"), so no valid credential is left that
nobody uses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from keyshift.context import PluginContext
from keyshift.domain.states import RotationState
from keyshift.engine.run import RETAIN_DISABLED
from keyshift.providers.base import (
    Capability,
    RevokeRequest,
    RevokeResult,
    VerifyRequest,
    VerifyResult,
)
from keyshift.providers.random import RandomProvider
from keyshift.service import rotations, scheduler
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.helpers import audit_details, env_value, save_estate, versions, write_estate
from tests.servers import redis_server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

ADMIN_PW = "ADMIN-" + uuid.uuid4().hex


def _run(clock: FakeClock, env: dict[str, str] | None = None) -> PluginContext:
    return clock.context(env)


def _rotate(store: Store, ctx: PluginContext, credential: str, grace: timedelta) -> str:
    rotation_id, state = asyncio.run(
        rotations.rotate(store, credential, actor="test", grace=grace, context=ctx)
    )
    assert state in {RotationState.COMPLETED, RotationState.GRACE}
    return rotation_id


def _roll_back(store: Store, ctx: PluginContext, rotation_id: str) -> None:
    _id, state = asyncio.run(
        rotations.roll_back(store, rotation_id, actor="alice", reason="bad key", context=ctx)
    )
    assert state == RotationState.ROLLED_BACK


def _retire(store: Store, ctx: PluginContext) -> list[dict[str, Any]]:
    return asyncio.run(rotations.retire_disabled(store, actor="worker", context=ctx))


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url, redis.Redis.from_url(url) as root:
        root.execute_command("ACL", "SETUSER", "admin", "on", f">{ADMIN_PW}", "~*", "&*", "+@all")
        yield url


def _authenticates(url: str, user: str, password: str) -> bool:
    try:
        with redis.Redis.from_url(url, username=user, password=password) as client:
            return bool(client.ping())
    except redis.AuthenticationError:
        return False


def test_the_disabled_redis_password_is_removed_from_the_acl_when_retention_ends(
    store: Store, tmp_path: Path, redis_url: str
) -> None:
    user = f"app_{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(redis_url) as root:
        root.execute_command("ACL", "SETUSER", user, "on", ">initial-password", "+ping")
    estate = {
        "integrations": [
            {
                "name": "cache-admin",
                "type": "redis",
                "dsn": redis_url.replace("redis://", "redis://admin@"),
                "password_from": "env:REDIS_ADMIN_PW",
                "persist_acl": "none",
            }
        ],
        "credentials": [
            {
                "name": "cache",
                "owner": "team-app",
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
                        "config": {
                            "path": str(tmp_path / "cache.env"),
                            "file_format": "env",
                            "key": "REDIS_PASSWORD",
                        },
                    }
                ],
            }
        ],
    }
    apply_estate(store, load_estate(save_estate(tmp_path, estate)), actor="test")
    clock = FakeClock()
    ctx = _run(clock, {"REDIS_ADMIN_PW": ADMIN_PW})
    _rotate(store, ctx, "cache", timedelta(0))
    kept = env_value(tmp_path / "cache.env", "REDIS_PASSWORD")
    rotation_id = _rotate(store, ctx, "cache", timedelta(hours=1))
    rejected = env_value(tmp_path / "cache.env", "REDIS_PASSWORD")
    _roll_back(store, ctx, rotation_id)
    assert env_value(tmp_path / "cache.env", "REDIS_PASSWORD") == kept
    assert _authenticates(redis_url, user, rejected), "a rollback alone leaves it valid"

    clock.advance(RETAIN_DISABLED - timedelta(minutes=1))
    assert _retire(store, ctx) == [], "kept for analysis until its retention ends"
    assert _authenticates(redis_url, user, rejected)

    clock.advance(timedelta(minutes=1))
    counts = asyncio.run(scheduler.worker_pass(store, actor="worker", context=ctx))

    assert counts["retired"] == 1
    assert not _authenticates(redis_url, user, rejected), "revoked at the issuer"
    assert _authenticates(redis_url, user, kept), "the current password is untouched"
    statuses = [(v.rotation_id == rotation_id, v.status) for v in versions(store, "cache")]
    assert statuses[-1] == (True, "revoked")
    assert statuses[-2] == (False, "current")
    [entry] = audit_details(store, "version.retired")
    assert entry["version_id"] == versions(store, "cache")[-1].id
    assert rejected not in str(entry)
    assert _retire(store, ctx) == [], "retired once"


def _random_in_grace(store: Store, tmp_path: Path, clock: FakeClock) -> str:
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    _rotate(store, clock.context(), "api-key", timedelta(0))
    return _rotate(store, clock.context(), "api-key", timedelta(hours=1))


def test_an_issuer_that_already_refuses_the_version_is_not_asked_to_revoke_it(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later rotation may have given the same user a new password: revoking "by user"
    # would cut that rotation's consumers off. The issuer's refusal is the evidence.
    clock = FakeClock()
    rotation_id = _random_in_grace(store, tmp_path, clock)
    _roll_back(store, clock.context(), rotation_id)
    revoked: list[str] = []

    async def verify(_self: RandomProvider, _request: VerifyRequest) -> VerifyResult:
        return VerifyResult(False, "password authentication failed")

    async def revoke(_self: RandomProvider, request: RevokeRequest) -> RevokeResult:
        revoked.append(request.version.provider_ref)
        return RevokeResult()

    capabilities = frozenset({Capability.DUAL_ACTIVE, Capability.AUTHENTICATES})
    monkeypatch.setattr(RandomProvider, "capabilities", capabilities)
    monkeypatch.setattr(RandomProvider, "verify", verify)
    monkeypatch.setattr(RandomProvider, "revoke", revoke)
    clock.advance(RETAIN_DISABLED)

    [facts] = _retire(store, clock.context())

    assert revoked == []
    assert facts["already_gone"] is True
    assert versions(store, "api-key")[-1].status == "revoked"


def test_nothing_is_retired_while_another_rotation_of_the_credential_is_open(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    rotation_id = _random_in_grace(store, tmp_path, clock)
    _roll_back(store, clock.context(), rotation_id)
    clock.advance(RETAIN_DISABLED)
    revoked: list[str] = []

    async def revoke(_self: RandomProvider, request: RevokeRequest) -> RevokeResult:
        revoked.append(request.version.provider_ref)
        return RevokeResult()

    monkeypatch.setattr(RandomProvider, "revoke", revoke)
    # A new rotation waits for approval: the credential is busy.
    busy = write_estate(
        tmp_path, policy={"grace_period": "1h", "approval": {"approvers": ["user:bob"]}}
    )
    apply_estate(store, load_estate(busy), actor="test")
    _id, state = asyncio.run(
        rotations.rotate(store, "api-key", actor="test", context=clock.context())
    )
    assert state == RotationState.AWAITING_APPROVAL

    assert _retire(store, clock.context()) == []
    assert revoked == []
    [kept] = [v for v in versions(store, "api-key") if v.rotation_id == rotation_id]
    assert kept.status == "disabled"
