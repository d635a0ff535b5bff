"""`keyshift evidence`: one rotation's evidence bundle, and its verification against the
audit chain (issue 7: "the evidence bundle of a completed rotation verifies against the
audit chain; tampering with one audit row makes it fail")."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from keyshift.domain.clock import utcnow
from keyshift.domain.states import RotationState
from keyshift.service import evidence as evidence_service
from keyshift.store import audit
from keyshift.store.models import AuditEntry, VersionRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli
from tests.engine.test_governance import (
    START,
    TWO_OF_THREE,
    _apply,
    _decide,
    _estate,
    _pending,
    _rotate,
)
from tests.helpers import rotations_of, steps, versions, write_estate
from tests.test_no_secret_leaks import _leaked_into

CREDENTIAL = "api-key"


def _rotate_twice(cli: Cli, tmp_path: Path) -> None:
    """A first issuance, then a rotation that replaces and revokes the first version."""
    for args in (
        ("apply", "-f", str(write_estate(tmp_path))),
        ("rotate", CREDENTIAL),
        ("rotate", CREDENTIAL, "--grace", "0s"),
    ):
        result = cli(*args)
        assert result.exit_code == 0, result.output


def _export(cli: Cli, rotation_id: str, path: Path) -> dict[str, Any]:
    result = cli("evidence", rotation_id, "--output", str(path))
    assert result.exit_code == 0, result.output
    bundle: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return bundle


@pytest.fixture
def completed(cli: Cli, store: Store, tmp_path: Path) -> tuple[str, Path, dict[str, Any]]:
    """The second rotation's id, its bundle file and the bundle."""
    _rotate_twice(cli, tmp_path)
    rotation = rotations_of(store, CREDENTIAL)[-1]
    assert rotation.state == RotationState.COMPLETED.value
    path = tmp_path / "evidence.json"
    return rotation.id, path, _export(cli, rotation.id, path)


def test_evidence_of_a_completed_rotation_holds_request_steps_versions_and_chain_proof(
    store: Store, completed: tuple[str, Path, dict[str, Any]]
) -> None:
    rotation_id, _, bundle = completed
    journal = steps(store, rotation_id)
    old, new = versions(store, CREDENTIAL)
    with store.transaction() as s:
        chain = list(s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())
    mine = [e for e in chain if e.subject == f"rotation:{rotation_id}"]
    rotation = rotations_of(store, CREDENTIAL)[-1]

    assert bundle["request"]["requested_by"] == "test-operator"
    assert bundle["request"]["reason"] == "manual"
    assert bundle["approvals"] == []
    assert bundle["plan_hash"] == rotation.plan_hash
    assert bundle["executor"]["keyshift_version"] == rotation.keyshift_version
    assert bundle["rotation"]["final_state"] == "completed"
    assert [(st["name"], st["outcome"]) for st in bundle["steps"]] == [
        (st.name, st.status) for st in journal
    ]
    assert bundle["steps"][-1]["name"] == "revoking"
    assert all(st["started_at"] and st["ended_at"] for st in bundle["steps"])
    assert (bundle["versions"]["old"]["id"], bundle["versions"]["old"]["fingerprint"]) == (
        old.id,
        old.fingerprint,
    )
    assert (bundle["versions"]["new"]["id"], bundle["versions"]["new"]["fingerprint"]) == (
        new.id,
        new.fingerprint,
    )
    assert bundle["versions"]["old"]["status"] == "revoked"
    assert [r["type"] for r in bundle["impact"]] == ["random", "file", "file", "command"]
    assert [e["seq"] for e in bundle["audit"]["entries"]] == [e.seq for e in mine]
    assert [e["hash"] for e in bundle["audit"]["entries"]] == [e.hash for e in mine]
    assert {e["action"] for e in bundle["audit"]["entries"]} == {
        "rotation.requested",
        "rotation.step",
        "rotation.finished",
    }
    assert bundle["audit"]["head"] == {"seq": chain[-1].seq, "hash": chain[-1].hash}


def test_evidence_of_a_completed_rotation_verifies(
    cli: Cli, completed: tuple[str, Path, dict[str, Any]]
) -> None:
    rotation_id, path, bundle = completed

    result = cli("evidence", "verify", str(path))

    assert result.exit_code == 0, result.output
    entries = len(bundle["audit"]["entries"])
    assert f"evidence OK: {entries} audit entries of rotation {rotation_id}" in result.output


def test_evidence_still_verifies_after_later_activity_extends_the_chain(
    cli: Cli, store: Store, completed: tuple[str, Path, dict[str, Any]]
) -> None:
    _, path, bundle = completed
    again = cli("rotate", CREDENTIAL, "--grace", "0s")
    assert again.exit_code == 0, again.output

    result = cli("evidence", "verify", str(path))

    assert result.exit_code == 0, result.output
    with store.transaction() as s:
        head = s.execute(select(AuditEntry.seq).order_by(AuditEntry.seq.desc())).scalar()
    assert head is not None
    assert head > bundle["audit"]["head"]["seq"]


