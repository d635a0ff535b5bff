"""The audit chain: `audit verify` catches every edit, deletion and reordering made
directly in the database, and `audit export` carries the evidence of every rotation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from keyshift import __version__
from keyshift.store.audit import HASHED, canonical, entry_hash
from keyshift.store.models import AuditEntry
from keyshift.store.store import Store
from tests.helpers import rotations_of, steps, write_estate

CREDENTIAL = "api-key"
ROTATIONS = 3
EXPORT_FIELDS = {"seq", "ts", "actor", "action", "subject", "details", "prev_hash", "hash"}


def _entry_count(store: Store) -> int:
    with store.transaction() as s:
        return int(s.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


@pytest.fixture
def audited(store: Store, cli: Any, tmp_path: Path) -> int:
    """An estate applied and rotated three times (first issuance, then two with
    revocation); returns the number of audit entries written."""
    estate = write_estate(tmp_path)
    assert cli("apply", "-f", str(estate)).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    for _ in range(ROTATIONS - 1):
        assert cli("rotate", CREDENTIAL, "--grace", "0s").exit_code == 0
    count = _entry_count(store)
    assert count > 20  # the tamper cases below address entries by number
    return count


def test_audit_verify_passes_and_counts_every_entry_of_an_untouched_chain(
    cli: Any, audited: int
) -> None:
    result = cli("audit", "verify")

    assert result.exit_code == 0, result.output
    assert f"audit chain OK: {audited} entries verified" in result.stdout


# --- tampering ---------------------------------------------------------------------------


def _row(s: Session, seq: int) -> AuditEntry:
    return s.execute(select(AuditEntry).where(AuditEntry.seq == seq)).scalar_one()


def _edit_details(s: Session, seq: int) -> None:
    details = json.loads(_row(s, seq).details)
    details["outcome"] = "tampered"
    s.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(details=canonical(details)))


def edit_details(s: Session, count: int) -> int:
    _edit_details(s, 5)
    return 5


def edit_actor(s: Session, count: int) -> int:
    s.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(actor="someone-else"))
    return 3


def backdate_timestamp(s: Session, count: int) -> int:
    s.execute(
        update(AuditEntry).where(AuditEntry.seq == 8).values(ts="2020-01-01T00:00:00.000000+00:00")
    )
    return 8


def delete_middle_entry(s: Session, count: int) -> int:
    middle = count // 2
    s.execute(delete(AuditEntry).where(AuditEntry.seq == middle))
    return middle


def delete_last_entry(s: Session, count: int) -> int:
    s.execute(delete(AuditEntry).where(AuditEntry.seq == count))
    return count


def swap_two_entries(s: Session, count: int) -> int:
    columns = ("ts", "actor", "action", "subject", "details", "prev_hash", "hash")
    first, second = _row(s, 4), _row(s, 7)
    a = {c: getattr(first, c) for c in columns}
    b = {c: getattr(second, c) for c in columns}
    s.execute(update(AuditEntry).where(AuditEntry.seq == 4).values(**b))
    s.execute(update(AuditEntry).where(AuditEntry.seq == 7).values(**a))
    return 4


def rehash_edited_entry(s: Session, count: int) -> int:
    _edit_details(s, 6)
    row = _row(s, 6)
    digest = entry_hash({k: getattr(row, k) for k in HASHED})
    s.execute(update(AuditEntry).where(AuditEntry.seq == 6).values(hash=digest))
    return 7  # entry 6 checks out now; entry 7 no longer links to it


@dataclass(frozen=True)
class Tamper:
    name: str
    apply: Callable[[Session, int], int]
    """Changes the table; returns the seq `audit verify` must name."""


TAMPERING = [
    Tamper("editing one entry's details is caught at that entry", edit_details),
    Tamper("changing the actor of an entry is caught at that entry", edit_actor),
    Tamper("backdating an entry's timestamp is caught at that entry", backdate_timestamp),
    Tamper("deleting an entry from the middle is caught at the missing seq", delete_middle_entry),
    Tamper("deleting the last entry is caught by the head anchor", delete_last_entry),
    Tamper("swapping the contents of two entries is caught at the earlier one", swap_two_entries),
    Tamper("re-hashing an edited entry is caught at the next link", rehash_edited_entry),
]


@pytest.mark.parametrize("tamper", TAMPERING, ids=[t.name for t in TAMPERING])
def test_audit_verify_names_the_first_broken_entry_after_tampering(
    store: Store, cli: Any, audited: int, tamper: Tamper
) -> None:
    with store.transaction() as s:
        broken = tamper.apply(s, audited)

    result = cli("audit", "verify")

    assert result.exit_code == 3, result.output
    assert f"audit entry {broken}:" in result.stderr
    assert "audit chain OK" not in result.output


# --- export ------------------------------------------------------------------------------


def _export(cli: Any) -> list[dict[str, object]]:
    result = cli("audit", "export", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_audit_export_writes_one_json_object_per_line_in_chain_order(
    cli: Any, audited: int
) -> None:
    entries = _export(cli)

    assert len(entries) == audited
    assert all(set(e) == EXPORT_FIELDS for e in entries)
    assert [e["seq"] for e in entries] == list(range(1, audited + 1))
    assert all(isinstance(e["details"], dict) for e in entries)
    previous = "0" * 64
    for e in entries:
        assert e["prev_hash"] == previous
        assert isinstance(e["ts"], str)
        datetime.fromisoformat(e["ts"])
        previous = str(e["hash"])


@pytest.mark.parametrize("page", [1, 7, 1000])
def test_audit_entries_page_through_the_whole_trail_once_in_order(
    store: Store, audited: int, page: int
) -> None:
    # Pages of any size (one entry, one that divides nothing, more than the trail) yield
    # every entry once, in order, as the CLI's export prints them.
    assert [e["seq"] for e in store.audit_entries(page=page)] == list(range(1, audited + 1))


def test_an_entry_appended_while_the_trail_is_paged_is_read_at_its_place(
    store: Store, audited: int
) -> None:
    reader = store.audit_entries(page=5)
    first = next(reader)
    with store.transaction() as s:
        store.audit(s, actor="test", action="test.appended", subject="x", details={})
    seqs = [first["seq"]] + [e["seq"] for e in reader]

    assert seqs == list(range(1, audited + 2))


def test_audit_export_records_request_every_step_and_finish_of_each_rotation(
    store: Store, cli: Any, audited: int
) -> None:
    entries = _export(cli)
    runs = rotations_of(store, CREDENTIAL)
    assert len(runs) == ROTATIONS

    for rot in runs:
        mine = [e for e in entries if e["subject"] == f"rotation:{rot.id}"]
        actions = [e["action"] for e in mine]
        journal = steps(store, rot.id)

        assert actions[0] == "rotation.requested"
        assert actions[-1] == "rotation.finished"
        assert actions.count("rotation.requested") == 1
        assert actions.count("rotation.finished") == 1

        requested = mine[0]["details"]
        assert isinstance(requested, dict)
        assert requested["requested_by"] == "test-operator"
        assert requested["plan_hash"] == rot.plan_hash
        assert requested["keyshift_version"] == __version__
        assert mine[0]["actor"] == "test-operator"

        step_entries = [e["details"] for e in mine if e["action"] == "rotation.step"]
        assert len(step_entries) == len(journal)
        for details, row in zip(step_entries, journal, strict=True):
            assert isinstance(details, dict)
            assert details["step"] == row.name
            assert details["outcome"] == row.status == "succeeded"
            started = datetime.fromisoformat(details["started_at"])
            ended = datetime.fromisoformat(details["ended_at"])
            assert started == row.started_at
            assert ended == row.ended_at
            assert started <= ended

        finished = mine[-1]["details"]
        assert isinstance(finished, dict)
        assert finished["state"] == rot.state == "completed"
        assert finished["plan_hash"] == rot.plan_hash
        assert finished["new_version_id"] == rot.new_version_id
