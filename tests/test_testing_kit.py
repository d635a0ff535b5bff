"""The test kit itself: its fakes keep their promises and its checks fail on broken plugins.

A test kit that cannot fail is a defect, so each check is run against a plugin
broken in exactly the way the check exists to catch.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import ClassVar

import pytest
import structlog

from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    ListRequest,
    Provider,
    RevokeRequest,
    RevokeResult,
    VerifyRequest,
    VerifyResult,
    VersionInfo,
)
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PreflightResult,
    PublishRequest,
    Readiness,
    RollbackRequest,
    Target,
)
from keyshift.testing import (
    FAKE_CLOCK_START,
    FakeClock,
    FakeMethod,
    FakeProvider,
    RecordingConfig,
    RecordingTarget,
    TargetCall,
    assert_provider_contract,
    capture_logs,
)


def create_request(marker: str = "keyshift:rot-1", policy: Policy | None = None) -> CreateRequest:
    return CreateRequest(
        credential="payments-api",
        rotation_id="rot-1",
        marker=marker,
        policy=policy or Policy(),
        current=None,
    )


def revoke_request(version: IssuedVersion) -> RevokeRequest:
    return RevokeRequest(credential="payments-api", rotation_id="rot-1", version=version)


def delivery(version_id: str, value: str = "s3cret-value") -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id="rot-1",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
    )


# --- broken providers: each breaks one promise of the contract ----------------------------


class MintsOnEveryCreate(FakeProvider):
    """Ignores the marker: every create mints a new version."""

    async def create(self, request: CreateRequest) -> IssuedVersion:
        self.create_calls += 1
        return self._mint(request).issued()


class RevokeFailsWhenGone(FakeProvider):
    """Raises when asked to revoke a version that is already revoked."""

    async def revoke(self, request: RevokeRequest) -> RevokeResult:
        held = self.versions.get(request.version.provider_ref)
        if held is None or held.revoked:
            raise PermanentError(f"version {request.version.provider_ref} not found")
        return await super().revoke(request)


class LeaksValueInError(FakeProvider):
    """Quotes the value in the message of an error raised by verify."""

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        raise TransientError(f"login with {request.version.value.reveal()} timed out")


class LogsTheValue(FakeProvider):
    """Logs the value it issued."""

    async def create(self, request: CreateRequest) -> IssuedVersion:
        issued = await super().create(request)
        structlog.get_logger().info("issued", password=issued.value.reveal())
        return issued


class ShowsValueInRepr(FakeProvider):
    """Returns a version whose provider_ref is the value itself."""

    async def create(self, request: CreateRequest) -> IssuedVersion:
        issued = await super().create(request)
        return IssuedVersion(provider_ref=issued.value.reveal(), value=issued.value)


class VerifyAlwaysFails(FakeProvider):
    """Never authenticates, not even with the version it just issued."""

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        await super().verify(request)
        return VerifyResult(ok=False, detail="invalid client secret")


class PreflightMints(FakeProvider):
    """Issues a version while it should only check."""

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        marker = "keyshift:preflight"
        self._mint(CreateRequest(request.credential, "preflight", marker, Policy(), None))
        return await super().preflight(request)


class AcloseTwiceFails(FakeProvider):
    """Raises when closed a second time."""

    async def aclose(self) -> None:
        await super().aclose()
        if self.aclose_calls > 1:
            raise RuntimeError("already closed")


def test_fake_provider_keeps_the_provider_contract() -> None:
    provider = FakeProvider()
    asyncio.run(assert_provider_contract(provider))
    assert provider.preflight_calls == 1
    assert provider.issued == 1
    assert provider.create_calls == 2
    assert provider.revoke_calls == 2
    assert provider.aclose_calls == 2


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        pytest.param(MintsOnEveryCreate, "not idempotent", id="mints on every create"),
        pytest.param(RevokeFailsWhenGone, "already revoked", id="revoke raises when gone"),
        pytest.param(LeaksValueInError, "contains a secret", id="error quotes the value"),
        pytest.param(LogsTheValue, "secret value was logged", id="logs the value"),
        pytest.param(ShowsValueInRepr, "shows its value", id="repr shows the value"),
        pytest.param(VerifyAlwaysFails, "is not ok", id="verify of a new version fails"),
        pytest.param(PreflightMints, "preflight changed the issuer", id="preflight mints"),
        pytest.param(AcloseTwiceFails, "aclose called twice", id="aclose twice raises"),
    ],
)
def test_provider_contract_fails_a_provider_that_breaks_a_promise(
    broken: type[FakeProvider], complaint: str
) -> None:
    provider = broken()
    with pytest.raises(AssertionError, match=complaint) as caught:
        asyncio.run(assert_provider_contract(provider))
    # The report itself must not leak a value the provider issued.
    assert provider.versions
    for version in provider.versions.values():
        assert version.value.reveal() not in str(caught.value)


class ClaimsResidualUse(FakeProvider):
    """Declares that it sees sessions, but has no `residual_use` to ask."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.RESIDUAL_USE}
    )


