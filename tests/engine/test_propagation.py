"""Rotations against an issuer that is eventually consistent, as Entra ID is: a new version
signs in only after a while, a revoked one keeps signing in for a while.

The fake issuer here is registered as provider type `fake` with `authenticates: true`, so
the engine proves each new version at the issuer before cutover and proves each revoked
one refused. Its delays run on the fake clock: the waits are real waits of the engine,
only time is simulated.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from keyshift.api.routes import _rotation_out
from keyshift.domain.states import RotationState, StepStatus, VersionStatus
from keyshift.errors import PermanentError
from keyshift.providers import PROVIDERS
from keyshift.providers.base import VerifyRequest, VerifyResult
from keyshift.service import evidence, rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.models import RotationRow
from keyshift.store.store import Store
from keyshift.targets import TARGETS
from keyshift.targets.base import PublishRequest, StepResult
from keyshift.testing import FakeClock, FakeProvider, FakeVersion, RecordingTarget
from tests.conftest import Cli
from tests.helpers import (
    env_value,
    json_value,
    rotations_of,
    save_estate,
    steps,
    table_rows,
    value_of,
    versions,
    write_estate,
)

POLICY = {"grace_period": "1h", "max_lifetime": "90d", "propagation_timeout": "30s"}


@pytest.fixture
def issuer(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeVersion]:
    """The fake issuer's versions, shared by every provider the engine builds."""
    held: dict[str, FakeVersion] = {}
    monkeypatch.setitem(cast("dict[str, Any]", PROVIDERS), "fake", FakeProvider.bound(held))
    return held


def _estate(tmp_path: Path, **fake: object) -> Path:
    return write_estate(
        tmp_path, policy=POLICY, provider={"type": "fake", "authenticates": True, **fake}
    )


def _apply(store: Store, estate: Path) -> None:
    apply_estate(store, load_estate(estate), actor="test")


def _rotate(
    store: Store, clock: FakeClock, grace: timedelta | None = None
) -> tuple[str, RotationState]:
    return asyncio.run(
        rotations.rotate(store, "api-key", actor="test", grace=grace, context=clock.context())
    )


def _rotation(store: Store, rotation_id: str) -> RotationRow:
    [row] = [r for r in rotations_of(store, "api-key") if r.id == rotation_id]
    return row


def _step(store: Store, rotation_id: str, name: str) -> Any:
    [step] = [s for s in steps(store, rotation_id) if s.name == name]
    return step


def test_new_version_is_proved_at_the_issuer_before_any_consumer_gets_it(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion]
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, sign_in_delay=20))
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.COMPLETED
    assert [s.name for s in steps(store, rotation_id)][:5] == [
        "validated",
        "preflighted",
        "creating",
        "proving",
        "publishing:10:file",
    ]
    assert len(issuer) == 1, "the wait asks the issuer again; it never mints a second version"
    proving = _step(store, rotation_id, "proving")
    assert proving.detail["attempts"] > 1
    assert proving.detail["waited_s"] >= 20
    assert proving.detail["propagation"].startswith("proved after")
    [version] = versions(store, "api-key")
    assert json_value(tmp_path / "app.json") == value_of(store, version)


def test_a_version_not_accepted_within_the_timeout_is_revoked_and_never_published(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion]
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path))
    _rotate(store, clock)
    [first] = versions(store, "api-key")
    previous = value_of(store, first)

    _apply(store, _estate(tmp_path, sign_in_delay=600))
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.FAILED
    assert not any(s.name.startswith("publishing:") for s in steps(store, rotation_id))
    assert _step(store, rotation_id, "proving").status == StepStatus.FAILED.value
    assert json_value(tmp_path / "app.json") == previous
    assert env_value(tmp_path / "app.env") == previous
    old, new = versions(store, "api-key")
    assert old.status == VersionStatus.CURRENT.value
    assert new.status == VersionStatus.REVOKED.value
    assert new.ciphertext is None, "a version withdrawn on purpose is not kept"
    assert issuer[new.provider_ref].revoked, "no unused credential stays valid at the issuer"
    error = _rotation(store, rotation_id).error or ""
    assert "not accepted by the issuer within propagation_timeout 30s" in error
    assert f"the new version {new.id} was revoked at the issuer" in error


