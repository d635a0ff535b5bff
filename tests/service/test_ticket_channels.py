"""Ticket channels: a rotation on the exception path opens exactly one Jira issue (or
ServiceNow incident), later events of the same rotation are added to it, the ticket is
named by `show` and the evidence bundle, and refusals and throttling are handled as the
outbox handles every channel's. Driven through real HTTP doubles of Jira and ServiceNow
(`tests/doubles/jira.py`, `servicenow.py`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from keyshift.domain.states import RotationState
from keyshift.errors import EstateInvalid, PermanentError
from keyshift.service import evidence, notifications, rotations
from keyshift.service.estate import current_estate, load_estate
from keyshift.store.models import NotificationDeliveryRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli
from tests.doubles import jira as jira_double
from tests.doubles import servicenow as snow_double
from tests.doubles.jira import JiraDouble
from tests.doubles.servicenow import ServiceNowDouble
from tests.service.test_notifications import (
    CREDENTIAL,
    _apply,
    _dispatch,
    _estate,
    _kinds,
    _rotate,
    _scan,
    _values,
)
from tests.test_client import Server, _remote, server  # noqa: F401 (the server fixture)


@dataclass
class Desk:
    """One ticketing double seen the same way: its channel, its tickets and what was
    added to them, and the secret its channel authenticates with."""

    kind: str
    double: JiraDouble | ServiceNowDouble
    secret_env: str
    secret: str

    @property
    def name(self) -> str:
        return "jira-ops" if self.kind == "jira" else "snow-ops"

    def channel(self, **overrides: Any) -> dict[str, Any]:
        return self.double.channel(**overrides)

    def tickets(self) -> list[str]:
        """The references keyshift keeps: issue keys, or incidents' sys_ids."""
        if isinstance(self.double, JiraDouble):
            return list(self.double.issues)
        return list(self.double.incidents)

    def titles(self) -> list[str]:
        if isinstance(self.double, JiraDouble):
            return [i.fields["summary"] for i in self.double.issues.values()]
        return [i.fields["short_description"] for i in self.double.incidents.values()]

    def description(self, ticket: str) -> str:
        if isinstance(self.double, JiraDouble):
            return str(self.double.issues[ticket].fields["description"])
        return str(self.double.incidents[ticket].fields["description"])

    def additions(self, ticket: str) -> list[str]:
        """Comments (Jira) or work notes (ServiceNow), in order."""
        if isinstance(self.double, JiraDouble):
            return self.double.issues[ticket].comments
        return self.double.incidents[ticket].work_notes

    def forget(self) -> None:
        """The tickets are deleted at the service."""
        if isinstance(self.double, JiraDouble):
            self.double.issues.clear()
        else:
            self.double.incidents.clear()


@pytest.fixture(params=["jira", "servicenow"])
def desk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Desk:
    if request.param == "jira":
        double = request.getfixturevalue("jira")
        found = Desk("jira", double, "KS_TEST_JIRA_TOKEN", jira_double.API_TOKEN)
    else:
        double = request.getfixturevalue("servicenow")
        found = Desk("servicenow", double, "KS_TEST_SNOW_PASSWORD", snow_double.PASSWORD)
    monkeypatch.setenv(found.secret_env, found.secret)
    return found


def _posts(desk: Desk) -> list[str]:
    """The requests that created or changed a ticket (method and path)."""
    return [f"{r.method} {r.path}" for r in desk.double.requests if r.method in ("POST", "PATCH")]


def _stuck_in_grace(store: Store, tmp: Path, desk: Desk, clock: FakeClock) -> Path:
    """A first version (completed: no ticket), then a rotation stuck in grace because the
    old version is still in use while the returned file exists (the ticket is opened)."""
    in_use = tmp / "old-version-in-use"
    check = f"import os, sys; sys.exit(1 if os.path.exists({str(in_use)!r}) else 0)"
    policy = {
        "residual_use": {"command": [sys.executable, "-c", check], "on_timeout": "wait"},
        "stuck_after": "30m",
    }
    _apply(store, _estate(tmp, [desk.channel()], policy=policy))
    assert _rotate(store, clock) == RotationState.COMPLETED
    in_use.touch()
    assert _rotate(store, clock) == RotationState.GRACE
    clock.advance(timedelta(hours=1, minutes=35))  # grace ended 35 minutes ago
    _scan(store, clock)
    assert "rotation.stuck" in _kinds(store)
    return in_use


