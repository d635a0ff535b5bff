"""The `http_check` target GETs a real local HTTP server until it answers healthy.

The server is scripted per test; the clock is a FakeClock, so the waits between
tries are recorded instead of slept.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.engine.plugins import validate_config
from keyshift.errors import EstateInvalid, PermanentError
from keyshift.targets import TARGETS, TargetKind
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PreflightResult,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.targets.http_check import HttpCheckConfig, HttpCheckTarget
from keyshift.testing import FakeClock
from tests.doubles.http import NoDelayHandler

TOKEN = "tok-" + secrets.token_hex(8)
"""A token in the checked URL's query, which must never reach a detail or an error."""


def delivery(version_id: str = "v2") -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id="rot-5",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret("S3CRET-" + secrets.token_hex(8)),
    )


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"status":"UP"}'
    headers: dict[str, str] | None = None


class Consumer:
    """A consumer's health endpoint: records each GET and answers from a script
    (then 200 with the default body once the script is used up)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        consumer = self

        class Handler(NoDelayHandler):
            def do_GET(self) -> None:
                with consumer.lock:
                    consumer.paths.append(self.path)
                    consumer.headers.append(dict(self.headers))
                    answer = consumer.script.pop(0) if consumer.script else Answer()
                self.send_response(answer.status)
                for name, value in (answer.headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health/ready?token={TOKEN}"


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    c = Consumer()
    thread = threading.Thread(
        target=c.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()
        thread.join()


def target(url: str, **config: Any) -> tuple[HttpCheckTarget, FakeClock]:
    clock = FakeClock()
    check = HttpCheckTarget(HttpCheckConfig.model_validate({"url": url, **config}), clock.context())
    return check, clock


def publish(check: HttpCheckTarget) -> StepResult:
    return asyncio.run(check.publish(PublishRequest(delivery(), delivery("v1"))))


def rollback(check: HttpCheckTarget) -> StepResult:
    return asyncio.run(check.rollback(RollbackRequest(delivery(), delivery("v1"))))


def preflight(check: HttpCheckTarget) -> PreflightResult:
    return asyncio.run(check.preflight(PreflightRequest("payments-api")))


def refused_url() -> str:
    """A URL on a local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/health?token={TOKEN}"


# --- publish ----------------------------------------------------------------------------------


def test_consumer_that_answers_503_then_200_passes_after_waiting_the_interval(
    consumer: Consumer,
) -> None:
    consumer.script = [Answer(503), Answer(503), Answer(503)]
    check, clock = target(consumer.url, interval="3s")

    result = publish(check)

    assert dict(result.detail) == {"status": 200, "attempts": 4, "host": "127.0.0.1"}
    assert clock.sleeps == [3.0, 3.0, 3.0]
    assert consumer.paths == [f"/health/ready?token={TOKEN}"] * 4


def test_healthy_consumer_passes_at_the_first_try_without_waiting(consumer: Consumer) -> None:
    check, clock = target(consumer.url)

    result = publish(check)

    assert result.detail["attempts"] == 1
    assert clock.sleeps == []


def test_unhealthy_consumer_fails_permanently_after_the_timeout_naming_host_status_attempts(
    consumer: Consumer,
) -> None:
    consumer.script = [Answer(503)] * 10
    check, clock = target(consumer.url, timeout="10s", interval="2s")

    with pytest.raises(PermanentError) as caught:
        publish(check)

    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "HTTP 503" in message
    assert "6 attempts" in message
    assert "/health" not in message
    assert TOKEN not in message
    # Tries at 0, 2, 4, 6, 8 and 10 seconds: the last one at the deadline.
    assert clock.sleeps == [2.0] * 5
    assert len(consumer.paths) == 6


def test_last_wait_is_cut_to_the_deadline(consumer: Consumer) -> None:
    consumer.script = [Answer(500)] * 10
    check, clock = target(consumer.url, timeout="5s", interval="2s")

    with pytest.raises(PermanentError, match="4 attempts"):
        publish(check)

    assert clock.sleeps == [2.0, 2.0, 1.0]


def test_body_without_the_expected_text_fails_after_the_timeout(consumer: Consumer) -> None:
    consumer.script = [Answer(200, b'{"status":"DOWN"}')] * 10
    check, _ = target(consumer.url, expect_body='"status":"UP"', timeout="4s", interval="2s")

    with pytest.raises(PermanentError) as caught:
        publish(check)

    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "without the expected body text" in message
    assert "3 attempts" in message
    assert TOKEN not in message
    assert "/health" not in message
    assert '"status":"DOWN"' not in message  # the consumer's answer is not quoted


def test_body_with_the_expected_text_passes_once_it_appears(consumer: Consumer) -> None:
    consumer.script = [Answer(200, b"starting"), Answer(200, b"ready: db=ok cache=ok")]
    check, clock = target(consumer.url, expect_body="db=ok")

    result = publish(check)

    assert result.detail["attempts"] == 2
    assert clock.sleeps == [2.0]


def test_expect_status_accepts_only_that_status(consumer: Consumer) -> None:
    consumer.script = [Answer(200), Answer(200), Answer(204, b"")]
    check, _ = target(consumer.url, expect_status=204)

    result = publish(check)

    assert dict(result.detail) == {"status": 204, "attempts": 3, "host": "127.0.0.1"}


def test_expect_status_mismatch_names_both_statuses(consumer: Consumer) -> None:
    check, _ = target(consumer.url, expect_status=204, timeout="2s", interval="2s")

    with pytest.raises(PermanentError, match=r"HTTP 200, not 204"):
        publish(check)


