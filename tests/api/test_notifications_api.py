"""`GET /v1/notifications` and `POST /v1/notifications/{channel}/test`; a rotation the
server runs has its events delivered by the server, without a worker."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_api import _final, _problem
from tests.doubles.receiver import Receiver
from tests.helpers import write_estate

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _estate(tmp_path: Path, url: str) -> dict[str, Any]:
    app = {
        "type": "file",
        "order": 10,
        "config": {"path": str(tmp_path / "app.json"), "key": "Api:Key", "file_format": "json"},
    }
    reload_fails = {
        "type": "command",
        "order": 30,
        "on_failure": "continue",
        "config": {"argv": [sys.executable, "-c", "raise SystemExit(3)"]},
    }
    estate: dict[str, Any] = json.loads(
        write_estate(tmp_path, actions=[app, reload_fails]).read_text()
    )
    estate["notifications"] = {
        "channels": [{"name": "audit-hook", "type": "webhook", "url": url}],
        "routes": [{"channels": ["audit-hook"], "events": ["rotation.needs_attention"]}],
    }
    return estate


def test_the_server_delivers_what_its_rotation_reported(
    api: Api, tmp_path: Path, receiver: Receiver
) -> None:
    assert api.call("POST", "/v1/estate/apply", json=_estate(tmp_path, receiver.url)).is_success
    started = api.call("POST", "/v1/credentials/api-key/rotations", role="rotator", json={})
    rotation_id = started.json()["rotation_id"]
    assert api.wait_for(rotation_id, _final)["state"] == "needs_attention"

    deadline = time.monotonic() + 30
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.05)  # delivered by the background run once it ended

    [request] = receiver.requests
    event = json.loads(request.body)
    assert (event["event"], event["rotation_id"]) == ("rotation.needs_attention", rotation_id)
    assert event["failed_step"] == "reloading:30:command"
    listed = api.call("GET", "/v1/notifications", role="viewer", params={"status": "delivered"})
    assert listed.status_code == 200
    [row] = listed.json()
    assert (row["channel"], row["status"], row["attempts"]) == ("audit-hook", "delivered", 1)
    assert row["dedup_key"] == request.headers["X-Keyshift-Delivery"]


def test_a_test_message_needs_write_access_and_a_declared_channel(
    api: Api, tmp_path: Path, receiver: Receiver
) -> None:
    api.call("POST", "/v1/estate/apply", json=_estate(tmp_path, receiver.url))

    viewer = api.call("POST", "/v1/notifications/audit-hook/test", role="viewer")
    _problem(viewer, 403, "forbidden")
    assert receiver.requests == []
    sent = api.call("POST", "/v1/notifications/audit-hook/test", role="operator")
    assert sent.json() == {"channel": "audit-hook", "detail": "HTTP 200"}
    assert json.loads(receiver.requests[0].body)["event"] == "notification.test"
    _problem(api.call("POST", "/v1/notifications/nowhere/test"), 404, "not-found")
    bad = api.call("GET", "/v1/notifications", params={"status": "sent"})
    assert bad.status_code == 422