def _no_longer_in_use(store: Store, clock: FakeClock, in_use: Path) -> None:
    """The old version is unused from now on: after `quiet_for` the rotation completes."""
    in_use.unlink()
    _scan(store, clock)
    clock.advance(timedelta(minutes=3))
    _scan(store, clock)


def _last_rotation(store: Store) -> str:
    return rotations.history_rows(store, CREDENTIAL)[-1].id


def _assert_no_secret(store: Store, desk: Desk, *texts: str) -> None:
    """No credential value and no channel secret in a request body or URL, in the
    listing, or in `texts` (errors, outputs)."""
    bodies = " ".join(f"{r.path}?{r.query} {r.body}" for r in desk.double.requests)
    listed = json.dumps([d.__dict__ for d in notifications.listing(store)], default=str)
    for value in [*_values(store), desk.secret]:
        for where, text in (("a request", bodies), ("the listing", listed), ("output", texts)):
            assert value not in str(text), f"a secret in {where}"


# --- opening one ticket and adding to it ----------------------------------------------------


def test_a_rolled_back_rotation_opens_exactly_one_ticket_naming_the_step_and_reason(
    store: Store, tmp_path: Path, desk: Desk
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, [desk.channel()]))
    assert _rotate(store, clock) == RotationState.COMPLETED  # a first version: no ticket
    _apply(store, _estate(tmp_path, [desk.channel()], reload_on_failure="abort"))

    assert _rotate(store, clock) == RotationState.ROLLED_BACK
    assert _dispatch(store, clock)["delivered"] == 2
    assert _dispatch(store, clock)["delivered"] == 0, "each event is delivered once"

    [ticket] = desk.tickets()
    assert _posts(desk) == [f"POST {_create_path(desk)}"], "one request, the one that opened it"
    assert desk.titles() == [f"Rotation of {CREDENTIAL} rolled back"]
    text = desk.description(ticket)
    assert "reloading:30:command" in text, "the failing step is named"
    assert "reload refused" in text, "and its reason"
    assert "team-test" in text
    assert _last_rotation(store) in text
    assert desk.additions(ticket) == []
    completed, rolled_back = sorted(
        notifications.listing(store), key=lambda d: d.event_id
    )  # both delivered: the first sent nothing
    assert (completed.kind, completed.status) == ("rotation.completed", "delivered")
    assert (rolled_back.kind, rolled_back.status) == ("rotation.rolled_back", "delivered")
    _assert_no_secret(store, desk)


def test_a_later_event_of_the_rotation_is_added_to_its_ticket_and_another_rotation_opens_one(
    store: Store, tmp_path: Path, desk: Desk
) -> None:
    clock = FakeClock()
    in_use = _stuck_in_grace(store, tmp_path, desk, clock)
    [ticket] = desk.tickets()
    assert desk.titles() == [f"Rotation of {CREDENTIAL} is stuck in grace"]
    stuck = _last_rotation(store)

    _no_longer_in_use(store, clock, in_use)

    assert rotations.rotation_timeline(store, stuck).rotation.state == "completed"
    assert desk.tickets() == [ticket], "no second ticket for the same rotation"
    [added] = desk.additions(ticket)
    assert added.startswith(f"Rotation of {CREDENTIAL} completed")
    assert stuck in added
    _apply(store, _estate(tmp_path, [desk.channel()], reload_on_failure="abort"))
    assert _rotate(store, clock) == RotationState.ROLLED_BACK
    _dispatch(store, clock)
    assert len(desk.tickets()) == 2, "another failed rotation, another ticket"
    assert desk.additions(desk.tickets()[1]) == []
    _assert_no_secret(store, desk)


def test_a_completed_rotation_opens_nothing(store: Store, tmp_path: Path, desk: Desk) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, [desk.channel()]))

    assert _rotate(store, clock) == RotationState.COMPLETED
    assert _dispatch(store, clock)["delivered"] == 1

    assert desk.double.requests == [], "nothing was sent"
    assert desk.tickets() == []
    [row] = notifications.listing(store)
    assert (row.kind, row.status, row.last_error) == ("rotation.completed", "delivered", None)
    assert rotations.rotation_timeline(store, _last_rotation(store)).tickets == []


def test_open_on_chooses_the_events_that_open_a_ticket(
    store: Store, tmp_path: Path, desk: Desk
) -> None:
    clock = FakeClock()
    channel = desk.channel(open_on=["rotation.completed"])
    _apply(store, _estate(tmp_path, [channel]))

    assert _rotate(store, clock) == RotationState.COMPLETED
    _dispatch(store, clock)

    assert desk.titles() == [f"Rotation of {CREDENTIAL} completed"]