def test_redirect_is_not_followed_and_is_not_healthy(consumer: Consumer) -> None:
    consumer.script = [Answer(302, b"", {"Location": "/elsewhere"})] * 5
    check, _ = target(consumer.url, timeout="2s", interval="2s")

    with pytest.raises(PermanentError, match=r"HTTP 302, not 2xx"):
        publish(check)

    assert all(p.startswith("/health/ready") for p in consumer.paths)


def test_connection_refused_fails_permanently_after_the_timeout() -> None:
    check, clock = target(refused_url(), timeout="6s", interval="2s")

    with pytest.raises(PermanentError) as caught:
        publish(check)

    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "ConnectError" in message
    assert "4 attempts" in message
    assert TOKEN not in message
    assert clock.sleeps == [2.0, 2.0, 2.0]


def test_configured_headers_are_sent(consumer: Consumer) -> None:
    check, _ = target(consumer.url, headers={"Accept": "application/json", "X-Probe": "keyshift"})

    publish(check)

    assert consumer.headers[0]["Accept"] == "application/json"
    assert consumer.headers[0]["X-Probe"] == "keyshift"


def test_detail_holds_status_attempts_and_host_but_never_the_url(consumer: Consumer) -> None:
    check, _ = target(consumer.url)

    result = publish(check)

    shown = repr(result.detail)
    assert set(result.detail) == {"status", "attempts", "host"}
    assert TOKEN not in shown
    assert "token" not in shown
    assert "/health" not in shown
    assert str(consumer.server.server_address[1]) not in shown


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_checks_the_consumer_again_the_same_way(consumer: Consumer) -> None:
    consumer.script = [Answer(503)]
    check, clock = target(consumer.url)

    result = rollback(check)

    assert dict(result.detail) == {"status": 200, "attempts": 2, "host": "127.0.0.1"}
    assert clock.sleeps == [2.0]


def test_rollback_raises_when_the_consumer_stays_unhealthy_on_the_old_value(
    consumer: Consumer,
) -> None:
    consumer.script = [Answer(502)] * 5
    check, _ = target(consumer.url, timeout="4s")

    with pytest.raises(PermanentError, match=r"after rollback .*3 attempts.*HTTP 502"):
        rollback(check)


# --- preflight --------------------------------------------------------------------------------


def test_preflight_is_ready_when_the_consumer_answers_healthy_now(consumer: Consumer) -> None:
    check, clock = target(consumer.url, expect_body="UP")

    result = preflight(check)

    assert result.readiness is Readiness.READY
    assert len(consumer.paths) == 1
    assert clock.sleeps == []


def test_preflight_asks_for_review_when_the_consumer_is_unhealthy_now(
    consumer: Consumer,
) -> None:
    consumer.script = [Answer(503)]
    check, clock = target(consumer.url)

    result = preflight(check)

    assert result.readiness is Readiness.MANUAL_REVIEW
    assert "127.0.0.1" in result.reason
    assert "HTTP 503" in result.reason
    assert len(consumer.paths) == 1  # one try, no waiting for it to recover
    assert clock.sleeps == []


def test_preflight_asks_for_review_when_the_consumer_is_not_reachable() -> None:
    check, clock = target(refused_url())

    result = preflight(check)

    assert result.readiness is Readiness.MANUAL_REVIEW
    assert "ConnectError" in result.reason
    assert TOKEN not in result.reason
    assert clock.sleeps == []


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"url": "ftp://example.com/health"}, "url", "must start with http:// or https://"),
        ({"url": "https://ops:pw-9f3e@example.com/h"}, "url", "must not carry user:password"),
        ({"url": "https:///health"}, "url", "has no host"),
        ({"url": "https://example.com", "expect_status": 99}, "expect_status", "greater than"),
        ({"url": "https://example.com", "expect_body": ""}, "expect_body", "at least 1"),
        ({"url": "https://example.com", "interval": "0s"}, "interval", "longer than 0s"),
        ({"url": "https://example.com", "timeout": "0s"}, "timeout", "longer than 0s"),
        ({"url": "https://example.com", "request_timeout": "0s"}, "request_timeout", "0s"),
        ({"url": "https://example.com", "method": "POST"}, "method", "not a known field"),
    ],
)
def test_bad_config_is_refused_naming_the_field(
    config: dict[str, Any], field: str, message: str
) -> None:
    path = "credentials[0].actions[2].config"

    with pytest.raises(EstateInvalid) as caught:
        validate_config(HttpCheckTarget, config, path)

    [problem] = caught.value.problems
    assert problem.path == f"{path}.{field}"
    assert message in problem.message
    assert "pw-9f3e" not in str(caught.value)


def test_config_errors_do_not_quote_the_refused_url() -> None:
    with pytest.raises(ValidationError) as caught:
        HttpCheckConfig.model_validate({"url": "ftp://ops:pw-9f3e@example.com/h"})

    [error] = caught.value.errors(include_url=False)
    assert "pw-9f3e" not in error["msg"]


def test_defaults_and_declared_kind_phase_config() -> None:
    config = HttpCheckConfig.model_validate({"url": "https://app.example.com/health"})

    assert config.timeout.total_seconds() == 60
    assert config.interval.total_seconds() == 2
    assert config.request_timeout.total_seconds() == 10
    assert (config.expect_status, config.expect_body, config.headers, config.verify_tls) == (
        None,
        None,
        {},
        True,
    )
    assert (HttpCheckTarget.kind, HttpCheckTarget.phase, HttpCheckTarget.Config) == (
        "http_check",
        Phase.VERIFY,
        HttpCheckConfig,
    )
    assert TARGETS[TargetKind.HTTP_CHECK] is HttpCheckTarget
