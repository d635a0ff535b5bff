"""The evidence bundle of one rotation: one JSON document an auditor can check.

`export(store, rotation_id)` gathers the request (who, when, why, how: its trigger,
whether it was break-glass, the inbound event that asked for it), the approvals,
the plan and its hash, the executing keyshift version, every step with its times
and outcome, the old and new versions by id and fingerprint (never by value), the
residual-use evidence, the final state, who rolled it back by hand and why (if
anyone did), which consumers a `rollback: failing_only` left on which version (the
split), the blast radius, the tickets notification channels opened for it (a Jira
issue key, a ServiceNow sys_id; told, not audited, so no entry attests them), and the
audit-chain proof: every audit entry of the rotation with its hash inputs, plus the
chain head when the bundle was made.

`verify(store, bundle)` checks that the bundle still holds, and names the first
thing that does not:

1. each included entry's hash recomputes from its content and `prev_hash`;
2. the bundle's statements agree with the entries that attest them (the plan
   hashes to `plan_hash`, the request, each journaled step, the versions, the
   final state, the rollback decision, the consumers' split, the blast radius
   recomputed from the plan);
3. each entry is the store's entry at that `seq`, unchanged;
4. the store's whole chain verifies (`keyshift audit verify`), and still holds
   the head the bundle recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from keyshift import __version__
from keyshift.domain.states import StepStatus, Trigger
from keyshift.engine.plan import Plan
from keyshift.engine.splits import SPLIT
from keyshift.errors import AuditChainBroken, KeyshiftError
from keyshift.service import impact as impact_service
from keyshift.service import lookups
from keyshift.service import notifications as notifications_service
from keyshift.store import audit
from keyshift.store.models import AuditEntry, CredentialRow, StepRow, VersionRow
from keyshift.store.store import Store

FORMAT = "keyshift-evidence/1"
LOCAL_HOST = "the keyshift host"
"""Where agent-less actions ran, as evidence names it: the same on every machine that
verifies (the actor of each step entry says which host that was)."""


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify`: `problem` is None when the bundle holds."""

    entries: int
    """Audit entries of the rotation that were checked."""
    chain_entries: int
    """Entries in the store's whole chain (0 when the check stopped before it)."""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Mismatch(Exception):
    pass


def export(store: Store, rotation_id: str, *, actor: str, now: datetime) -> dict[str, Any]:
    """The evidence bundle of one rotation (a full id or a unique prefix)."""
    with store.transaction() as s:
        rot = lookups.rotation(s, rotation_id)
        cred = s.get(CredentialRow, rot.credential_id)
        steps = list(
            s.execute(select(StepRow).where(StepRow.rotation_id == rot.id).order_by(StepRow.seq))
            .scalars()
            .all()
        )
        versions = {
            "old": _version(s, rot.old_version_id),
            "new": _version(s, rot.new_version_id),
        }
        entries = [audit.entry_json(e) for e in _entries_of(s, rot.id)]
        head_seq, head_hash = _head(s)
        plan = Plan.from_json(rot.plan)
        return {
            "format": FORMAT,
            "exported_at": now.isoformat(),
            "exported_by": actor,
            "exported_with": __version__,
            "rotation": {
                "id": rot.id,
                "credential": cred.name if cred else None,
                "owner": cred.owner if cred else None,
                "environment": cred.environment if cred else None,
                "final_state": rot.state,
                "error": rot.error,
                "attention": rot.attention,
                "grace_until": _iso(rot.grace_until),
                "finished_at": _iso(rot.finished_at),
            },
            "request": {
                "requested_by": rot.requested_by,
                "requested_at": _iso(rot.requested_at),
                "reason": rot.reason,
                "trigger": rot.trigger,
                "break_glass": rot.trigger == Trigger.BREAK_GLASS,
                "event": (
                    {"trigger": rot.event_trigger, "event_id": rot.event_id}
                    if rot.event_id is not None
                    else None
                ),
            },
            "approvals": [e for e in entries if e["action"].startswith("approval.")],
            "plan": rot.plan,
            "plan_hash": rot.plan_hash,
            "executor": {"keyshift_version": rot.keyshift_version},
            "steps": [_step_json(st) for st in steps],
            "versions": versions,
            "residual_use": rot.residual,
            "rollback": _rollback(entries, rot.id),
            "split": (rot.residual or {}).get(SPLIT),
            "impact": impact_service.to_json(
                impact_service.impact_of_plan(plan, local_host=LOCAL_HOST)
            ),
            "tickets": [
                {"channel": t.channel, "reference": t.reference}
                for t in notifications_service.tickets(s, rot.id)
            ],
            "audit": {
                "entries": entries,
                "head": {"seq": head_seq, "hash": head_hash},
            },
        }