def test_tampering_with_one_audit_row_makes_evidence_verify_fail_and_name_it(
    cli: Cli, store: Store, completed: tuple[str, Path, dict[str, Any]]
) -> None:
    _, path, bundle = completed
    target = next(e for e in bundle["audit"]["entries"] if e["action"] == "rotation.step")
    forged = dict(target["details"], outcome="failed")
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_entries SET details = :d WHERE seq = :s"),
            {"d": json.dumps(forged, sort_keys=True, separators=(",", ":")), "s": target["seq"]},
        )

    result = cli("evidence", "verify", str(path))

    assert result.exit_code == 3, result.output
    assert result.output.strip() == (
        f"evidence does NOT verify: audit entry {target['seq']} (rotation.step): "
        "the store's row was edited (it no longer matches its hash)"
    )


def test_a_deleted_later_entry_breaks_the_store_chain_and_fails_verification(
    cli: Cli, store: Store, completed: tuple[str, Path, dict[str, Any]]
) -> None:
    """An entry outside the bundle still matters: the store's whole chain must verify."""
    _, path, bundle = completed
    first = bundle["audit"]["entries"][0]["seq"]
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE seq = :s"), {"s": first - 1})

    result = cli("evidence", "verify", str(path))

    assert result.exit_code == 3, result.output
    assert "the store's audit chain is broken at audit entry" in result.output


def _step_of(bundle: dict[str, Any], name: str) -> dict[str, Any]:
    return next(st for st in bundle["steps"] if st["name"] == name)


def _entry(bundle: dict[str, Any], action: str) -> dict[str, Any]:
    return next(e for e in bundle["audit"]["entries"] if e["action"] == action)


EDITS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "a step's outcome",
        lambda b: _step_of(b, "creating").update(outcome="failed"),
        "steps: creating attempt 1 outcome differs from audit entry",
    ),
    (
        "a step's end time",
        lambda b: _step_of(b, "revoking").update(ended_at="2020-01-01T00:00:00+00:00"),
        "steps: revoking attempt 1 ended_at differs from audit entry",
    ),
    (
        "a step left out",
        lambda b: b["steps"].pop(),
        "steps: revoking attempt 1 is audited but left out",
    ),
    (
        "an entry's details",
        lambda b: _entry(b, "rotation.requested")["details"].update(reason="audit"),
        "(rotation.requested) in the bundle does not match its hash (edited)",
    ),
    (
        "the request's requester",
        lambda b: b["request"].update(requested_by="someone-else"),
        "request.requested_by: differs from audit entry",
    ),
    (
        "the plan",
        lambda b: b["plan"].update(grace_period_s=3600.0),
        "plan: does not hash to plan_hash (edited)",
    ),
    (
        "the new version's fingerprint",
        lambda b: b["versions"]["new"].update(fingerprint="hmac-sha256:" + "0" * 32),
        "versions.new: differs from audit entry",
    ),
    (
        "the final state",
        lambda b: b["rotation"].update(final_state="rolled_back"),
        "rotation.final_state: differs from audit entry",
    ),
    (
        "the blast radius",
        lambda b: b["impact"][1]["where"].update(path="/elsewhere"),
        "impact: differs from the blast radius of the plan",
    ),
    (
        "an approval added",
        lambda b: b["approvals"].append(_entry(b, "rotation.finished")),
        "approvals: differ from the approval entries of the audit trail",
    ),
    (
        "an entry re-hashed after an edit",
        lambda b: _rehash(_entry(b, "rotation.finished"), actor="someone-else"),
        "(rotation.finished) differs from the store's entry",
    ),
]


def _rehash(entry: dict[str, Any], **changes: Any) -> None:
    """Edit an entry and give it a matching hash: only the store can tell."""
    entry.update(changes)
    entry["hash"] = audit.entry_hash(
        {**{k: entry[k] for k in audit.HASHED}, "details": audit.canonical(entry["details"])}
    )


@pytest.mark.parametrize(
    ("edit", "expected"), [(e, x) for _, e, x in EDITS], ids=[n for n, _, _ in EDITS]
)
def test_a_bundle_edited_by_hand_fails_and_names_what_differs(
    cli: Cli,
    completed: tuple[str, Path, dict[str, Any]],
    tmp_path: Path,
    edit: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    _, _, bundle = completed
    edit(bundle)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(bundle), encoding="utf-8")

    result = cli("evidence", "verify", str(edited))

    assert result.exit_code == 3, result.output
    assert result.output.startswith("evidence does NOT verify: ")
    assert expected in result.output


