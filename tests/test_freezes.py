"""Freezes: while one holds, no rotation of a credential it covers starts (CLI, API,
dashboard, worker); governance names the freeze; status shows `frozen`; freezes and
lifts are audited and stored; one with `until` lifts by itself."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from keyshift.domain.clock import utcnow
from keyshift.domain.freeze import FreezeScope
from keyshift.domain.states import RotationState
from keyshift.engine.journal import StepEvent
from keyshift.errors import ConfigError, Conflict, NotFound
from keyshift.service import freezes, rotations, scheduler
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from tests.api.conftest import open_api
from tests.conftest import Cli
from tests.helpers import audit_details, save_estate, write_estate
from tests.web.conftest import sign_in


def _estate(tmp: Path) -> Path:
    """Three auto-rotated credentials: two of team-a (prod, dev), one of team-b (prod)."""
    base = json.loads(write_estate(tmp).read_text())["credentials"][0]
    creds = []
    for name, owner, env in (
        ("a-prod", "team-a", "prod"),
        ("a-dev", "team-a", "dev"),
        ("b-prod", "team-b", "prod"),
    ):
        creds.append(
            {
                **base,
                "name": name,
                "owner": owner,
                "environment": env,
                "auto_rotate": True,
                "policy": {"grace_period": "0s"},
            }
        )
    return save_estate(tmp, {"credentials": creds})


def _next(store: Store) -> dict[str, str]:
    return {r.credential: r.next_rotation for r in rotations.status_rows(store, now=utcnow())}


@pytest.mark.parametrize(
    ("args", "frozen"),
    [
        (["a-prod"], {"a-prod"}),
        (["--owner", "team-a"], {"a-prod", "a-dev"}),
        (["--environment", "prod"], {"a-prod", "b-prod"}),
        (["--all"], {"a-prod", "a-dev", "b-prod"}),
    ],
    ids=["credential", "owner", "environment", "all"],
)
def test_a_freeze_stops_new_rotations_of_what_it_covers_until_lifted(
    cli: Cli, store: Store, tmp_path: Path, args: list[str], frozen: set[str]
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path))).exit_code == 0
    made = cli("freeze", *args, "--reason", "incident INC-7")
    assert made.exit_code == 0, made.output
    [holding] = freezes.holding(store)
    assert holding.id in made.output

    assert {n for n, word in _next(store).items() if word == "frozen"} == frozen
    assert (
        set(scheduler.due_for_rotation(store, now=utcnow()))
        == {"a-prod", "a-dev", "b-prod"} - frozen
    )
    for name in ("a-prod", "a-dev", "b-prod"):
        result = cli("rotate", name)
        if name in frozen:
            assert result.exit_code == 1, result.output
            assert "incident INC-7" in result.output
            assert holding.id in result.output
        else:
            assert result.exit_code == 0, result.output
    listed = cli("freezes")
    assert "incident INC-7" in listed.output

    assert cli("unfreeze", holding.id).exit_code == 0
    assert freezes.holding(store) == []
    again = cli("unfreeze", holding.id)
    assert again.exit_code == 1
    assert "lifted" in again.output
    for name in sorted(frozen):
        assert cli("rotate", name).exit_code == 0
    actions = [d["scope"] for d in audit_details(store, "freeze.started")]
    assert actions == [holding.scope.value]
    assert len(audit_details(store, "freeze.lifted")) == 1


def test_a_freeze_with_until_lifts_by_itself(cli: Cli, store: Store, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path))).exit_code == 0
    now = utcnow()
    made = freezes.freeze(
        store,
        scope=FreezeScope.ALL,
        value=None,
        reason="change freeze",
        until=now + timedelta(hours=4),
        actor="test",
        now=now,
    )
    assert freezes.holding(store, now=now + timedelta(hours=3)) == [made]
    assert freezes.holding(store, now=now + timedelta(hours=4)) == []
    with pytest.raises(Conflict):
        freezes.unfreeze(store, made.id, actor="test", now=now + timedelta(hours=5))
    assert cli("freeze", "--all", "--reason", "r", "--until", "2h").exit_code == 0
    assert cli("freeze", "--all", "--reason", "r", "--until", "soon").exit_code == 2


def test_bad_freezes_are_refused_and_change_nothing(cli: Cli, store: Store, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path))).exit_code == 0
    for args in (
        ["a-prod"],  # no reason
        ["a-prod", "--reason", "   "],
        ["--reason", "x"],  # nothing named
        ["a-prod", "--all", "--reason", "x"],  # two scopes
    ):
        result = cli("freeze", *args)
        assert result.exit_code == 2, (args, result.output)
    missing = cli("freeze", "no-such", "--reason", "x")
    assert missing.exit_code == 1
    with pytest.raises(ConfigError) as past:
        freezes.freeze(
            store,
            scope=FreezeScope.ALL,
            value=None,
            reason="x",
            until=utcnow() - timedelta(seconds=1),
            actor="t",
        )
    assert past.value.path == "until"
    with pytest.raises(NotFound):
        freezes.unfreeze(store, "0000000000000000", actor="t")
    assert freezes.holding(store) == []
    assert audit_details(store, "freeze.started") == []


def test_the_api_and_the_worker_honour_a_freeze(store: Store, tmp_path: Path) -> None:
    for api in open_api(store):
        estate = json.loads(_estate(tmp_path).read_text())
        assert api.call("POST", "/v1/estate/apply", json=estate).status_code == 200
        viewer = api.call(
            "POST", "/v1/freezes", json={"scope": "all", "reason": "x"}, role="viewer"
        )
        assert viewer.status_code == 403
        made = api.call(
            "POST",
            "/v1/freezes",
            json={"scope": "owner", "value": "team-a", "reason": "migration"},
            role="operator",
        )
        assert made.status_code == 201, made.text
        freeze_id = made.json()["id"]
        assert [f["id"] for f in api.call("GET", "/v1/freezes", role="viewer").json()] == [
            freeze_id
        ]
        banner = sign_in(api, "viewer").get("/").text
        assert f'data-freeze="{freeze_id}"' in banner
        assert "Frozen: owner team-a" in banner
        refused = api.call("POST", "/v1/credentials/a-dev/rotations", json={}, role="operator")
        assert refused.status_code == 409
        assert any("migration" in r for r in refused.json()["reasons"])
        naive = api.call(
            "POST",
            "/v1/freezes",
            json={"scope": "all", "reason": "x", "until": "2030-01-01T00:00:00"},
        )
        assert naive.status_code == 422

        counts = asyncio.run(scheduler.worker_pass(store, actor="worker"))
        assert counts["started"] == 1  # b-prod only: team-a is frozen
        assert rotations.history_rows(store, "a-prod") == []

        lifted = api.call("POST", f"/v1/freezes/{freeze_id}/lift", role="operator")
        assert lifted.status_code == 200, lifted.text
        counts = asyncio.run(scheduler.worker_pass(store, actor="worker"))
        assert counts["started"] == 2


def test_a_freeze_landing_mid_rotation_holds_it_at_the_next_state_until_unfrozen(
    store: Store, tmp_path: Path
) -> None:
    """Frozen after both files are written, before the reload: the rotation stops with
    no step half-done, nothing reloads while frozen, and it completes once lifted."""
    estate = json.loads(write_estate(tmp_path, policy={"grace_period": "0s"}).read_text())
    apply_estate(store, parse_estate(estate), actor="test")
    made: list[str] = []

    def on_event(event: StepEvent) -> None:
        if event.step == "publishing:20:file" and event.status == "succeeded" and not made:
            made.append(
                freezes.freeze(
                    store,
                    scope=FreezeScope.CREDENTIAL,
                    value="api-key",
                    reason="INC-9",
                    until=None,
                    actor="oncall",
                ).id
            )

    rotation_id, state = asyncio.run(
        rotations.rotate(store, "api-key", actor="test", on_event=on_event)
    )
    assert state == RotationState.RELOADING
    assert not (tmp_path / "reload.log").exists(), "nothing reloads while frozen"
    steps = rotations.rotation_timeline(store, rotation_id).steps
    assert all(s.status != "running" for s in steps)
    assert [s.name for s in steps][-1] == "publishing:20:file"
    # The worker's resume leaves it where it is while the freeze holds.
    [(_rid, _cred, again)] = asyncio.run(rotations.resume(store, actor="worker"))
    assert again == RotationState.RELOADING

    freezes.unfreeze(store, made[0], actor="oncall")
    [(_rid, _cred, done)] = asyncio.run(rotations.resume(store, actor="worker"))
    assert done == RotationState.COMPLETED
    assert (tmp_path / "reload.log").exists()