def verify(store: Store, bundle: dict[str, Any]) -> Verification:
    """Check `bundle` against itself and against the store's audit chain."""
    entries: list[dict[str, Any]] = []
    try:
        if bundle.get("format") != FORMAT:
            raise _Mismatch(f"not a keyshift evidence bundle (format {bundle.get('format')!r})")
        entries = list(bundle["audit"]["entries"])
        for entry in entries:
            _check_entry_hash(entry)
        _check_statements(bundle, entries)
        with store.transaction() as s:
            for entry in entries:
                _check_against_store(s, entry)
            try:
                count = audit.verify(s)
            except AuditChainBroken as exc:
                raise _Mismatch(f"the store's audit chain is broken at {exc}") from None
            _check_head(s, bundle["audit"]["head"])
    except _Mismatch as exc:
        return Verification(len(entries), 0, str(exc))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return Verification(len(entries), 0, f"the bundle is malformed ({exc!r})")
    return Verification(len(entries), count)


def dumps(bundle: dict[str, Any]) -> str:
    """The bundle as a JSON document, keys sorted, one trailing newline."""
    return json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# Export helpers -------------------------------------------------------------------


def _entries_of(s: Session, rotation_id: str) -> Iterator[AuditEntry]:
    """The rotation's entries: those about it (`rotation:ID`), and any that name it."""
    subject = f"rotation:{rotation_id}"
    rows = s.execute(
        select(AuditEntry)
        .where(or_(AuditEntry.subject == subject, AuditEntry.details.contains(rotation_id)))
        .order_by(AuditEntry.seq)
    ).scalars()
    for row in rows:
        if row.subject == subject or _names(json.loads(row.details), rotation_id):
            yield row


def _names(details: Any, rotation_id: str) -> bool:
    """Whether a `rotation_id` field anywhere in `details` is this rotation."""
    if isinstance(details, dict):
        return details.get("rotation_id") == rotation_id or any(
            _names(v, rotation_id) for v in details.values()
        )
    if isinstance(details, list):
        return any(_names(v, rotation_id) for v in details)
    return False


def _rollback(entries: list[dict[str, Any]], rotation_id: str) -> dict[str, Any] | None:
    """Who rolled the rotation back by hand, when, why and from which state (None when
    nobody did), as its `rotation.rollback` entry attests."""
    decided = [
        e
        for e in entries
        if e["action"] == "rotation.rollback" and e["subject"] == f"rotation:{rotation_id}"
    ]
    if not decided:
        return None
    said = decided[-1]["details"]
    return {
        "by": said.get("by"),
        "at": decided[-1]["ts"],
        "reason": said.get("reason"),
        "from_state": said.get("from_state"),
    }


def _step_json(step: StepRow) -> dict[str, Any]:
    return {
        "seq": step.seq,
        "name": step.name,
        "attempt": step.attempt,
        "outcome": step.status,
        "started_at": _iso(step.started_at),
        "ended_at": _iso(step.ended_at),
        "detail": step.detail,
        "error": step.error,
    }


def _version(s: Session, version_id: str | None) -> dict[str, Any] | None:
    row = s.get(VersionRow, version_id) if version_id else None
    if row is None:
        return None
    return {
        "id": row.id,
        "serial": row.serial,
        "provider_ref": row.provider_ref,
        "fingerprint": row.fingerprint,
        "status": row.status,
        "attributes": row.attributes,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "revoked_at": _iso(row.revoked_at),
    }


def _head(s: Session) -> tuple[int, str]:
    last = s.execute(
        select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc())
    ).first()
    return (int(last[0]), str(last[1])) if last else (0, audit.GENESIS)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _same_time(a: Any, b: Any) -> bool:
    """Whether two ISO timestamps name the same instant (backends differ in offset form)."""
    if a is None or b is None:
        return a is b
    return bool(datetime.fromisoformat(a) == datetime.fromisoformat(b))


# Verify helpers -------------------------------------------------------------------


def _hash_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """The fields an entry's hash covers, with `details` in its stored (canonical) form."""
    return {**{k: entry[k] for k in audit.HASHED}, "details": audit.canonical(entry["details"])}