def test_evidence_of_a_rolled_back_rotation_verifies_and_holds_no_secret_value(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    """Rollback steps, errors scrubbed of the value a consumer echoed, and both versions'
    values: none of it reaches the bundle, the CLI output or the verification."""
    _rotate_twice(cli, tmp_path)
    script = tmp_path / "leaking_consumer.py"
    script.write_text(
        "import sys\nsys.stderr.write('got ' + sys.stdin.read())\nsys.exit(1)\n", encoding="utf-8"
    )
    leaking = {
        "type": "command",
        "order": 40,
        "on_failure": "abort",
        "config": {"argv": [sys.executable, str(script)], "value_via": "stdin"},
    }
    estate = write_estate(tmp_path, actions=None)
    data = json.loads(estate.read_text(encoding="utf-8"))
    data["credentials"][0]["actions"].append(leaking)
    estate.write_text(json.dumps(data), encoding="utf-8")
    assert cli("apply", "-f", str(estate)).exit_code == 0
    assert cli("rotate", CREDENTIAL, "--grace", "0s").exit_code == 1
    rotation = rotations_of(store, CREDENTIAL)[-1]
    assert rotation.state == RotationState.ROLLED_BACK.value
    path = tmp_path / "rolled-back.json"

    exported = cli("evidence", rotation.id, "--output", str(path))
    printed = cli("evidence", rotation.id)
    verified = cli("evidence", "verify", str(path))

    assert exported.exit_code == 0, exported.output
    assert verified.exit_code == 0, verified.output
    bundle = json.loads(path.read_text(encoding="utf-8"))
    assert bundle["rotation"]["final_state"] == "rolled_back"
    assert any(st["name"].startswith("rollback:") for st in bundle["steps"])
    assert bundle["versions"]["new"]["status"] == "disabled"
    with store.transaction() as s:
        values = {
            store.reveal(row).reveal()
            for row in s.execute(
                select(VersionRow).where(VersionRow.ciphertext.is_not(None))
            ).scalars()
        }
    assert len(values) == 2  # the current version and the disabled new one; v1 is erased
    sources = {
        "bundle file": path.read_text(encoding="utf-8"),
        "evidence stdout": printed.stdout,
        "evidence verify output": verified.output,
        "evidence export output": exported.output,
    }
    assert _leaked_into(sources, values) == []


def test_evidence_of_an_unknown_rotation_fails_with_one_line(cli: Cli, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0

    result = cli("evidence", "0000dead")

    assert result.exit_code == 1
    assert result.output.strip() == "error: no rotation 0000dead"


def test_verify_refuses_a_file_that_is_not_an_evidence_bundle(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"format": "something-else"}', encoding="utf-8")

    result = cli("evidence", "verify", str(path))

    assert result.exit_code == 3
    assert "not a keyshift evidence bundle" in result.output


def test_export_and_verify_through_the_service_agree_on_a_prefix_id(
    store: Store, completed: tuple[str, Path, dict[str, Any]]
) -> None:
    rotation_id, _, _ = completed

    bundle = evidence_service.export(store, rotation_id[:8], actor="auditor", now=utcnow())
    result = evidence_service.verify(store, json.loads(evidence_service.dumps(bundle)))

    assert bundle["rotation"]["id"] == rotation_id
    assert bundle["exported_by"] == "auditor"
    assert result.ok, result.problem
    assert result.entries == len(bundle["audit"]["entries"]) > 5


def test_evidence_of_a_supervised_rotation_holds_its_approvals_and_the_plan_that_ran(
    store: Store, tmp_path: Path
) -> None:
    """The plan changed after one approval: the bundle names the superseding plan, holds
    every approval entry, and verifies."""
    clock = FakeClock(START)
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE))
    rotation_id, _ = _rotate(store, clock)
    first = _pending(store)
    _decide(store, clock, first.id, "alice")
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE, extra_action=True))
    _decide(store, clock, first.id, "bob")
    second = _pending(store)
    _decide(store, clock, second.id, "alice")
    assert _decide(store, clock, second.id, "carol") == RotationState.COMPLETED

    bundle = evidence_service.export(store, rotation_id, actor="auditor", now=utcnow())
    result = evidence_service.verify(store, bundle)

    assert result.ok, result.problem
    assert bundle["plan_hash"] == second.plan_hash != first.plan_hash
    assert [(e["action"], e["actor"]) for e in bundle["approvals"]] == [
        ("approval.requested", "rita"),
        ("approval.approved", "alice"),
        ("approval.approved", "bob"),
        ("approval.superseded", "bob"),  # entries of the engine name who ran it
        ("approval.approved", "alice"),
        ("approval.approved", "carol"),
        ("approval.closed", "carol"),
    ]
    assert str(tmp_path / "extra.json") in [r["where"].get("path") for r in bundle["impact"]]