def test_provider_contract_fails_a_capability_declared_without_its_method() -> None:
    with pytest.raises(AssertionError, match="declares residual_use but has no residual_use"):
        asyncio.run(assert_provider_contract(ClaimsResidualUse()))


class HidesWhatDecidesCapabilities(FakeProvider):
    """Its capabilities read `authenticates`, but it says they read no config."""

    capability_fields: ClassVar[tuple[str, ...]] = ()


def test_provider_contract_fails_capabilities_that_read_a_field_not_named() -> None:
    with pytest.raises(AssertionError, match=r"capabilities reads \['authenticates'\]"):
        asyncio.run(assert_provider_contract(HidesWhatDecidesCapabilities()))


def test_provider_contract_report_never_contains_the_leaked_value() -> None:
    provider = LeaksValueInError()
    with pytest.raises(AssertionError) as caught:
        asyncio.run(assert_provider_contract(provider))
    value = next(iter(provider.versions.values())).value.reveal()
    assert value not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_provider_contract_fails_a_system_of_record_provider_that_repeats_a_value() -> None:
    class RepeatsValue(FakeProvider):
        async def create(self, request: CreateRequest) -> IssuedVersion:
            await super().create(request)
            return IssuedVersion(provider_ref="random:same", value=Secret("always-the-same"))

        async def list_versions(self, request: ListRequest) -> list[VersionInfo]:
            return []

    with pytest.raises(AssertionError, match="same value"):
        asyncio.run(assert_provider_contract(RepeatsValue()))


# --- FakeProvider ----------------------------------------------------------------------------


def test_fake_provider_create_with_a_present_marker_returns_that_version() -> None:
    async def scenario() -> tuple[FakeProvider, IssuedVersion, IssuedVersion, IssuedVersion]:
        provider = FakeProvider()
        first = await provider.create(create_request())
        again = await provider.create(create_request())
        other = await provider.create(create_request(marker="keyshift:rot-2"))
        return provider, first, again, other

    provider, first, again, other = asyncio.run(scenario())
    assert again.provider_ref == first.provider_ref
    assert again.value == first.value
    assert other.provider_ref != first.provider_ref
    assert provider.create_calls == 3
    assert provider.issued == 2


def test_fake_provider_verify_is_ok_only_for_a_live_version_with_its_value() -> None:
    async def scenario() -> list[bool]:
        provider = FakeProvider()
        version = await provider.create(create_request())
        wrong_value = IssuedVersion(provider_ref=version.provider_ref, value=Secret("wrong"))
        unknown = IssuedVersion(provider_ref="fake-999", value=version.value)
        results = [
            await provider.verify(VerifyRequest(credential="payments-api", version=v))
            for v in (version, wrong_value, unknown)
        ]
        await provider.revoke(revoke_request(version))
        revoked = await provider.verify(VerifyRequest(credential="payments-api", version=version))
        return [r.ok for r in [*results, revoked]]

    assert asyncio.run(scenario()) == [True, False, False, False]


def test_fake_provider_revoke_of_a_gone_version_succeeds_as_already_gone() -> None:
    async def scenario() -> tuple[FakeProvider, list[bool]]:
        provider = FakeProvider()
        version = await provider.create(create_request())
        never = IssuedVersion(provider_ref="fake-404", value=Secret("whatever"))
        results = [await provider.revoke(revoke_request(v)) for v in (version, version, never)]
        return provider, [r.already_gone for r in results]

    provider, gone = asyncio.run(scenario())
    assert gone == [False, True, True]
    assert provider.revoke_calls == 3
    assert [v.revoked for v in provider.versions.values()] == [True]