def test_a_new_version_the_issuer_refuses_outright_fails_without_waiting_out_the_timeout(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion], monkeypatch: pytest.MonkeyPatch
) -> None:
    class WrongValue(FakeProvider.bound(issuer)):  # type: ignore[misc]
        async def verify(self, request: VerifyRequest) -> VerifyResult:
            self.verify_calls += 1
            return VerifyResult(ok=False, detail="AADSTS7000215: invalid client secret")

    monkeypatch.setitem(cast("dict[str, Any]", PROVIDERS), "fake", WrongValue)
    clock = FakeClock()
    _apply(store, _estate(tmp_path))
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.FAILED
    proving = _step(store, rotation_id, "proving")
    assert "AADSTS7000215" in (proving.error or "")
    assert clock.sleeps == [], "a refusal that is not 'not yet' ends the wait at once"
    [new] = versions(store, "api-key")
    assert new.status == VersionStatus.REVOKED.value
    assert not (tmp_path / "app.json").exists(), "nothing was published"


class RefusedAfterCutover(FakeProvider):
    """Proves a new version, then refuses it in the post-cutover check: the issuer took
    the version back (or a policy refused it) while consumers were switching."""

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        if self.verify_calls == 0:
            return await super().verify(request)
        self.verify_calls += 1
        return VerifyResult(ok=False, detail="AADSTS7000222: the client secret has expired")


def test_a_failed_check_after_publishing_rolls_every_consumer_back(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path))
    _rotate(store, clock)
    [first] = versions(store, "api-key")
    previous = value_of(store, first)

    bound = type("RefusedAfterCutover[bound]", (RefusedAfterCutover,), {"_shared": issuer})
    monkeypatch.setitem(cast("dict[str, Any]", PROVIDERS), "fake", bound)
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.ROLLED_BACK
    journal = steps(store, rotation_id)
    assert _step(store, rotation_id, "verifying:provider").status == StepStatus.FAILED.value
    assert [s.name for s in journal if s.name.startswith("rollback:publishing")] == [
        "rollback:publishing:20:file",
        "rollback:publishing:10:file",
    ]
    assert json_value(tmp_path / "app.json") == previous
    assert env_value(tmp_path / "app.env") == previous
    reloads = (tmp_path / "reload.log").read_text().splitlines()
    assert reloads[-1].split() == ["rollback", first.id], "consumers reload the old value"
    old, new = versions(store, "api-key")
    assert old.status == VersionStatus.CURRENT.value
    assert new.status == VersionStatus.DISABLED.value
    assert "AADSTS7000222" in (_rotation(store, rotation_id).error or "")


def test_revocation_waits_until_the_issuer_refuses_the_old_version(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion]
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, removal_delay=20))
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock, grace=timedelta(0))

    assert state == RotationState.COMPLETED
    revoking = _step(store, rotation_id, "revoking")
    assert revoking.detail["revocation_proof"] == "refused: version revoked"
    assert revoking.detail["attempts"] > 1
    assert revoking.detail["waited_s"] >= 20
    old, _new = versions(store, "api-key")
    assert old.status == VersionStatus.REVOKED.value
    assert _rotation(store, rotation_id).attention is None
    bundle = evidence.export(store, rotation_id, actor="auditor", now=clock.now())
    [proof] = [s["detail"] for s in bundle["steps"] if s["name"] == "revoking"]
    assert proof["attempts"] == revoking.detail["attempts"], "the evidence counts the attempts"
    assert evidence.verify(store, bundle).ok


def test_an_old_version_still_accepted_at_the_timeout_needs_attention_not_completed(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion]
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, removal_delay=3600))
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock, grace=timedelta(0))

    assert state == RotationState.NEEDS_ATTENTION
    attention = _rotation(store, rotation_id).attention or ""
    assert "old version still accepted by the issuer within propagation_timeout 30s" in attention
    revoking = _step(store, rotation_id, "revoking")
    assert revoking.detail["revocation_proof"].startswith("still accepted")
    old, new = versions(store, "api-key")
    assert issuer[old.provider_ref].revoked, "the issuer was told; it has not caught up"
    assert old.status == VersionStatus.REVOKED.value
    assert json_value(tmp_path / "app.json") == value_of(store, new)


class WorkerDies(BaseException):
    """The worker process stops mid-step (a crash, as far as the journal can tell)."""