# --- show and the evidence bundle ---------------------------------------------------------


def test_show_and_the_evidence_bundle_name_the_ticket(
    cli: Cli, ks_env: dict[str, str], store: Store, tmp_path: Path, desk: Desk
) -> None:
    ks_env[desk.secret_env] = desk.secret
    path = _estate(tmp_path, [desk.channel()], reload_on_failure="continue")
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code != 0  # needs attention: the reload failed
    assert cli("worker", "--once").exit_code == 0
    [ticket] = desk.tickets()
    rotation_id = _last_rotation(store)

    shown = cli("show", rotation_id)
    assert shown.exit_code == 0, shown.output
    assert f"Tickets: {desk.name} {ticket}" in shown.output
    doc = json.loads(cli("show", rotation_id, "-o", "json").stdout)
    assert doc["tickets"] == [{"channel": desk.name, "reference": ticket}]
    bundle = evidence.export(store, rotation_id, actor="auditor", now=FakeClock().now())
    assert bundle["tickets"] == [{"channel": desk.name, "reference": ticket}]
    assert evidence.verify(store, bundle).ok, "the tickets do not break the bundle's proof"
    _assert_no_secret(store, desk, shown.output, json.dumps(doc), json.dumps(bundle))


def test_show_at_the_server_prints_the_ticket_as_embedded_show_does(
    cli: Cli,
    ks_env: dict[str, str],
    store: Store,
    tmp_path: Path,
    desk: Desk,
    server: Server,  # noqa: F811 (the fixture imported from tests.test_client)
) -> None:
    ks_env[desk.secret_env] = desk.secret
    path = _estate(tmp_path, [desk.channel()], reload_on_failure="continue")
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code != 0
    assert cli("worker", "--once").exit_code == 0
    [ticket] = desk.tickets()
    rotation_id = _last_rotation(store)
    remote = _remote(ks_env, token=server.token)

    for args in (("show", rotation_id), ("show", rotation_id, "-o", "json")):
        at_server = remote(*args, "--server", server.url)
        embedded = cli(*args)
        assert (at_server.exit_code, at_server.output) == (embedded.exit_code, embedded.output)
        assert ticket in at_server.output
    answer = httpx.get(
        f"{server.url}/v1/rotations/{rotation_id}",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert answer.json()["tickets"] == [{"channel": desk.name, "reference": ticket}]


# --- refusals and throttling ----------------------------------------------------------------


def test_refused_credentials_are_dead_lettered_at_once_without_quoting_them(
    store: Store, tmp_path: Path, desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    wrong = "wrong-secret-value-4711"
    monkeypatch.setenv(desk.secret_env, wrong)
    _apply(store, _estate(tmp_path, [desk.channel()], reload_on_failure="continue"))
    _rotate(store, clock)

    assert _dispatch(store, clock)["dead"] == 1

    [row] = notifications.listing(store)
    assert (row.status, row.attempts) == ("dead", 1)
    assert row.last_error is not None
    assert "HTTP 401: credentials refused" in row.last_error
    assert wrong not in row.last_error
    assert desk.double.url not in row.last_error
    assert desk.tickets() == []
    _assert_no_secret(store, desk, row.last_error)


def test_a_429_is_retried_no_sooner_than_its_retry_after_and_then_opens_one_ticket(
    store: Store, tmp_path: Path, desk: Desk
) -> None:
    clock = FakeClock()
    desk.double.fail(429, retry_after=600)
    path = _estate(tmp_path, [desk.channel()], reload_on_failure="continue", backoff="1m")
    _apply(store, path)
    _rotate(store, clock)

    assert _dispatch(store, clock)["retrying"] == 1
    [row] = notifications.listing(store)
    assert row.next_attempt_at == clock.now() + timedelta(seconds=600)
    assert row.last_error is not None
    assert "HTTP 429" in row.last_error
    clock.advance(timedelta(seconds=599))
    assert _dispatch(store, clock)["delivered"] == 0, "not before Retry-After"
    assert len(desk.double.requests) == 1
    clock.advance(timedelta(seconds=1))

    assert _dispatch(store, clock)["delivered"] == 1
    assert len(desk.tickets()) == 1
    # Two attempts; ServiceNow looks for the rotation's incident before it opens one.
    assert len(desk.double.requests) == (3 if desk.kind == "servicenow" else 2)


def test_an_outage_is_retried_with_backoff(store: Store, tmp_path: Path, desk: Desk) -> None:
    clock = FakeClock()
    desk.double.fail(503, times=2)
    path = _estate(tmp_path, [desk.channel()], reload_on_failure="continue", backoff="1m")
    _apply(store, path)
    _rotate(store, clock)

    assert _dispatch(store, clock)["retrying"] == 1
    clock.advance(timedelta(minutes=1))
    assert _dispatch(store, clock)["retrying"] == 1
    clock.advance(timedelta(minutes=2))
    assert _dispatch(store, clock)["delivered"] == 1

    assert len(desk.tickets()) == 1
    [row] = notifications.listing(store)
    assert (row.status, row.attempts) == ("delivered", 3)


def test_an_addition_to_a_ticket_that_is_gone_is_dead_lettered_naming_it(
    store: Store, tmp_path: Path, desk: Desk
) -> None:
    clock = FakeClock()
    in_use = _stuck_in_grace(store, tmp_path, desk, clock)
    [ticket] = desk.tickets()
    desk.forget()

    _no_longer_in_use(store, clock, in_use)  # the rotation completes

    [dead] = notifications.listing(store, status="dead")
    assert dead.last_error is not None
    assert f"HTTP 404: {'issue' if desk.kind == 'jira' else 'incident'} {ticket} not found" in (
        dead.last_error
    )
    assert desk.tickets() == [], "not opened again"


def test_jira_refuses_a_bad_field_and_the_error_names_it_not_jiras_message(
    store: Store, tmp_path: Path, jira: JiraDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_JIRA_TOKEN", jira_double.API_TOKEN)
    path = _estate(tmp_path, [jira.channel(issue_type="Epic")], reload_on_failure="continue")
    _apply(store, path)
    _rotate(store, clock)

    assert _dispatch(store, clock)["dead"] == 1

    [row] = notifications.listing(store)
    assert row.last_error == "Jira answered HTTP 400: refused field(s) issuetype; not retried"
    assert jira.issues == {}


def test_servicenow_refuses_a_bad_table_and_the_error_quotes_its_message(
    store: Store, tmp_path: Path, servicenow: ServiceNowDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_SNOW_PASSWORD", snow_double.PASSWORD)
    channel = servicenow.channel(table="incidnet")
    _apply(store, _estate(tmp_path, [channel], reload_on_failure="continue"))
    _rotate(store, clock)

    assert _dispatch(store, clock)["dead"] == 1

    [row] = notifications.listing(store)
    assert row.last_error == "ServiceNow answered HTTP 400: Invalid table incidnet; not retried"


# --- what each service receives ------------------------------------------------------------


def test_a_jira_issue_has_the_project_type_labels_and_a_one_line_summary(
    store: Store, tmp_path: Path, jira: JiraDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_JIRA_PAT", jira_double.PAT)
    cloud = jira.channel(issue_type="Bug", labels=["keyshift", "prod-secrets"])
    channel = {k: v for k, v in cloud.items() if k not in ("email", "api_token_from")}
    channel["token_from"] = "env:KS_TEST_JIRA_PAT"  # Data Center: a bearer token
    _apply(store, _estate(tmp_path, [channel], reload_on_failure="continue"))
    _rotate(store, clock)

    assert _dispatch(store, clock)["delivered"] == 1

    [issue] = jira.issues.values()
    assert issue.key == "KS-1"
    assert issue.fields["project"] == {"key": "KS"}
    assert issue.fields["issuetype"] == {"name": "Bug"}
    assert issue.fields["labels"] == ["keyshift", "prod-secrets"]
    assert issue.fields["summary"] == f"Rotation of {CREDENTIAL} needs attention"
    [request] = jira.requests
    assert request.headers["authorization"] == f"Bearer {jira_double.PAT}"
    assert jira_double.PAT not in request.body


def test_a_servicenow_incident_has_urgency_impact_group_and_the_rotation_as_correlation(
    store: Store, tmp_path: Path, servicenow: ServiceNowDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_SNOW_TOKEN", snow_double.TOKEN)
    basic = servicenow.channel(urgency=1, impact=3, caller_id="keyshift.bot")
    channel = {k: v for k, v in basic.items() if k not in ("username", "password_from")}
    channel["token_from"] = "env:KS_TEST_SNOW_TOKEN"  # OAuth: a bearer token
    _apply(store, _estate(tmp_path, [channel], reload_on_failure="continue"))
    _rotate(store, clock)

    assert _dispatch(store, clock)["delivered"] == 1

    [incident] = servicenow.incidents.values()
    assert incident.number == "INC0010001"
    fields = incident.fields
    assert (fields["urgency"], fields["impact"]) == ("1", "3")
    assert fields["assignment_group"] == "Platform Operations"
    assert fields["caller_id"] == "keyshift.bot"
    assert fields["correlation_id"] == _last_rotation(store)
    assert len(fields["short_description"]) <= 160
    search, request = servicenow.requests  # it looks for the rotation's incident first
    assert search.method == "GET"
    assert f"correlation_id%3D{_last_rotation(store)}" in search.query
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {snow_double.TOKEN}"
    assert request.headers["accept"] == "application/json"
    assert snow_double.TOKEN not in request.body


def test_a_test_message_checks_the_credentials_and_opens_no_ticket(
    store: Store, tmp_path: Path, desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    _apply(store, _estate(tmp_path, [desk.channel()]))
    estate = current_estate(store)

    sent = asyncio.run(
        notifications.send_test(estate, desk.name, context=clock.context(os.environ))
    )
    assert "credentials accepted" in sent.detail
    assert sent.reference is None
    assert desk.tickets() == []
    assert [r.method for r in desk.double.requests] == ["GET"]

    monkeypatch.setenv(desk.secret_env, "wrong")
    with pytest.raises(PermanentError, match="HTTP 401: credentials refused"):
        asyncio.run(notifications.send_test(estate, desk.name, context=clock.context(os.environ)))


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "overrides", "says"),
    [
        ("jira", {"token_from": "env:PAT"}, "either email + api_token_from"),
        ("jira", {"api_token_from": None}, "set email and api_token_from together"),
        ("jira", {"url": "http://jira.example.test"}, "https://"),
        ("jira", {"project": "ks"}, "project: must be a project key"),
        ("jira", {"labels": ["two words"]}, "labels hold no spaces"),
        ("jira", {"open_on": ["rotation.exploded"]}, "unknown event kind rotation.exploded"),
        ("servicenow", {"token_from": "env:TOKEN"}, "either username + password_from"),
        ("servicenow", {"instance_url": "http://snow.example.test"}, "https://"),
        ("servicenow", {"urgency": 4}, "less than or equal to 3"),
        ("servicenow", {"table": "../sys_user"}, "table: must be a table name"),
    ],
)
def test_a_bad_ticket_channel_setting_is_refused_naming_it(
    tmp_path: Path, kind: str, overrides: dict[str, Any], says: str
) -> None:
    base: dict[str, Any] = (
        {
            "name": "t",
            "type": "jira",
            "url": "https://example.atlassian.net",
            "project": "OPS",
            "email": "bot@example.test",
            "api_token_from": "env:JIRA_TOKEN",
        }
        if kind == "jira"
        else {
            "name": "t",
            "type": "servicenow",
            "instance_url": "https://example.service-now.com",
            "username": "keyshift",
            "password_from": "env:SNOW_PASSWORD",
        }
    )
    channel = {k: v for k, v in {**base, **overrides}.items() if v is not None}
    with pytest.raises(EstateInvalid, match=re.escape(says)):
        load_estate(_estate(tmp_path, [channel]))
    load_estate(_estate(tmp_path, [base]))  # and the setting alone was the problem


def _create_path(desk: Desk) -> str:
    return "/rest/api/2/issue" if desk.kind == "jira" else "/api/now/table/incident"


def test_a_lost_answer_does_not_open_a_second_incident(
    store: Store, tmp_path: Path, servicenow: ServiceNowDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance opened the incident but the gateway answered 504: the retry finds it
    by the rotation's correlation_id and opens none."""
    clock = FakeClock()
    monkeypatch.setenv("KS_TEST_SNOW_PASSWORD", snow_double.PASSWORD)
    servicenow.lose_next_answer = True
    path = _estate(tmp_path, [servicenow.channel()], reload_on_failure="continue", backoff="1m")
    _apply(store, path)
    _rotate(store, clock)

    assert _dispatch(store, clock)["retrying"] == 1
    assert len(servicenow.incidents) == 1, "opened, though the answer was lost"
    clock.advance(timedelta(minutes=1))
    assert _dispatch(store, clock)["delivered"] == 1

    [incident] = servicenow.incidents.values()
    assert len(servicenow.incidents) == 1
    with store.transaction() as s:
        [reference] = s.execute(select(NotificationDeliveryRow.reference)).scalars()
    assert reference == incident.sys_id
