"""The audit chain: append-only entries, each hashing the one before it.

`hash = sha256(canonical JSON of seq, ts, actor, action, subject, details, prev_hash)`.
An edited row no longer matches its hash; a deleted or reordered row breaks
the `prev_hash` link or the sequence; a truncated tail no longer matches the
`audit_head` anchor kept in `meta`, which is written in the same transaction.
Entries are appended inside the caller's transaction, so a state change and
its evidence commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from keyshift.errors import AuditChainBroken
from keyshift.store.models import AuditEntry, Meta

GENESIS = "0" * 64
HEAD_KEY = "audit_head"


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept; the input of every hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


HASHED = ("seq", "ts", "actor", "action", "subject", "details", "prev_hash")


def entry_hash(fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the `HASHED` fields of one entry."""
    return hashlib.sha256(canonical({k: fields[k] for k in HASHED}).encode()).hexdigest()


_AUDIT = cast(Table, AuditEntry.__table__)
_META = cast(Table, Meta.__table__)
# Built once: appending is on the path of every rotation step.
_HEAD = select(_META.c.value).where(_META.c.key == HEAD_KEY)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_INSERT_ENTRY = insert(_AUDIT)
_INSERT_HEAD = insert(_META).values(key=HEAD_KEY, value=bindparam("b_value"))
_UPDATE_HEAD = update(_META).where(_META.c.key == HEAD_KEY).values(value=bindparam("b_value"))


def _head(session: Session, *, lock: bool) -> tuple[int, str]:
    value = session.connection().execute(_HEAD_FOR_UPDATE if lock else _HEAD).scalar_one_or_none()
    if value is None:
        return 0, GENESIS
    seq, _, digest = value.partition(":")
    return int(seq), digest


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    at: datetime,
) -> AuditEntry:
    """Add one entry at the end of the chain, in the caller's transaction."""
    # The head row is locked (PostgreSQL) or the transaction is already
    # BEGIN IMMEDIATE (SQLite), so two writers cannot take the same seq.
    last_seq, last_hash = _head(session, lock=True)
    seq = last_seq + 1
    fields: dict[str, Any] = {
        "seq": seq,
        "ts": at.isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": canonical(dict(details)),
        "prev_hash": last_hash,
    }
    digest = entry_hash(fields)
    conn = session.connection()
    conn.execute(_INSERT_ENTRY, {**fields, "hash": digest})
    conn.execute(_INSERT_HEAD if last_seq == 0 else _UPDATE_HEAD, {"b_value": f"{seq}:{digest}"})
    return AuditEntry(**fields, hash=digest)


STREAM_BATCH = 500
"""Audit entries read from the database at a time by `verify` and `export`."""


def verify(session: Session) -> int:
    """Recompute the chain. Returns the number of entries; raises on the first broken one."""
    # Streamed a batch at a time: memory stays flat however long the trail is.
    query = select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=STREAM_BATCH)
    with session.execute(query).scalars() as entries:  # closes PostgreSQL's server cursor
        count, last_hash = _verify_links(entries)
    head_seq, head_hash = _head(session, lock=False)
    if (head_seq, head_hash) != (count, last_hash):
        raise AuditChainBroken(
            count + 1 if head_seq > count else head_seq,
            f"the chain ends at entry {count} but its anchor records entry {head_seq} "
            "(entries removed from the end, or the anchor edited)",
        )
    return count


def _verify_links(entries: Iterable[AuditEntry]) -> tuple[int, str]:
    """Check each entry's number, link and hash in order; (entries, last hash)."""
    expected_prev = GENESIS
    count = 0
    for entry in entries:
        if entry.seq != count + 1:
            raise AuditChainBroken(count + 1, f"missing; the next entry found is {entry.seq}")
        if entry.prev_hash != expected_prev:
            raise AuditChainBroken(entry.seq, "does not link to the entry before it")
        digest = entry_hash({k: getattr(entry, k) for k in HASHED})
        if digest != entry.hash:
            raise AuditChainBroken(entry.seq, "content does not match its hash (edited)")
        expected_prev = entry.hash
        count += 1
    return count, expected_prev


def export(
    session: Session, *, after_seq: int = 0, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """The entries after `after_seq` (at most `limit`) as plain dicts, in order, for JSON
    Lines export to a SIEM. `Store.audit_entries` pages through all of them."""
    query = select(AuditEntry).where(AuditEntry.seq > after_seq).order_by(AuditEntry.seq)
    if limit is not None:
        query = query.limit(limit)
    with session.execute(query.execution_options(yield_per=STREAM_BATCH)).scalars() as rows:
        yield from (entry_json(entry) for entry in rows)


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry as a plain dict (details parsed), as export and evidence bundles show it."""
    return {
        "seq": entry.seq,
        "ts": entry.ts,
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "details": json.loads(entry.details),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def latest(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` entries, newest first, as `entry_json` gives them."""
    query = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    return [entry_json(entry) for entry in session.execute(query).scalars()]