def test_a_worker_stopped_mid_proof_is_resumed_into_the_same_proof_of_the_same_version(
    store: Store, tmp_path: Path, issuer: dict[str, FakeVersion], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = cast("dict[str, Any]", PROVIDERS)

    class DiesWhileWaiting(FakeProvider.bound(issuer)):  # type: ignore[misc]
        async def verify(self, request: VerifyRequest) -> VerifyResult:
            if self.verify_calls == 2:
                raise WorkerDies
            return await super().verify(request)

    clock = FakeClock()
    _apply(store, _estate(tmp_path, sign_in_delay=20))
    monkeypatch.setitem(fake, "fake", DiesWhileWaiting)
    with pytest.raises(WorkerDies):
        _rotate(store, clock)
    [rotation] = rotations_of(store, "api-key")
    assert rotation.state == RotationState.PROVING.value

    monkeypatch.setitem(fake, "fake", FakeProvider.bound(issuer))
    clock.advance(timedelta(minutes=10))  # the dead worker's lease runs out
    [(_, _, state)] = asyncio.run(rotations.resume(store, actor="test", context=clock.context()))

    assert state == RotationState.COMPLETED
    assert len(issuer) == 1, "the resumed proof proves the stored version; nothing is minted"
    proofs = [(s.attempt, s.status) for s in steps(store, rotation.id) if s.name == "proving"]
    assert proofs[-1] == (2, StepStatus.SUCCEEDED.value)
    [version] = versions(store, "api-key")
    assert env_value(tmp_path / "app.env") == value_of(store, version)


def _actions(tmp_path: Path, failing: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The estate's default actions (two files, a logged reload) and one that fails."""
    estate = json.loads(write_estate(tmp_path).read_text(encoding="utf-8"))
    actions: list[dict[str, Any]] = estate["credentials"][0]["actions"]
    return actions + ([{"on_failure": "abort", **failing}] if failing else [])


class RefusingStore(RecordingTarget):
    """A secret store that is ready at preflight and refuses the write at cutover."""

    async def publish(self, request: PublishRequest) -> StepResult:
        raise PermanentError("403 Forbidden: the caller may not write this secret")


EXIT_3 = [sys.executable, "-c", "import sys; sys.exit(3)"]


@pytest.mark.parametrize(
    ("failing", "provider_refuses", "failed_step"),
    [
        pytest.param(
            {"type": "refusing", "order": 25, "config": {"name": "vault"}},
            False,
            "publishing:25:refusing",
            id="a publish that fails rolls back the publishes before it",
        ),
        pytest.param(
            {"type": "command", "order": 35, "config": {"argv": EXIT_3}},
            False,
            "reloading:35:command",
            id="a reload that fails rolls back",
        ),
        pytest.param(
            {"type": "command_check", "order": 40, "config": {"argv": EXIT_3}},
            False,
            "verifying:40:command_check",
            id="a verify action that fails rolls back",
        ),
        pytest.param(
            None,
            True,
            "verifying:provider",
            id="the issuer refusing the new version after cutover rolls back",
        ),
    ],
)
def test_every_failed_check_after_publishing_rolls_back_to_the_previous_value(
    failing: dict[str, Any] | None,
    provider_refuses: bool,
    failed_step: str,
    store: Store,
    tmp_path: Path,
    issuer: dict[str, FakeVersion],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(cast("dict[str, Any]", TARGETS), "refusing", RefusingStore)
    clock = FakeClock()
    _apply(store, _estate(tmp_path))
    _rotate(store, clock)
    [first] = versions(store, "api-key")
    previous = value_of(store, first)

    estate = _estate(tmp_path)
    changed = json.loads(estate.read_text(encoding="utf-8"))
    changed["credentials"][0]["actions"] = _actions(tmp_path, failing)
    _apply(store, save_estate(tmp_path, changed))
    if provider_refuses:
        bound = type("RefusedAfterCutover[bound]", (RefusedAfterCutover,), {"_shared": issuer})
        monkeypatch.setitem(cast("dict[str, Any]", PROVIDERS), "fake", bound)
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.ROLLED_BACK
    assert _step(store, rotation_id, failed_step).status == StepStatus.FAILED.value
    assert json_value(tmp_path / "app.json") == previous
    assert env_value(tmp_path / "app.env") == previous
    old, new = versions(store, "api-key")
    assert (old.status, new.status) == (VersionStatus.CURRENT.value, VersionStatus.DISABLED.value)
    assert failed_step in (_rotation(store, rotation_id).error or "")


def test_show_and_the_api_say_how_long_the_issuer_took_to_accept_the_new_version(
    store: Store,
    tmp_path: Path,
    issuer: dict[str, FakeVersion],
    cli: Cli,
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, sign_in_delay=20))
    rotation_id, _ = _rotate(store, clock)

    timeline = rotations.rotation_timeline(store, rotation_id)
    [proving] = [s for s in timeline.steps if s.name == "proving"]
    assert proving.note is not None
    assert re.fullmatch(r"proved after [2-9] attempt\(s\), [2-5][0-9]s", proving.note)
    shown = cli("show", rotation_id)
    assert shown.exit_code == 0, shown.output
    [row] = [r for r in table_rows(shown.output) if r and r[1] == "proving"]
    assert row[-1] == proving.note
    assert [s.note for s in _rotation_out(timeline).steps if s.name == "proving"] == [proving.note]
