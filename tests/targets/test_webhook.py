"""The `webhook` target POSTs signed events to a real local HTTP server, retrying what may pass."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.targets.webhook import WebhookConfig, WebhookTarget
from tests.doubles.receiver import Answer, Receiver

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def new_secret() -> str:
    return "S3CRET-" + secrets.token_hex(8)


def delivery(value: str, version_id: str = "v2") -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id="rot-9",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
        attributes={"username": "app"},
    )


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def target(
    url: str, env: dict[str, str] | None = None, **config: Any
) -> tuple[WebhookTarget, RecordingSleep]:
    sleep = RecordingSleep()
    context = PluginContext(now=lambda: NOW, sleep=sleep, env=env or {})
    return WebhookTarget(WebhookConfig.model_validate({"url": url, **config}), context), sleep


def publish(t: WebhookTarget, value: str, previous: str | None = None) -> StepResult:
    before = delivery(previous, "v1") if previous is not None else None
    return asyncio.run(t.publish(PublishRequest(delivery(value), before)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- publish ----------------------------------------------------------------------------------


def test_published_event_is_signed_so_the_receiver_can_verify_it(receiver: Receiver) -> None:
    key = "hook-key-" + secrets.token_hex(8)
    receiver.signing_key = key
    t, _ = target(receiver.url, env={"HOOK_KEY": key}, signing_secret_from="env:HOOK_KEY")
    value, old = new_secret(), new_secret()

    result = publish(t, value, previous=old)

    [request] = receiver.requests
    assert request.signature_valid is True
    assert request.path == "/hooks/keyshift"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Keyshift-Event"] == "rotation.published"
    assert request.headers["X-Keyshift-Timestamp"] == str(int(NOW.timestamp()))
    assert request.headers["X-Keyshift-Delivery"] == "rot-9.rotation.published"
    assert json.loads(request.body) == {
        "event": "rotation.published",
        "credential": "payments-api",
        "rotation_id": "rot-9",
        "version_id": "v2",
        "fingerprint": "fp-v2",
        "previous_version_id": "v1",
        "previous_fingerprint": "fp-v1",
        "attributes": {"username": "app"},
        "sent_at": NOW.isoformat(),
    }
    assert dict(result.detail) == {"status": 200, "attempts": 1, "host": "127.0.0.1"}
    everything = request.body.decode() + json.dumps(request.headers) + repr(result.detail)
    assert value not in everything
    assert old not in everything
    assert key not in everything


def test_signing_secret_can_come_from_a_file(receiver: Receiver, tmp_path: Any) -> None:
    key = "hook-key-" + secrets.token_hex(8)
    (tmp_path / "hook.key").write_text(key + "\n")
    receiver.signing_key = key
    t, _ = target(receiver.url, signing_secret_from=f"file:{tmp_path / 'hook.key'}")

    publish(t, new_secret())

    assert receiver.requests[0].signature_valid is True


def test_without_signing_secret_no_signature_header_is_sent(receiver: Receiver) -> None:
    t, _ = target(receiver.url)

    publish(t, new_secret())

    assert "X-Keyshift-Signature" not in receiver.requests[0].headers
    assert "X-Keyshift-Timestamp" in receiver.requests[0].headers


def test_value_is_in_the_body_only_with_include_value(receiver: Receiver) -> None:
    value = new_secret()
    with_value, _ = target(receiver.url, include_value=True)
    without_value, _ = target(receiver.url)

    publish(without_value, value)
    publish(with_value, value)

    first, second = (json.loads(r.body) for r in receiver.requests)
    assert "value" not in first
    assert value not in receiver.requests[0].body.decode()
    assert second["value"] == value


def test_extra_headers_are_sent(receiver: Receiver) -> None:
    t, _ = target(receiver.url, headers={"X-Team": "payments"})

    publish(t, new_secret())

    assert receiver.requests[0].headers["X-Team"] == "payments"


# --- retries ----------------------------------------------------------------------------------


def test_server_errors_are_retried_with_growing_sleeps_until_success(receiver: Receiver) -> None:
    receiver.script = [Answer(500), Answer(502), Answer(503), Answer(200)]
    key = secrets.token_hex(8)
    receiver.signing_key = key
    t, sleep = target(receiver.url, env={"K": key}, signing_secret_from="env:K", backoff="1s")

    result = publish(t, new_secret())

    assert len(receiver.requests) == 4
    assert all(r.signature_valid for r in receiver.requests)
    assert len(sleep.calls) == 3
    assert sleep.calls[0] < sleep.calls[1] < sleep.calls[2]
    for retry, seconds in enumerate(sleep.calls):
        assert 2**retry <= seconds <= 2**retry * 1.25  # base * 2**retry plus jitter
    assert dict(result.detail) == {"status": 200, "attempts": 4, "host": "127.0.0.1"}


def test_numeric_retry_after_longer_than_the_backoff_is_honoured(receiver: Receiver) -> None:
    receiver.script = [Answer(429, {"Retry-After": "7"}), Answer(503, {"Retry-After": "0"})]
    t, sleep = target(receiver.url, backoff="1s")

    result = publish(t, new_secret())

    assert sleep.calls[0] == 7.0
    assert 2 <= sleep.calls[1] <= 2.5  # a shorter Retry-After does not cut the backoff
    assert result.detail["attempts"] == 3


def test_retry_after_beyond_the_longest_wait_is_left_to_the_engine(receiver: Receiver) -> None:
    receiver.script = [Answer(503, {"Retry-After": "3600"})]
    t, sleep = target(receiver.url)

    with pytest.raises(TransientError) as caught:
        publish(t, new_secret())

    assert caught.value.retry_after == 3600.0
    assert sleep.calls == []
    assert len(receiver.requests) == 1


def test_client_error_fails_at_once_without_retry(receiver: Receiver) -> None:
    receiver.script = [Answer(400)]
    t, sleep = target(receiver.url, include_value=True)
    value = new_secret()

    with pytest.raises(PermanentError, match="HTTP 400; not retried") as caught:
        publish(t, value)

    assert len(receiver.requests) == 1
    assert sleep.calls == []
    assert value not in str(caught.value)
    assert "/hooks/keyshift" not in str(caught.value)  # the URL path may carry a token


def test_retries_exhausted_on_server_errors_raise_transient_error(receiver: Receiver) -> None:
    receiver.script = [Answer(503)] * 3
    t, sleep = target(receiver.url, retries=2)

    with pytest.raises(TransientError, match="failed after 3 attempts: HTTP 503"):
        publish(t, new_secret())

    assert len(receiver.requests) == 3
    assert len(sleep.calls) == 2


def test_connection_refused_is_retried_then_transient() -> None:
    t, sleep = target(f"http://127.0.0.1:{free_port()}/hook", retries=3, backoff="100ms")
    value = new_secret()

    with pytest.raises(TransientError, match="ConnectError") as caught:
        publish(t, value)

    assert len(sleep.calls) == 3
    assert value not in str(caught.value)


def test_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.script = [Answer(200, delay=1.0), Answer(200)]
    t, sleep = target(receiver.url, timeout="200ms")

    result = publish(t, new_secret())

    assert result.detail["attempts"] == 2
    assert len(sleep.calls) == 1


def test_zero_retries_means_one_attempt(receiver: Receiver) -> None:
    receiver.script = [Answer(500)]
    t, sleep = target(receiver.url, retries=0)

    with pytest.raises(TransientError, match="after 1 attempts"):
        publish(t, new_secret())

    assert sleep.calls == []


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_posts_rolled_back_event_naming_the_restored_version(
    receiver: Receiver,
) -> None:
    t, _ = target(receiver.url)
    new, old = new_secret(), new_secret()

    result = asyncio.run(t.rollback(RollbackRequest(delivery(new), delivery(old, "v1"))))

    [request] = receiver.requests
    body = json.loads(request.body)
    assert request.headers["X-Keyshift-Event"] == "rotation.rolled_back"
    assert body["event"] == "rotation.rolled_back"
    assert (body["version_id"], body["fingerprint"]) == ("v1", "fp-v1")
    assert (body["rolled_back_version_id"], body["rolled_back_fingerprint"]) == ("v2", "fp-v2")
    assert "value" not in body
    assert new not in request.body.decode()
    assert old not in request.body.decode()
    assert result.detail["status"] == 200


def test_rollback_with_include_value_carries_the_restored_value(receiver: Receiver) -> None:
    t, _ = target(receiver.url, include_value=True)
    new, old = new_secret(), new_secret()

    asyncio.run(t.rollback(RollbackRequest(delivery(new), delivery(old, "v1"))))

    body = json.loads(receiver.requests[0].body)
    assert body["value"] == old
    assert new not in receiver.requests[0].body.decode()


# --- preflight and config ---------------------------------------------------------------------


def test_preflight_is_ready_when_the_signing_secret_resolves_and_sends_nothing(
    receiver: Receiver,
) -> None:
    t, _ = target(receiver.url, env={"K": "key"}, signing_secret_from="env:K")

    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert result.readiness is Readiness.READY
    assert receiver.requests == []


def test_preflight_is_blocked_when_the_signing_secret_is_missing(receiver: Receiver) -> None:
    t, _ = target(receiver.url, env={}, signing_secret_from="env:HOOK_KEY")

    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert result.readiness is Readiness.BLOCKED
    assert "HOOK_KEY is not set" in result.reason
    assert receiver.requests == []


def test_publish_with_a_missing_signing_secret_is_permanent_and_sends_nothing(
    receiver: Receiver,
) -> None:
    t, _ = target(receiver.url, signing_secret_from="env:HOOK_KEY")

    with pytest.raises(PermanentError, match="HOOK_KEY is not set"):
        publish(t, new_secret())

    assert receiver.requests == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"url": "ftp://example.com/hook"}, "must start with http:// or https://"),
        ({"url": "https://user:pw@example.com/hook"}, "must not carry credentials"),
        ({"url": "https://example.com", "signing_secret_from": "hunter2"}, "env:NAME"),
        ({"url": "http://example.com/hook", "include_value": True}, "needs an https:// url"),
        ({"url": "https://example.com", "retries": 11}, "less than or equal to 10"),
        ({"url": "https://example.com", "headers": {"x-keyshift-signature": "x"}}, "set by"),
        ({"url": "https://example.com", "timeout": "0s"}, "longer than 0s"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebhookConfig.model_validate(config)


def test_defaults_and_declared_kind_phase_config() -> None:
    config = WebhookConfig.model_validate({"url": "https://hooks.example.com/k"})

    assert config.timeout.total_seconds() == 10
    assert config.backoff.total_seconds() == 1
    assert (config.retries, config.include_value, config.signing_secret_from) == (4, False, None)
    assert (WebhookTarget.kind, WebhookTarget.phase, WebhookTarget.Config) == (
        "webhook",
        Phase.NOTIFY,
        WebhookConfig,
    )
