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
from tests.helpers import audit_details, save_estate, table_rows, write_estate
from tests.web.conftest import sign_in


def _estate(tmp: Path) -> Path:
    """Three auto-rotated credentials: two of team-a (prod, dev), one of team-b (prod)."""
    base = json.loads(write_estate(tmp, checked=True).read_text())["credentials"][0]
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


# The estate's `freeze:` block (GitOps change freezes) ------------------------------------


def _declare(path: Path, freeze: list[dict[str, object]] | None) -> Path:
    """The estate at `path` with this `freeze:` block (none: without one)."""
    estate = json.loads(path.read_text())
    estate.pop("freeze", None)
    if freeze is not None:
        estate["freeze"] = freeze
    path.write_text(json.dumps(estate))
    return path


def test_an_estate_freeze_is_started_changed_and_lifted_by_apply_and_cli_freezes_stay(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    path = _estate(tmp_path)
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert cli("freeze", "a-dev", "--reason", "cli INC-1").exit_code == 0
    [by_cli] = freezes.holding(store)

    declared = [{"environment": "prod", "reason": "Q4 change freeze"}]
    planned = cli("plan", "-f", str(_declare(path, declared)))
    assert "+ freeze" in planned.output, planned.output
    applied = cli("apply", "-f", str(path))
    assert applied.exit_code == 0, applied.output
    by_estate = next(f for f in freezes.holding(store) if f.id != by_cli.id)
    assert (by_estate.scope, by_estate.value, by_estate.source) == (
        FreezeScope.ENVIRONMENT,
        "prod",
        "estate",
    )
    assert by_cli.source == "cli"
    assert set(_next(store).values()) == {"frozen"}
    refused = cli("rotate", "b-prod")
    assert refused.exit_code == 1
    assert "Q4 change freeze" in refused.output
    listed = cli("freezes")
    assert "estate" in listed.output
    assert "Q4 change freeze" in listed.output
    [started] = [d for d in audit_details(store, "freeze.started") if d["source"] == "estate"]
    assert started["reason"] == "Q4 change freeze"

    # Applying the same file again changes nothing; an operator cannot lift it by hand.
    assert "No changes" in cli("apply", "-f", str(path)).output
    by_hand = cli("unfreeze", by_estate.id)
    assert by_hand.exit_code == 1
    assert "estate" in by_hand.output

    # A changed reason or end changes the same freeze.
    until = (utcnow() + timedelta(days=3)).replace(microsecond=0)
    changed = [{"environment": "prod", "reason": "Q4 freeze, extended", "until": until.isoformat()}]
    planned = cli("plan", "-f", str(_declare(path, changed)))
    assert "~ freeze" in planned.output, planned.output
    assert cli("apply", "-f", str(path)).exit_code == 0
    [again] = [f for f in freezes.holding(store) if f.source == "estate"]
    assert (again.id, again.reason, again.until) == (by_estate.id, "Q4 freeze, extended", until)
    assert len(audit_details(store, "freeze.changed")) == 1

    # Removed from the file, it is lifted at the next apply; the CLI's freeze stays.
    planned = cli("plan", "-f", str(_declare(path, None)))
    assert "- freeze" in planned.output, planned.output
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert [f.id for f in freezes.holding(store)] == [by_cli.id]
    [lifted] = [d for d in audit_details(store, "freeze.lifted") if d.get("source") == "estate"]
    assert lifted["value"] == "prod"
    assert cli("rotate", "b-prod").exit_code == 0


@pytest.mark.parametrize(
    ("entry", "path", "message"),
    [
        ({"credential": "no-such", "reason": "x"}, "freeze[0].credential", "no credential"),
        ({"owner": "team-a"}, "freeze[0].reason", "is required"),
        ({"owner": "team-a", "all": True, "reason": "x"}, "freeze[0]", "exactly one"),
        ({"reason": "x"}, "freeze[0]", "exactly one"),
    ],
    ids=["unknown-credential", "no-reason", "two-scopes", "no-scope"],
)
def test_a_bad_estate_freeze_is_refused_naming_its_field(
    cli: Cli, store: Store, tmp_path: Path, entry: dict[str, object], path: str, message: str
) -> None:
    refused = cli("apply", "-f", str(_declare(_estate(tmp_path), [entry])))
    assert refused.exit_code == 2, refused.output
    assert f"error: {path}" in refused.output
    assert message in refused.output
    assert freezes.holding(store) == []


def test_two_estate_freezes_of_the_same_scope_are_refused(cli: Cli, tmp_path: Path) -> None:
    twice = [{"owner": "team-a", "reason": "x"}, {"owner": "team-a", "reason": "y"}]
    refused = cli("apply", "-f", str(_declare(_estate(tmp_path), twice)))
    assert refused.exit_code == 2, refused.output
    assert "freeze[1]" in refused.output


def test_an_estate_freeze_whose_until_has_passed_is_not_started(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    past = [{"all": True, "reason": "over", "until": "2020-01-01T00:00:00Z"}]
    assert cli("apply", "-f", str(_declare(_estate(tmp_path), past))).exit_code == 0
    assert freezes.holding(store) == []


def test_status_plan_preflight_and_the_api_show_a_freeze_and_its_reason(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    path = _declare(_estate(tmp_path), [{"owner": "team-a", "reason": "migration MIG-4"}])
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert cli("freeze", "b-prod", "--reason", "incident INC-8").exit_code == 0
    # A credential without auto_rotate is frozen too: `frozen` says more than `manual`.
    estate = json.loads(path.read_text())
    estate["credentials"][0]["auto_rotate"] = False
    path.write_text(json.dumps(estate))
    assert cli("apply", "-f", str(path)).exit_code == 0

    rows = {r.credential: r for r in rotations.status_rows(store, now=utcnow())}
    assert rows["a-prod"].next_rotation == "frozen"
    assert rows["a-prod"].frozen is not None
    assert "migration MIG-4" in rows["a-prod"].frozen
    assert "incident INC-8" in (rows["b-prod"].frozen or "")
    assert rows["a-dev"].frozen is not None
    shown = cli("status")
    assert "migration MIG-4" in shown.output
    assert "incident INC-8" in shown.output
    as_json = {r["credential"]: r for r in json.loads(cli("status", "-o", "json").output)}
    assert "incident INC-8" in as_json["b-prod"]["frozen"]

    planned = cli("plan", "-f", str(path))
    assert planned.exit_code == 0
    assert "frozen" in planned.output
    assert "migration MIG-4" in planned.output
    assert "incident INC-8" in planned.output

    preflight = cli("preflight", "b-prod")
    assert preflight.exit_code == 1, preflight.output
    [row] = [r for r in table_rows(preflight.output) if r[0] == "freeze"]
    assert row[1] == "blocked"
    assert "incident INC-8" in " ".join(row[2:])
    dry = json.loads(cli("preflight", "a-dev", "-o", "json").output)
    assert dry["ready"] is False
    assert next(s for s in dry["steps"] if s["step"] == "freeze")["readiness"] == "blocked"

    for api in open_api(store):
        detail = api.call("GET", "/v1/credentials/a-prod", role="viewer").json()
        assert "migration MIG-4" in detail["status"]["frozen"]
        plan = api.call("POST", "/v1/estate/plan", json=estate, role="viewer").json()
        assert {f["credential"] for f in plan["frozen"]} == {"a-prod", "a-dev", "b-prod"}
        assert any("incident INC-8" in f["reason"] for f in plan["frozen"])
        listed = api.call("GET", "/v1/freezes", role="viewer").json()
        assert {f["source"] for f in listed} == {"estate", "cli"}
        dry_run = api.call("POST", "/v1/credentials/b-prod/dry-run", role="operator").json()
        [step] = [s for s in dry_run["steps"] if s["step"] == "freeze"]
        assert step["readiness"] == "blocked"
        assert "incident INC-8" in step["reason"]
        page = sign_in(api, "operator").post("/credentials/a-prod/dry-run")
        assert page.status_code == 200, page.text
        assert "migration MIG-4" in page.text

    assert cli("freeze", "--all", "--reason", "everything").exit_code == 0
    unfrozen = rotations.status_rows(store, now=utcnow())
    assert all("everything" in (r.frozen or "") for r in unfrozen)