def _label(entry: dict[str, Any]) -> str:
    return f"audit entry {entry['seq']} ({entry['action']})"


def _check_entry_hash(entry: dict[str, Any]) -> None:
    if audit.entry_hash(_hash_fields(entry)) != entry["hash"]:
        raise _Mismatch(f"{_label(entry)} in the bundle does not match its hash (edited)")


def _check_statements(bundle: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """The bundle's statements agree with the hashed entries that attest them."""
    rotation_id = bundle["rotation"]["id"]
    mine = [e for e in entries if e["subject"] == f"rotation:{rotation_id}"]
    requested = next((e for e in mine if e["action"] == "rotation.requested"), None)
    if requested is None:
        raise _Mismatch("the bundle holds no rotation.requested entry for its rotation")
    plan_hash = hashlib.sha256(audit.canonical(bundle["plan"]).encode()).hexdigest()
    if plan_hash != bundle["plan_hash"]:
        raise _Mismatch("plan: does not hash to plan_hash (edited)")
    attested = _plan_hashes(mine)
    if bundle["plan_hash"] != attested[-1]:
        raise _Mismatch(
            f"plan_hash: {bundle['plan_hash'][:12]}... is not the plan the audit trail "
            f"names last ({attested[-1][:12]}...)"
        )
    request = bundle["request"]
    said = requested["details"]
    for key in ("requested_by", "reason"):
        if request[key] != said.get(key):
            raise _Mismatch(f"request.{key}: differs from {_label(requested)}")
    # Entries older than break-glass and triggers state neither: not break-glass, no event.
    for key, unsaid in (("break_glass", False), ("event", None)):
        if request.get(key, unsaid) != said.get(key, unsaid):
            raise _Mismatch(f"request.{key}: differs from {_label(requested)}")
    if "trigger" in said and request.get("trigger", said["trigger"]) != said["trigger"]:
        raise _Mismatch(f"request.trigger: differs from {_label(requested)}")
    if said.get("keyshift_version") != bundle["executor"]["keyshift_version"]:
        raise _Mismatch(f"executor.keyshift_version: differs from {_label(requested)}")
    old = bundle["versions"]["old"]
    if (old or {}).get("id") != said.get("old_version_id") or (
        old is not None and old["fingerprint"] != said.get("old_fingerprint")
    ):
        raise _Mismatch(f"versions.old: differs from {_label(requested)}")
    if bundle["approvals"] != [e for e in entries if e["action"].startswith("approval.")]:
        raise _Mismatch("approvals: differ from the approval entries of the audit trail")
    _check_steps(bundle, mine)
    _check_outcome(bundle, mine)
    if bundle.get("rollback") != _rollback(entries, rotation_id):
        raise _Mismatch("rollback: differs from the rotation.rollback entry of the audit trail")
    recomputed = impact_service.to_json(
        impact_service.impact_of_plan(Plan.from_json(bundle["plan"]), local_host=LOCAL_HOST)
    )
    if bundle["impact"] != recomputed:
        raise _Mismatch("impact: differs from the blast radius of the plan")


def _plan_hashes(entries: list[dict[str, Any]]) -> list[str]:
    """Plan hashes the trail names, in order: requested, then any that superseded it."""
    hashes = [e["details"]["plan_hash"] for e in entries if e["action"] == "rotation.requested"]
    hashes += [
        e["details"]["new_plan_hash"] for e in entries if e["action"] == "approval.superseded"
    ]
    return hashes


def _check_steps(bundle: dict[str, Any], mine: list[dict[str, Any]]) -> None:
    """Every ended step matches its `rotation.step` entry; no audited step is left out."""
    audited = {
        (e["details"]["step"], e["details"]["attempt"]): e
        for e in mine
        if e["action"] == "rotation.step"
    }
    seen: set[tuple[str, int]] = set()
    for step in bundle["steps"]:
        key = (step["name"], step["attempt"])
        entry = audited.get(key)
        if entry is None:
            # Only a step still running, or one a stopped worker left behind (closed as
            # interrupted without its own entry), has no entry of its own.
            if step["outcome"] == StepStatus.RUNNING.value or (step["error"] or "").startswith(
                "interrupted"
            ):
                continue
            raise _Mismatch(f"steps: {step['name']} attempt {step['attempt']} is not audited")
        seen.add(key)
        said = entry["details"]
        for field in ("outcome", "started_at", "ended_at", "detail", "error"):
            same = (
                _same_time(step[field], said.get(field))
                if field.endswith("_at")
                else step[field] == said.get(field)
            )
            if not same:
                raise _Mismatch(
                    f"steps: {step['name']} attempt {step['attempt']} {field} differs from "
                    f"{_label(entry)}"
                )
    missing = sorted(set(audited) - seen)
    if missing:
        name, attempt = missing[0]
        raise _Mismatch(f"steps: {name} attempt {attempt} is audited but left out")


def _check_outcome(bundle: dict[str, Any], mine: list[dict[str, Any]]) -> None:
    rotation = bundle["rotation"]
    finished = [e for e in mine if e["action"] == "rotation.finished"]
    created = [
        e
        for e in mine
        if e["action"] == "rotation.step"
        and e["details"]["step"] == "creating"
        and e["details"]["outcome"] == StepStatus.SUCCEEDED.value
    ]
    new = bundle["versions"]["new"]
    if created:
        detail = created[-1]["details"]["detail"]
        if new is None or (new["id"], new["fingerprint"]) != (
            detail.get("version_id"),
            detail.get("fingerprint"),
        ):
            raise _Mismatch(f"versions.new: differs from {_label(created[-1])}")
    if finished:
        said = finished[-1]["details"]
        if rotation["final_state"] != said.get("state"):
            raise _Mismatch(f"rotation.final_state: differs from {_label(finished[-1])}")
        if (new or {}).get("id") != said.get("new_version_id"):
            raise _Mismatch(f"versions.new: differs from {_label(finished[-1])}")
    residual = [e for e in mine if e["action"] == "rotation.residual_use"]
    if residual and bundle["residual_use"] != residual[-1]["details"].get("evidence"):
        raise _Mismatch(f"residual_use: differs from {_label(residual[-1])}")
    split = [e for e in mine if e["action"] == "rotation.split"]
    stated = bundle.get("split")
    if split and stated != split[-1]["details"].get("split"):
        raise _Mismatch(f"split: differs from {_label(split[-1])}")
    if stated is not None and not split:
        raise _Mismatch("split: no rotation.split entry attests it")


def _check_against_store(s: Session, entry: dict[str, Any]) -> None:
    row = s.get(AuditEntry, entry["seq"])
    if row is None:
        raise _Mismatch(f"{_label(entry)} is missing from the store (deleted)")
    stored = {k: getattr(row, k) for k in (*audit.HASHED, "hash")}
    if audit.entry_hash(stored) != row.hash:
        raise _Mismatch(
            f"{_label(entry)}: the store's row was edited (it no longer matches its hash)"
        )
    if {**_hash_fields(entry), "hash": entry["hash"]} != stored:
        raise _Mismatch(f"{_label(entry)} differs from the store's entry {row.seq}")


def _check_head(s: Session, head: dict[str, Any]) -> None:
    """The store still holds the head the bundle recorded, unchanged (no rewrite since)."""
    seq, digest = int(head["seq"]), str(head["hash"])
    if seq == 0:
        return
    row = s.get(AuditEntry, seq)
    if row is None or row.hash != digest:
        raise _Mismatch(f"audit head {seq}: the store no longer holds the head the bundle recorded")


def load(text: str) -> dict[str, Any]:
    """Parse a bundle file; a KeyshiftError names what is wrong with it."""
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyshiftError(
            f"the evidence file is not JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(bundle, dict):
        raise KeyshiftError("the evidence file is not a JSON object")
    return bundle


@dataclass(frozen=True)
class ChainCheck:
    """Whether the store's audit chain holds (`keyshift audit verify`)."""

    ok: bool
    entries: int | None
    """How many entries verified (when the chain is intact)."""
    broken_at: int | None
    """The first entry that breaks the chain."""
    reason: str | None


def verify_chain(store: Store) -> ChainCheck:
    """Recompute the hash chain; name the first edited, deleted or reordered entry."""
    try:
        with store.transaction() as s:
            count = audit.verify(s)
    except AuditChainBroken as exc:
        return ChainCheck(ok=False, entries=None, broken_at=exc.seq, reason=exc.reason)
    return ChainCheck(ok=True, entries=count, broken_at=None, reason=None)


def audit_lines(store: Store) -> Iterator[str]:
    """Every audit entry as one JSON line each (for a SIEM), read a page at a time."""
    for entry in store.audit_entries():
        yield json.dumps(entry, sort_keys=True) + "\n"
