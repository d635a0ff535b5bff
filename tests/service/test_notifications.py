"""Operators are told: rotation events go through the outbox to Slack, Teams and webhook
channels, routed by kind, environment and owner, retried with backoff and Retry-After,
dead-lettered after `max_attempts`, and never holding a rotation up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keyshift.domain.notifications import Notifications, channels_for
from keyshift.domain.states import RotationState
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.errors import EstateInvalid, PermanentError, TransientError
from keyshift.service import approvals, notifications, rotations, scheduler
from keyshift.service.estate import apply_estate, current_estate, load_estate
from keyshift.store.models import NotificationDeliveryRow, NotificationRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli, run_subprocess
from tests.doubles.chat import SLACK_PATH, ChatWebhook
from tests.doubles.receiver import Answer, Receiver
from tests.doubles.smtp import PASSWORD as SMTP_PASSWORD
from tests.doubles.smtp import USER as SMTP_USER
from tests.doubles.smtp import MailServer
from tests.doubles.tls import TlsFiles
from tests.helpers import value_of, versions, write_estate

CREDENTIAL = "api-key"
FAILING_RELOAD = {
    "type": "command",
    "order": 30,
    "config": {"argv": [sys.executable, "-c", "raise SystemExit('reload refused')"]},
}


def _estate(
    tmp: Path,
    channels: list[dict[str, Any]],
    *,
    routes: list[dict[str, Any]] | None = None,
    owners: dict[str, list[str]] | None = None,
    reload_on_failure: str | None = None,
    policy: dict[str, Any] | None = None,
    environment: str = "prod",
    **settings: Any,
) -> Path:
    actions = None
    if reload_on_failure is not None:
        app = {
            "type": "file",
            "order": 10,
            "config": {"path": str(tmp / "app.json"), "key": "Api:Key", "file_format": "json"},
        }
        actions = [app, {**FAILING_RELOAD, "on_failure": reload_on_failure}]
    path = write_estate(
        tmp,
        actions=actions,
        policy={"grace_period": "1h", "max_lifetime": "90d", **(policy or {})},
        checked=environment == "prod",
    )
    estate = json.loads(path.read_text())
    estate["credentials"][0]["environment"] = environment
    estate["governance"] = {"groups": {"platform-oncall": ["alice", "bob"]}}
    estate["notifications"] = {
        "channels": channels,
        "routes": [{"channels": [c["name"] for c in channels]}] if routes is None else routes,
        "owners": owners or {},
        **settings,
    }
    path.write_text(json.dumps(estate))
    return path


def _chat(hook: ChatWebhook, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    env = f"KS_TEST_{hook.kind.upper()}_URL"
    monkeypatch.setenv(env, hook.url)
    return {"name": f"ops-{hook.kind}", "type": hook.kind, "webhook_url_from": f"env:{env}"}


def _apply(store: Store, path: Path) -> None:
    apply_estate(store, load_estate(path), actor="test")


def _rotate(store: Store, clock: FakeClock) -> RotationState:
    _, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="rita", context=clock.context())
    )
    return state


def _dispatch(store: Store, clock: FakeClock) -> dict[str, int]:
    return asyncio.run(
        notifications.dispatch(store, current_estate(store), context=clock.context(os.environ))
    )


def _values(store: Store) -> list[str]:
    return [value_of(store, v) for v in versions(store, CREDENTIAL) if v.ciphertext is not None]


def _kinds(store: Store) -> list[str]:
    with store.transaction() as s:
        return list(s.execute(select(NotificationRow.kind).order_by(NotificationRow.id)).scalars())


# --- what reaches the channels --------------------------------------------------------------


def test_a_rolled_back_rotation_reaches_slack_teams_and_email_naming_the_step_and_reason(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    teams: ChatWebhook,
    mail_server: MailServer,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_SMTP_PASSWORD", SMTP_PASSWORD)
    channels = [_chat(slack, monkeypatch), _chat(teams, monkeypatch), mail_server.channel(tls)]
    _apply(store, _estate(tmp_path, channels, reload_on_failure=None))
    assert _rotate(store, clock) == RotationState.COMPLETED  # a first version, quietly
    _apply(store, _estate(tmp_path, channels, reload_on_failure="abort"))

    assert _rotate(store, clock) == RotationState.ROLLED_BACK
    counts = _dispatch(store, clock)

    assert counts["delivered"] == 6  # completed and rolled back, in three channels
    mails = [m.as_string() for m in mail_server.messages]
    for kind, texts in (("slack", slack.texts()), ("teams", teams.texts()), ("email", mails)):
        rolled_back = [t for t in texts if "rolled back" in t]
        assert len(rolled_back) == 1, kind
        text = rolled_back[0]
        assert CREDENTIAL in text
        assert "reloading:30:command" in text, "the failing step is named"
        assert "reload refused" in text, "and its reason"
        assert "team-test" in text
        assert "prod" in text
    bodies = " ".join(slack.texts() + teams.texts() + mails)
    for value in [*_values(store), SMTP_PASSWORD]:
        assert value not in bodies, "no secret value in any message"
    assert SLACK_PATH.rsplit("/", 1)[1] not in bodies


def test_a_needs_attention_rotation_reaches_every_channel(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    teams: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    channels = [_chat(slack, monkeypatch), _chat(teams, monkeypatch)]
    _apply(store, _estate(tmp_path, channels, reload_on_failure="continue"))

    assert _rotate(store, clock) == RotationState.NEEDS_ATTENTION
    _dispatch(store, clock)

    for hook in (slack, teams):
        [message] = hook.texts()
        assert "needs attention" in message
        assert "reloading:30:command" in message
        assert "reload refused" in message


def test_an_approval_request_reaches_the_approver_groups_channels_with_the_plan(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    teams: ChatWebhook,
    mail_server: MailServer,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_SMTP_PASSWORD", SMTP_PASSWORD)
    channels = [_chat(slack, monkeypatch), _chat(teams, monkeypatch), mail_server.channel(tls)]
    path = _estate(
        tmp_path,
        channels,
        routes=[{"channels": ["ops-slack"], "events": ["rotation.failed"]}],
        owners={"platform-oncall": ["ops-teams", "ops-mail"]},
        policy={"approval": {"approvers": ["group:platform-oncall"]}},
    )
    _apply(store, path)

    assert _rotate(store, clock) == RotationState.AWAITING_APPROVAL
    _dispatch(store, clock)

    assert slack.messages == [], "the route sends only failures to Slack"
    [mail] = mail_server.messages
    assert mail["Subject"] == f"[keyshift] Approval requested: rotation of {CREDENTIAL}"
    assert "keyshift approve" in mail.as_string()
    [card] = teams.texts()
    assert "Approval requested" in card
    assert "platform-oncall" in card
    assert "keyshift approve" in card, "how to decide"
    assert "restore the previous value" in card, "the rollback plan"
    with store.transaction() as s:
        plan_hash = s.execute(select(NotificationRow.payload)).scalar_one()["plan_hash"]
    assert plan_hash in card


# --- delivery ---------------------------------------------------------------------------------


def test_a_channel_that_is_down_delays_only_its_message_until_it_recovers(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    slack.fail(500, times=3)
    _apply(
        store,
        _estate(tmp_path, [_chat(slack, monkeypatch)], reload_on_failure="continue", backoff="1m"),
    )

    assert _rotate(store, clock) == RotationState.NEEDS_ATTENTION, "the rotation is not held"
    waits = []
    for _ in range(3):
        assert _dispatch(store, clock)["retrying"] == 1
        [row] = notifications.listing(store)
        assert row.status == "pending"
        assert row.last_error is not None
        assert "HTTP 500" in row.last_error
        assert row.next_attempt_at is not None
        waits.append(row.next_attempt_at - clock.now())
        assert _dispatch(store, clock)["retrying"] == 0, "nothing is due before its backoff"
        clock.advance(waits[-1])
    assert waits == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]

    assert _dispatch(store, clock)["delivered"] == 1
    [row] = notifications.listing(store)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 4, None)
    assert len(slack.messages) == 1
    assert _dispatch(store, clock)["delivered"] == 0, "delivered once"


def test_a_429_is_retried_no_sooner_than_its_retry_after(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    slack.fail(429, retry_after=600)
    _apply(
        store,
        _estate(tmp_path, [_chat(slack, monkeypatch)], reload_on_failure="continue", backoff="1m"),
    )
    _rotate(store, clock)

    _dispatch(store, clock)

    [row] = notifications.listing(store)
    assert row.next_attempt_at == clock.now() + timedelta(seconds=600)
    assert row.last_error is not None
    assert "HTTP 429" in row.last_error


def test_a_delivery_is_dead_lettered_after_max_attempts_and_listed(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    slack.fail(503, times=10)
    path = _estate(
        tmp_path, [_chat(slack, monkeypatch)], reload_on_failure="continue", max_attempts=3
    )
    _apply(store, path)
    _rotate(store, clock)

    outcomes = []
    for _ in range(3):
        counts = _dispatch(store, clock)
        outcomes.append("dead" if counts["dead"] else "retrying")
        clock.advance(timedelta(hours=2))

    assert outcomes == ["retrying", "retrying", "dead"]
    [row] = notifications.listing(store, status="dead")
    assert (row.channel, row.attempts, row.kind) == ("ops-slack", 3, "rotation.needs_attention")
    assert row.last_error is not None
    assert "HTTP 503" in row.last_error
    assert _dispatch(store, clock) == {"routed": 0, "delivered": 0, "retrying": 0, "dead": 0}
    assert slack.attempts == 3


def test_an_archived_slack_channel_is_dead_lettered_at_once(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    slack.archived = True
    _apply(store, _estate(tmp_path, [_chat(slack, monkeypatch)], reload_on_failure="continue"))
    _rotate(store, clock)

    assert _dispatch(store, clock)["dead"] == 1

    [row] = notifications.listing(store)
    assert row.status == "dead"
    assert row.attempts == 1
    assert row.last_error is not None
    assert "HTTP 410" in row.last_error
    assert "channel_is_archived" in row.last_error
    assert SLACK_PATH.rsplit("/", 1)[1] not in row.last_error, "the URL's token is not quoted"


def test_an_event_written_before_a_crash_is_delivered_once_with_one_dedup_key(
    store: Store, tmp_path: Path, receiver: Receiver
) -> None:
    """The outbox row commits with the state change: a worker that stopped after the
    change and before any delivery leaves the event pending, and every attempt of it,
    in whichever process, carries the same `X-Keyshift-Delivery`."""
    clock = FakeClock()
    receiver.script = [Answer(502)]
    hook = {"name": "audit-hook", "type": "webhook", "url": receiver.url}
    _apply(store, _estate(tmp_path, [hook], reload_on_failure="continue", backoff="1s"))
    _rotate(store, clock)  # the worker "dies" here: nothing was dispatched
    assert _kinds(store) == ["rotation.needs_attention"]

    _dispatch(store, clock)
    clock.advance(timedelta(seconds=5))
    _dispatch(store, clock)
    _dispatch(store, clock)

    assert len(receiver.requests) == 2
    keys = {r.headers["X-Keyshift-Delivery"] for r in receiver.requests}
    with store.transaction() as s:
        dedup = s.execute(select(NotificationRow.dedup_key)).scalar_one()
    assert keys == {dedup}
    body = json.loads(receiver.requests[-1].body)
    assert body["event"] == "rotation.needs_attention"
    assert body["failed_step"] == "reloading:30:command"


def test_a_delivery_claimed_by_another_worker_is_not_sent_again(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, [_chat(slack, monkeypatch)], reload_on_failure="continue"))
    _rotate(store, clock)
    notifications.route(store, current_estate(store).notifications, now=clock.now())
    with store.transaction() as s:
        row = s.execute(select(NotificationDeliveryRow)).scalar_one()
        # Another worker claimed it a moment ago and is sending it.
        row.next_attempt_at = clock.now() + notifications.CLAIM_FOR

    assert _dispatch(store, clock)["delivered"] == 0
    assert slack.attempts == 0


def test_events_no_route_chooses_are_kept_and_listed_as_sent_nowhere(
    store: Store,
    tmp_path: Path,
    slack: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    path = _estate(
        tmp_path,
        [_chat(slack, monkeypatch)],
        routes=[{"channels": ["ops-slack"], "environments": ["staging"]}],
        reload_on_failure="continue",
    )
    _apply(store, path)
    _rotate(store, clock)

    assert _dispatch(store, clock)["routed"] == 0
    [row] = notifications.listing(store)
    assert (row.kind, row.channel, row.status) == ("rotation.needs_attention", None, "no channel")
    assert slack.attempts == 0


# --- configuration and test messages ------------------------------------------------------


def test_a_test_message_reaches_the_channel_and_a_failure_is_raised(
    store: Store,
    tmp_path: Path,
    teams: ChatWebhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, [_chat(teams, monkeypatch)]))
    estate = current_estate(store)

    sent = asyncio.run(
        notifications.send_test(estate, "ops-teams", context=clock.context(os.environ))
    )
    assert sent.detail == "HTTP 202"
    assert "test message" in teams.texts()[0]

    teams.fail(500)
    with pytest.raises(TransientError, match="HTTP 500"):
        asyncio.run(notifications.send_test(estate, "ops-teams", context=clock.context(os.environ)))
    assert _kinds(store) == [], "a test message does not go through the outbox"


def test_a_bad_channel_setting_is_refused_at_apply_naming_the_field(
    store: Store, tmp_path: Path
) -> None:
    bad = [{"name": "ops", "type": "slack", "webhook_url": "https://hooks.slack.com/x"}]
    with pytest.raises(EstateInvalid) as refused:
        _apply(store, _estate(tmp_path, bad))
    paths = {p.path for p in refused.value.problems}
    assert "notifications.channels[0].webhook_url" in paths
    assert "notifications.channels[0].webhook_url_from" in paths
    assert current_estate(store).notifications.channels == [], "nothing was applied"


def test_a_route_naming_an_unknown_channel_or_event_is_refused(tmp_path: Path) -> None:
    hook = {"name": "ops", "type": "webhook", "url": "https://example.test/hook"}
    for routes, says in [
        ([{"channels": ["nowhere"]}], "no channel named nowhere"),
        ([{"channels": ["ops"], "events": ["rotation.exploded"]}], "unknown event kind"),
    ]:
        with pytest.raises(EstateInvalid, match=says):
            load_estate(_estate(tmp_path, [hook], routes=routes))


def test_routing_by_kind_environment_and_owner() -> None:
    rules = Notifications.model_validate(
        {
            "channels": [{"name": n, "type": "webhook", "url": "https://x.test"} for n in "abcd"],
            "routes": [
                {"channels": ["a"], "events": ["rotation.failed"], "environments": ["prod"]},
                {"channels": ["b"], "owners": ["team-pay"]},
            ],
            "owners": {"team-db": ["c"], "oncall": ["d"]},
        }
    )

    def to(kind: str, env: str | None, owner: str | None, approvers: list[str] = []) -> list[str]:  # noqa: B006
        return channels_for(rules, kind, environment=env, owner=owner, approvers=approvers)

    assert to("rotation.failed", "prod", "team-pay") == ["a", "b"]
    assert to("rotation.failed", "dev", "team-db") == ["c"]
    assert to("rotation.completed", "prod", None) == []
    assert to("approval.requested", "dev", None, ["group:oncall", "user:rita"]) == ["d"]


def test_the_cli_sends_a_test_message_and_lists_what_was_told(
    cli: Cli, ks_env: dict[str, str], store: Store, tmp_path: Path, slack: ChatWebhook
) -> None:
    ks_env["KS_TEST_SLACK_URL"] = slack.url
    channel = {"name": "ops-slack", "type": "slack", "webhook_url_from": "env:KS_TEST_SLACK_URL"}
    path = _estate(tmp_path, [channel], reload_on_failure="continue")
    assert cli("apply", "-f", str(path)).exit_code == 0

    sent = cli("notifications", "test", "ops-slack")
    assert sent.exit_code == 0, sent.output
    assert "Test message sent to ops-slack: HTTP 200" in sent.output
    slack.fail(500)
    refused = cli("notifications", "test", "ops-slack")
    assert refused.exit_code != 0
    assert "HTTP 500" in refused.output
    assert slack.url not in refused.output

    assert cli("rotate", CREDENTIAL).exit_code != 0  # needs attention: the reload failed
    assert cli("worker", "--once").exit_code == 0
    listed = json.loads(cli("notifications", "-o", "json").stdout)
    assert [(n["kind"], n["channel"], n["status"]) for n in listed] == [
        ("rotation.needs_attention", "ops-slack", "delivered")
    ]
    assert "delivered" in cli("notifications", "--status", "delivered").output
    bad = cli("notifications", "--status", "sent")
    assert bad.exit_code == 2
    assert "Invalid value for '--status'" in " ".join(bad.output.replace("│", " ").split())


# --- the worker's alerts are events too -----------------------------------------------------


def _scan(store: Store, clock: FakeClock) -> dict[str, int]:
    return asyncio.run(
        scheduler.worker_pass(store, actor="worker", context=clock.context(os.environ))
    )


def test_a_rotation_stuck_in_grace_past_its_end_is_told_once(
    store: Store, tmp_path: Path, slack: ChatWebhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    in_use = [sys.executable, "-c", "raise SystemExit(1)"]  # the old version is still in use
    policy = {
        "residual_use": {"command": in_use, "on_timeout": "wait", "check_every": "1m"},
        "stuck_after": "30m",
    }
    path = _estate(
        tmp_path,
        [_chat(slack, monkeypatch)],
        routes=[{"channels": ["ops-slack"], "events": ["rotation.stuck"]}],
        policy=policy,
    )
    _apply(store, path)
    assert _rotate(store, clock) == RotationState.COMPLETED
    assert _rotate(store, clock) == RotationState.GRACE

    clock.advance(timedelta(hours=1, minutes=20))  # grace ended 20 minutes ago
    _scan(store, clock)
    assert slack.messages == [], "not stuck yet: less than stuck_after past the end"
    clock.advance(timedelta(minutes=15))
    _scan(store, clock)
    _scan(store, clock)

    [message] = slack.texts()
    assert "stuck in grace" in message
    assert "past the end of grace" in message
    assert "longer than stuck_after (30m)" in message
    assert _kinds(store).count("rotation.stuck") == 1


def test_an_expiry_alert_reaches_the_owners_channel(
    store: Store, tmp_path: Path, teams: ChatWebhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    path = _estate(
        tmp_path,
        [_chat(teams, monkeypatch)],
        routes=[],
        owners={"team-test": ["ops-teams"]},
        policy={"max_lifetime": "20d", "rotate_before_expiry": "10d"},
    )
    _apply(store, path)
    assert _rotate(store, clock) == RotationState.COMPLETED  # expires in 20 days

    _scan(store, clock)

    titles = [m["attachments"][0]["content"]["body"][0]["text"] for m in teams.messages]
    assert titles == [f"Rotation of {CREDENTIAL} completed", f"{CREDENTIAL} expires in 20 days"]
    assert "rotation.completed" in _kinds(store)
    assert "credential.expiring" in _kinds(store)


# --- email --------------------------------------------------------------------------------------


def _mail_estate(
    tmp: Path, server: MailServer, tls: TlsFiles, env: pytest.MonkeyPatch, **overrides: Any
) -> Path:
    env.setenv("KS_TEST_SMTP_PASSWORD", SMTP_PASSWORD)  # read from the environment at send
    return _estate(tmp, [server.channel(tls, **overrides)], reload_on_failure="continue")


def test_a_needs_attention_rotation_is_mailed_over_starttls_with_auth(
    store: Store,
    tmp_path: Path,
    mail_server: MailServer,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    _apply(store, _mail_estate(tmp_path, mail_server, tls, monkeypatch))

    assert _rotate(store, clock) == RotationState.NEEDS_ATTENTION
    assert _dispatch(store, clock)["delivered"] == 1

    [mail] = mail_server.messages
    assert mail_server.logins == [SMTP_USER], "authenticated after STARTTLS"
    assert mail["Subject"] == f"[keyshift] Rotation of {CREDENTIAL} needs attention"
    assert mail["To"] == "oncall@example.test"
    body = mail.get_payload()
    assert isinstance(body, str)
    assert "reloading:30:command" in body
    assert "reload refused" in body
    with store.transaction() as s:
        dedup = s.execute(select(NotificationRow.dedup_key)).scalar_one()
    assert mail["X-Keyshift-Delivery"] == dedup
    assert mail["Message-ID"] == f"<{dedup}@keyshift>"
    for value in [*_values(store), SMTP_PASSWORD]:
        assert value not in mail.as_string()


def test_a_451_is_retried_and_a_wrong_password_is_refused(
    store: Store,
    tmp_path: Path,
    mail_server: MailServer,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    mail_server.fail("451 4.3.0 try again later")
    _apply(store, _mail_estate(tmp_path, mail_server, tls, monkeypatch))
    _rotate(store, clock)

    assert _dispatch(store, clock)["retrying"] == 1
    [row] = notifications.listing(store)
    assert row.last_error is not None
    assert "answered 451" in row.last_error
    clock.advance(timedelta(minutes=1))
    assert _dispatch(store, clock)["delivered"] == 1
    assert len(mail_server.messages) == 1

    monkeypatch.setenv("KS_TEST_SMTP_PASSWORD", "wrong")
    with pytest.raises(PermanentError, match="answered 535"):
        asyncio.run(
            notifications.send_test(
                current_estate(store), "ops-mail", context=clock.context(os.environ)
            )
        )


def test_a_server_certificate_the_channel_does_not_trust_is_refused(
    store: Store,
    tmp_path: Path,
    mail_server: MailServer,
    tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    _apply(store, _mail_estate(tmp_path, mail_server, tls, monkeypatch, ca_bundle=None))
    _rotate(store, clock)

    assert _dispatch(store, clock)["dead"] == 1
    [row] = notifications.listing(store)
    assert row.last_error is not None
    assert "TLS failed" in row.last_error
    assert mail_server.messages == []
    assert mail_server.logins == [], "no password is sent before the server is trusted"


def test_an_email_channel_refuses_a_password_without_starttls(tmp_path: Path) -> None:
    channel = {
        "name": "ops-mail",
        "type": "email",
        "host": "smtp.example.test",
        "from_address": "keyshift@example.test",
        "to": ["not-an-address"],
        "username": "u",
        "password_from": "env:X",
        "starttls": False,
    }
    with pytest.raises(EstateInvalid) as refused:
        load_estate(_estate(tmp_path, [channel]))
    [problem] = refused.value.problems
    assert problem.path == "notifications.channels[0].to[0]"
    assert "'not-an-address' is not an email address" in problem.message
    with pytest.raises(EstateInvalid, match="keep starttls: true"):
        load_estate(_estate(tmp_path, [{**channel, "to": ["oncall@example.test"]}]))


def test_a_rotations_events_reach_a_channel_in_order_when_the_first_is_retried(
    store: Store, tmp_path: Path, slack: ChatWebhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    path = _estate(
        tmp_path,
        [_chat(slack, monkeypatch)],
        policy={"approval": {"approvers": ["group:platform-oncall"]}},
        backoff="1m",
    )
    _apply(store, path)
    assert _rotate(store, clock) == RotationState.AWAITING_APPROVAL
    [request] = approvals.requests(store)
    _, state = asyncio.run(
        approvals.decide(store, request.id, approver="alice", approve=True, context=clock.context())
    )
    assert state == RotationState.COMPLETED
    slack.fail(500)

    assert _dispatch(store, clock) == {"routed": 3, "delivered": 0, "retrying": 1, "dead": 0}
    assert slack.messages == [], "the later events wait for the first"
    clock.advance(timedelta(minutes=1))
    assert _dispatch(store, clock)["delivered"] == 3

    titles = [m["text"] for m in slack.messages]
    assert titles == [
        f"Approval requested: rotation of {CREDENTIAL}",
        f"Approval decided: rotation of {CREDENTIAL}",
        f"Rotation of {CREDENTIAL} completed",
    ]


def test_an_old_version_revoked_while_still_in_use_is_told_once(
    store: Store, tmp_path: Path, slack: ChatWebhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    in_use = [sys.executable, "-c", "print('2 sessions'); raise SystemExit(1)"]
    policy = {"residual_use": {"command": in_use, "on_timeout": "revoke", "check_every": "1m"}}
    path = _estate(
        tmp_path,
        [_chat(slack, monkeypatch)],
        routes=[{"channels": ["ops-slack"], "events": ["rotation.revoked_in_use"]}],
        policy=policy,
    )
    _apply(store, path)
    assert _rotate(store, clock) == RotationState.COMPLETED
    assert _rotate(store, clock) == RotationState.GRACE

    clock.advance(timedelta(hours=1, minutes=1))
    _scan(store, clock)  # revokes as the policy says, then tells
    _scan(store, clock)

    [message] = slack.texts()
    assert "revoked while still in use" in message
    assert "session(s) still used it" in message
    assert _kinds(store).count("rotation.revoked_in_use") == 1
    assert versions(store, CREDENTIAL)[0].status == "revoked"


@pytest.mark.slow
def test_a_worker_killed_between_the_change_and_the_delivery_loses_no_event(
    store: Store, tmp_path: Path, receiver: Receiver, ks_env: dict[str, str]
) -> None:
    """A real kill: `keyshift worker --once` rotates a due credential, commits its state
    changes and dies before it delivers anything. The next worker delivers each event
    once, with the dedup key the first one stored."""
    path = _estate(
        tmp_path,
        [{"name": "audit-hook", "type": "webhook", "url": receiver.url}],
        reload_on_failure="continue",
    )
    estate = json.loads(path.read_text())
    estate["credentials"][0]["auto_rotate"] = True
    path.write_text(json.dumps(estate))
    assert run_subprocess(["apply", "-f", str(path)], ks_env).returncode == 0

    killed = run_subprocess(["worker", "--once"], {**ks_env, CRASH_AT: "dispatching"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert _kinds(store) == ["rotation.needs_attention"], "the event committed with the change"
    assert receiver.requests == []

    for _ in range(2):
        again = run_subprocess(["worker", "--once"], ks_env)
        assert again.returncode == 0, again.stdout + again.stderr

    [request] = receiver.requests
    with store.transaction() as s:
        dedup = s.execute(select(NotificationRow.dedup_key)).scalar_one()
    assert request.headers["X-Keyshift-Delivery"] == dedup
    assert json.loads(request.body)["event"] == "rotation.needs_attention"
