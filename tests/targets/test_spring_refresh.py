"""The `spring_refresh` target against a local Spring Boot actuator double, through httpx."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError
from keyshift.targets import TARGETS, TargetKind
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.targets.spring_refresh import SpringRefreshConfig, SpringRefreshTarget
from keyshift.testing import FakeClock
from tests.doubles.spring import Fault, SpringActuatorDouble, spring_actuator


@pytest.fixture
def spring() -> Iterator[SpringActuatorDouble]:
    with spring_actuator() as double:
        yield double


def delivery(version_id: str = "ver-2") -> Delivery:
    return Delivery(
        credential="orders-db",
        rotation_id="rot-3",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret("VALUE-" + secrets.token_hex(8)),
    )


def target(
    url: str, env: dict[str, str] | None = None, **config: Any
) -> tuple[SpringRefreshTarget, FakeClock]:
    clock = FakeClock()
    settings = SpringRefreshConfig.model_validate({"url": url, **config})
    return SpringRefreshTarget(settings, clock.context(env)), clock


def publish(t: SpringRefreshTarget) -> StepResult:
    return asyncio.run(t.publish(PublishRequest(delivery(), None)))


def preflight(t: SpringRefreshTarget) -> tuple[Readiness, str]:
    result = asyncio.run(t.preflight(PreflightRequest("orders-db")))
    return result.readiness, result.reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- publish ----------------------------------------------------------------------------------


def test_refresh_records_the_changed_property_keys(spring: SpringActuatorDouble) -> None:
    spring.changed_keys = ["spring.datasource.password", "orders.api-key"]
    t, clock = target(spring.refresh_url)

    result = publish(t)

    assert dict(result.detail) == {
        "status": 200,
        "attempts": 1,
        "host": "127.0.0.1",
        "changed_keys": ["spring.datasource.password", "orders.api-key"],
    }
    assert [(r.method, r.path) for r in spring.requests] == [("POST", "/actuator/refresh")]
    assert spring.refreshes == 1
    assert clock.sleeps == []


def test_a_repeated_refresh_reports_no_changed_keys(spring: SpringActuatorDouble) -> None:
    spring.changed_keys = ["spring.datasource.password"]
    t, _ = target(spring.refresh_url)

    publish(t)
    again = publish(t)

    assert again.detail["changed_keys"] == []
    assert spring.refreshes == 2


def test_answer_that_is_not_a_key_list_is_a_success_without_keys(
    spring: SpringActuatorDouble,
) -> None:
    spring.faults = [Fault(200)]  # a JSON object, not Spring Cloud's array of keys
    t, _ = target(spring.refresh_url)

    result = publish(t)

    assert result.detail["status"] == 200
    assert result.detail["changed_keys"] is None


def test_unexposed_refresh_endpoint_fails_saying_how_to_expose_it(
    spring: SpringActuatorDouble,
) -> None:
    spring.exposed = {"health"}
    t, clock = target(spring.refresh_url + "?token=tok-9f3e")

    with pytest.raises(PermanentError) as caught:
        publish(t)

    assert str(caught.value) == (
        "127.0.0.1 answered HTTP 404: the refresh endpoint is not exposed; "
        "set management.endpoints.web.exposure.include=refresh"
    )
    assert len(spring.posts()) == 1
    assert clock.sleeps == []


# --- authentication ---------------------------------------------------------------------------


def test_basic_credentials_are_sent_and_never_logged_or_recorded(
    spring: SpringActuatorDouble, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pw-" + secrets.token_hex(8)
    spring.basic = ("actuator", password)
    caplog.set_level(logging.DEBUG)
    t, _ = target(
        spring.refresh_url,
        env={"ACT_PW": password},
        username="actuator",
        password_from="env:ACT_PW",
    )

    result = publish(t)
    ready = preflight(t)

    assert [(r.auth_scheme, r.authorized) for r in spring.requests] == [("Basic", True)] * 2
    assert ready == (Readiness.READY, "")
    assert caplog.records, "debug logging was on"
    everything = caplog.text + repr(spring.requests) + repr(result.detail)
    assert password not in everything


def test_bearer_token_is_sent_and_never_logged_or_recorded(
    spring: SpringActuatorDouble, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-" + secrets.token_hex(12)
    spring.bearer = token
    caplog.set_level(logging.DEBUG)
    t, _ = target(spring.refresh_url, env={"ACT_TOKEN": token}, token_from="env:ACT_TOKEN")

    result = publish(t)

    assert [(r.auth_scheme, r.authorized) for r in spring.requests] == [("Bearer", True)]
    assert caplog.records, "debug logging was on"
    assert token not in caplog.text + repr(spring.requests) + repr(result.detail)


def test_wrong_password_fails_at_once_about_credentials(spring: SpringActuatorDouble) -> None:
    spring.basic = ("actuator", "right-" + secrets.token_hex(4))
    wrong = "wrong-" + secrets.token_hex(4)
    t, clock = target(
        spring.refresh_url, env={"ACT_PW": wrong}, username="actuator", password_from="env:ACT_PW"
    )

    with pytest.raises(PermanentError, match=r"refused the credentials \(HTTP 401\)") as caught:
        publish(t)

    assert [(r.auth_scheme, r.authorized) for r in spring.requests] == [("Basic", False)]
    assert clock.sleeps == []
    assert wrong not in str(caught.value)


def test_missing_credentials_against_a_secured_actuator_say_none_are_configured(
    spring: SpringActuatorDouble,
) -> None:
    spring.basic = ("actuator", "pw")
    t, _ = target(spring.refresh_url)

    with pytest.raises(PermanentError, match="no credentials are configured"):
        publish(t)


def test_user_without_the_actuator_role_is_told_so(spring: SpringActuatorDouble) -> None:
    spring.bearer = "tok"
    spring.forbidden = True
    t, _ = target(spring.refresh_url, env={"T": "tok"}, token_from="env:T")

    with pytest.raises(PermanentError, match=r"denies the refresh endpoint \(HTTP 403\)"):
        publish(t)

    assert len(spring.requests) == 1


def test_unreadable_credential_reference_fails_before_sending(
    spring: SpringActuatorDouble,
) -> None:
    t, _ = target(spring.refresh_url, username="actuator", password_from="env:ACT_PW")

    with pytest.raises(PermanentError, match="ACT_PW is not set"):
        publish(t)
    readiness, reason = preflight(t)

    assert readiness is Readiness.BLOCKED
    assert "ACT_PW is not set" in reason
    assert spring.requests == []


# --- retries ----------------------------------------------------------------------------------


def test_503_is_retried_with_growing_jittered_sleeps_then_succeeds(
    spring: SpringActuatorDouble,
) -> None:
    spring.faults = [Fault(503), Fault(503)]
    spring.changed_keys = ["orders.api-key"]
    t, clock = target(spring.refresh_url, backoff="1s")

    result = publish(t)

    assert result.detail["attempts"] == 3
    assert result.detail["changed_keys"] == ["orders.api-key"]
    assert len(spring.posts()) == 3
    assert len(clock.sleeps) == 2
    for retry, seconds in enumerate(clock.sleeps):
        assert 2**retry <= seconds <= 2**retry * 1.25  # base * 2**retry plus jitter


def test_retry_after_of_a_429_is_honoured(spring: SpringActuatorDouble) -> None:
    spring.faults = [Fault(429, {"Retry-After": "7"})]
    t, clock = target(spring.refresh_url, backoff="1s")

    result = publish(t)

    assert clock.sleeps == [7.0]
    assert result.detail["attempts"] == 2


def test_server_errors_past_the_timeout_are_transient(spring: SpringActuatorDouble) -> None:
    spring.faults = [Fault(500)] * 50
    t, clock = target(spring.refresh_url, timeout="10s", backoff="1s")

    with pytest.raises(TransientError, match=r"failed after 5 attempts within 10s: HTTP 500"):
        publish(t)

    # 1 + 2 + 4 (with jitter) leaves less than 8 s, so the last wait is cut to the deadline.
    assert len(clock.sleeps) == 4
    assert sum(clock.sleeps) == pytest.approx(10.0)
    assert spring.refreshes == 0


def test_retry_after_longer_than_the_time_left_is_left_to_the_engine(
    spring: SpringActuatorDouble,
) -> None:
    spring.faults = [Fault(503, {"Retry-After": "120"})]
    t, clock = target(spring.refresh_url, timeout="60s")

    with pytest.raises(TransientError) as caught:
        publish(t)

    assert caught.value.retry_after == 120.0
    assert clock.sleeps == []
    assert len(spring.posts()) == 1


def test_unreachable_application_is_retried_then_transient() -> None:
    t, clock = target(f"http://127.0.0.1:{free_port()}/actuator/refresh", timeout="5s")

    with pytest.raises(TransientError, match="ConnectError") as caught:
        publish(t)

    assert len(clock.sleeps) >= 2
    assert "/actuator" not in str(caught.value)


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_refreshes_again_so_the_restored_value_is_loaded(
    spring: SpringActuatorDouble,
) -> None:
    t, _ = target(spring.refresh_url)
    publish(t)
    spring.changed_keys = ["spring.datasource.password"]

    result = asyncio.run(t.rollback(RollbackRequest(delivery(), delivery("ver-1"))))

    assert spring.refreshes == 2
    assert result.detail["changed_keys"] == ["spring.datasource.password"]


# --- preflight --------------------------------------------------------------------------------


def test_preflight_is_ready_when_discovery_lists_refresh_and_posts_nothing(
    spring: SpringActuatorDouble,
) -> None:
    t, _ = target(spring.refresh_url)

    assert preflight(t) == (Readiness.READY, "")
    assert [(r.method, r.path) for r in spring.requests] == [("GET", "/actuator")]
    assert spring.refreshes == 0


def test_preflight_is_blocked_when_refresh_is_not_listed(spring: SpringActuatorDouble) -> None:
    spring.exposed = {"health", "info"}
    t, _ = target(spring.refresh_url)

    readiness, reason = preflight(t)

    assert readiness is Readiness.BLOCKED
    assert reason == (
        "127.0.0.1 does not expose the refresh endpoint; "
        "add it to management.endpoints.web.exposure.include"
    )
    assert spring.posts() == []


def test_preflight_is_blocked_when_there_is_no_actuator_at_that_path(
    spring: SpringActuatorDouble,
) -> None:
    t, _ = target(f"{spring.base_url}/manage/refresh")

    readiness, reason = preflight(t)

    assert readiness is Readiness.BLOCKED
    assert "HTTP 404" in reason
    assert "not exposed" in reason
    assert [(r.method, r.path) for r in spring.requests] == [("GET", "/manage")]


def test_preflight_is_blocked_when_unreachable_or_refused(spring: SpringActuatorDouble) -> None:
    down, _ = target(f"http://127.0.0.1:{free_port()}/actuator/refresh")
    spring.basic = ("actuator", "pw")
    refused, _ = target(spring.refresh_url)

    assert preflight(down) == (Readiness.BLOCKED, "127.0.0.1 is unreachable: ConnectError")
    readiness, reason = preflight(refused)
    assert readiness is Readiness.BLOCKED
    assert "refused the credentials (HTTP 401)" in reason
    assert spring.posts() == []


# --- config and registry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"username": "actuator"}, "set username and password_from together"),
        (
            {"username": "a", "password_from": "env:P", "token_from": "env:T"},
            "either username/password_from or token_from",
        ),
        ({"url": "https://app:8080/"}, "must name the refresh endpoint"),
        ({"url": "https://a:pw@app:8080/actuator/refresh"}, "must not carry credentials"),
        ({"url": "ftp://app/actuator/refresh"}, "must start with http:// or https://"),
        ({"token_from": "inline-token"}, "env:NAME"),
        ({"timeout": "0s"}, "timeout must be longer than 0s"),
        ({"backoff": "0s"}, "backoff must be longer than 0s"),
    ],
)
def test_bad_config_is_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SpringRefreshConfig.model_validate({"url": "https://app:8080/actuator/refresh", **config})


def test_target_is_registered_as_a_reloading_step() -> None:
    assert TARGETS[TargetKind.SPRING_REFRESH] is SpringRefreshTarget
    assert SpringRefreshTarget.phase is Phase.RELOAD
    assert SpringRefreshTarget.Config is SpringRefreshConfig
