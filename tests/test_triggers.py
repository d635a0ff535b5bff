"""How a rotation was asked for, and why: `rotate --reason`, the trigger (cli, api,
schedule, web) in `history`, the API, the audit entry and the dashboard, with how long
each rotation took."""

from __future__ import annotations

import json
from pathlib import Path

from keyshift.service import rotations
from keyshift.store.store import Store
from tests.api.conftest import Api, open_api
from tests.conftest import Cli
from tests.helpers import audit_details, table_rows, write_estate


def test_rotate_records_its_reason_and_history_shows_trigger_reason_and_duration(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    done = cli("rotate", "api-key", "--grace", "0s", "--reason", "key seen in a CI log")
    assert done.exit_code == 0, done.output

    [row] = rotations.history_rows(store, "api-key")
    assert (row.trigger, row.reason) == ("cli", "key seen in a CI log")
    assert row.duration is not None
    [requested] = audit_details(store, "rotation.requested")
    assert (requested["trigger"], requested["reason"]) == ("cli", "key seen in a CI log")

    shown = cli("history", "api-key")
    assert shown.exit_code == 0, shown.output
    [line] = [r for r in table_rows(shown.output) if r and r[0].startswith(row.id[:8])]
    assert "cli" in line
    assert any(cell.endswith("ms") for cell in line)  # how long it took
    listed = json.loads(cli("history", "api-key", "-o", "json").output)
    assert (listed[0]["trigger"], listed[0]["reason"]) == ("cli", "key seen in a CI log")


def test_a_reason_must_be_given_in_1_to_200_characters(cli: Cli, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    for bad in ("", "   ", "x" * 201):
        refused = cli("rotate", "api-key", "--reason", bad)
        assert refused.exit_code == 2, refused.output
        assert "--reason" in refused.output
    assert cli("history", "api-key", "-o", "json").output.strip() == "[]"


def test_a_rotation_started_through_the_api_is_triggered_by_api(
    store: Store, tmp_path: Path
) -> None:
    for api in open_api(store):
        _start_through_api(api, tmp_path)


def _start_through_api(api: Api, tmp_path: Path) -> None:
    estate = json.loads(write_estate(tmp_path).read_text())
    assert api.call("POST", "/v1/estate/apply", json=estate).status_code == 200
    started = api.call(
        "POST", "/v1/credentials/api-key/rotations", json={"reason": "pen test finding"}
    )
    assert started.status_code == 202, started.text
    done = api.wait_for(started.json()["rotation_id"], lambda b: b["state"] == "completed")
    assert (done["trigger"], done["reason"]) == ("api", "pen test finding")