def test_fake_provider_lists_live_versions_of_the_credential_oldest_first() -> None:
    async def scenario() -> list[str]:
        provider = FakeProvider()
        first = await provider.create(create_request("m1"))
        await provider.create(create_request("m2"))
        await provider.create(create_request("m3"))
        await provider.create(
            CreateRequest(
                credential="other", rotation_id="r", marker="m4", policy=Policy(), current=None
            )
        )
        await provider.revoke(revoke_request(first))
        listed = await provider.list_versions(ListRequest(credential="payments-api"))
        return [v.marker or "" for v in listed]

    assert asyncio.run(scenario()) == ["m2", "m3"]


def test_fake_provider_a_revoked_marker_no_longer_blocks_a_new_version() -> None:
    async def scenario() -> tuple[IssuedVersion, IssuedVersion]:
        provider = FakeProvider()
        first = await provider.create(create_request())
        await provider.revoke(revoke_request(first))
        return first, await provider.create(create_request())

    first, second = asyncio.run(scenario())
    assert second.provider_ref != first.provider_ref


def test_fake_provider_fail_next_raises_once_before_any_effect() -> None:
    provider = FakeProvider()
    provider.fail_next("create", TransientError("issuer busy", retry_after=2.0))

    with pytest.raises(TransientError, match="issuer busy"):
        asyncio.run(provider.create(create_request()))
    assert provider.issued == 0
    asyncio.run(provider.create(create_request()))
    assert provider.issued == 1
    assert provider.create_calls == 2


def test_fake_provider_fail_after_effect_mints_then_raises_and_retry_finds_the_version() -> None:
    provider = FakeProvider()
    provider.fail_next("create", TimeoutError("response lost"), after_effect=True)

    with pytest.raises(TimeoutError):
        asyncio.run(provider.create(create_request()))
    assert provider.issued == 1
    retried = asyncio.run(provider.create(create_request()))
    assert provider.issued == 1
    assert retried.provider_ref == "fake-1"


@pytest.mark.parametrize("method", ["verify", "revoke", "list_versions", "aclose"])
def test_fake_provider_fail_next_applies_to_the_named_method_only(method: FakeMethod) -> None:
    async def scenario() -> None:
        provider = FakeProvider()
        version = await provider.create(create_request())
        provider.fail_next(method, PermanentError("injected"))
        calls = {
            "verify": lambda: provider.verify(
                VerifyRequest(credential="payments-api", version=version)
            ),
            "revoke": lambda: provider.revoke(revoke_request(version)),
            "list_versions": lambda: provider.list_versions(ListRequest("payments-api")),
            "aclose": provider.aclose,
        }
        for name, call in calls.items():
            if name != method:
                await call()
        with pytest.raises(PermanentError, match="injected"):
            await calls[method]()
        await calls[method]()

    asyncio.run(scenario())


def test_fake_provider_expiry_follows_max_lifetime_on_the_injected_clock() -> None:
    clock = FakeClock()
    provider = FakeProvider(context=clock.context())
    policy = Policy(max_lifetime=timedelta(days=30), rotate_before_expiry=timedelta(days=7))
    version = asyncio.run(provider.create(create_request(policy=policy)))
    assert version.expires_at == FAKE_CLOCK_START + timedelta(days=30)


def test_fakes_satisfy_the_plugin_protocols() -> None:
    assert isinstance(FakeProvider(), Provider)
    assert isinstance(RecordingTarget(), Target)


# --- RecordingTarget ---------------------------------------------------------------------


def test_recording_targets_share_one_ordered_record_of_ids_and_fingerprints() -> None:
    calls: list[TargetCall] = []
    first = RecordingTarget(RecordingConfig(name="app-json"), calls=calls)
    second = RecordingTarget(RecordingConfig(name="app-env"), calls=calls)

    async def scenario() -> None:
        new, old = delivery("v2"), delivery("v1")
        await first.publish(PublishRequest(delivery=new, previous=old))
        await second.publish(PublishRequest(delivery=new, previous=old))
        await second.rollback(RollbackRequest(failed=new, previous=old))
        await first.rollback(RollbackRequest(failed=new, previous=None))

    asyncio.run(scenario())
    assert calls == [
        TargetCall("app-json", "publish", "v2", "fp-v2"),
        TargetCall("app-env", "publish", "v2", "fp-v2"),
        TargetCall("app-env", "rollback", "v1", "fp-v1"),
        TargetCall("app-json", "rollback", None, None),
    ]
    assert "s3cret-value" not in repr(calls)


def test_recording_target_fail_next_raises_once_and_records_nothing() -> None:
    target = RecordingTarget()
    target.fail_next(TransientError("consumer down"))
    request = PublishRequest(delivery=delivery("v2"), previous=None)

    with pytest.raises(TransientError):
        asyncio.run(target.publish(request))
    assert target.calls == []
    asyncio.run(target.publish(request))
    assert [c.operation for c in target.calls] == ["publish"]
    assert target.attempts == 2


def test_recording_target_fail_next_for_rollback_spares_publish() -> None:
    target = RecordingTarget()
    target.fail_next(PermanentError("cannot restore"), operation="rollback")
    asyncio.run(target.publish(PublishRequest(delivery=delivery("v2"), previous=None)))
    with pytest.raises(PermanentError):
        asyncio.run(target.rollback(RollbackRequest(failed=delivery("v2"), previous=None)))
    assert [c.operation for c in target.calls] == ["publish"]


def test_recording_target_bound_class_sets_phase_and_shared_list_for_registries() -> None:
    calls: list[TargetCall] = []
    reload_target = RecordingTarget.bound(calls, phase=Phase.RELOAD)
    assert reload_target.phase is Phase.RELOAD
    assert RecordingTarget.phase is Phase.PUBLISH
    target = reload_target(RecordingConfig(name="iis"), FakeClock().context())
    asyncio.run(target.publish(PublishRequest(delivery=delivery("v2"), previous=None)))
    assert calls == [TargetCall("iis", "publish", "v2", "fp-v2")]
    assert RecordingTarget().calls == []


def test_recording_target_preflight_reports_the_configured_readiness() -> None:
    target = RecordingTarget(RecordingConfig(readiness=Readiness.BLOCKED))
    result = asyncio.run(target.preflight(PreflightRequest(credential="payments-api")))
    assert result.readiness is Readiness.BLOCKED


# --- FakeClock ---------------------------------------------------------------------------


def test_fake_clock_sleep_records_and_moves_time_without_waiting() -> None:
    clock = FakeClock()
    context = clock.context()

    async def scenario() -> None:
        await context.sleep(30)
        await context.sleep(0.5)

    asyncio.run(scenario())
    assert clock.sleeps == [30, 0.5]
    assert context.now() == FAKE_CLOCK_START + timedelta(seconds=30.5)
    assert clock.advance(timedelta(hours=1)) == FAKE_CLOCK_START + timedelta(hours=1, seconds=30.5)
    assert context.env == {}


def test_fake_clock_refuses_naive_start_and_going_backwards() -> None:
    with pytest.raises(ValueError, match="timezone"):
        FakeClock(FAKE_CLOCK_START.replace(tzinfo=None))
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(timedelta(seconds=-1))


# --- capture_logs ------------------------------------------------------------------------


def test_capture_logs_yields_events_and_passes_when_no_secret_is_logged() -> None:
    with capture_logs(secrets=["hunter2-password"]) as events:
        structlog.get_logger().info("rotated", credential="payments-api", version_id="v2")
    assert events == [
        {"event": "rotated", "log_level": "info", "credential": "payments-api", "version_id": "v2"}
    ]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"password": "hunter2-password"}, id="as a field"),
        pytest.param({"detail": "login with hunter2-password failed"}, id="inside a message"),
        pytest.param({"nested": {"list": [("x", "hunter2-password")]}}, id="nested"),
        pytest.param({"error": ValueError("bad hunter2-password")}, id="in an exception"),
    ],
)
def test_capture_logs_fails_when_a_registered_secret_is_logged(fields: dict[str, object]) -> None:
    with (
        pytest.raises(AssertionError, match="secret value was logged") as caught,
        capture_logs(secrets=["hunter2-password"]),
    ):
        structlog.get_logger().warning("step failed", **fields)
    assert "hunter2-password" not in str(caught.value)


def test_capture_logs_reads_secrets_registered_inside_the_block() -> None:
    known: list[str] = []
    with pytest.raises(AssertionError), capture_logs(secrets=known):  # noqa: PT012
        known.append("minted-in-block")
        structlog.get_logger().info("issued", value="minted-in-block")


def test_capture_logs_ignores_a_secret_object_which_logs_redacted() -> None:
    with capture_logs(secrets=["hunter2-password"]) as events:
        structlog.get_logger().info("issued", value=Secret("hunter2-password"))
    assert len(events) == 1
