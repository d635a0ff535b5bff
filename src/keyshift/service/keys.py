"""Master key rotation: re-wrap every data key under a new master key, losing no value.

Order, so a crash at any point loses nothing:
1. the new key is written beside the old one (`master.key.new`), or taken from
   `KEYSHIFT_NEW_MASTER_KEY`;
2. every data key is re-wrapped in one database transaction;
3. the old key file is retired and the new one takes its place.
A crash after 1 or 2 leaves both keys loadable (`load_keyring` reads
`master.key.new` too), so every row opens; running the command again finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from keyshift.store.crypto import (
    ENV_MASTER_KEY,
    Keyring,
    Sealed,
    begin_master_rotation,
    finish_master_rotation,
    load_keyring,
    new_master_key_from_env,
)
from keyshift.store.models import VersionRow
from keyshift.store.store import Store


@dataclass(frozen=True)
class MasterRotation:
    old_key_id: str
    new_key_id: str
    rewrapped: int
    from_env: bool


def rotate_master_key(store: Store, *, actor: str) -> MasterRotation:
    from_env = bool(store.env.get(ENV_MASTER_KEY))
    old = store.keyring.active
    new = new_master_key_from_env(store.env) if from_env else begin_master_rotation(store.home)
    count = 0
    with store.transaction() as s:
        for row in s.execute(
            select(VersionRow).where(VersionRow.ciphertext.is_not(None))
        ).scalars():
            if row.wrapped_key is None or row.master_key_id is None or row.ciphertext is None:
                continue  # revoked and erased: nothing to re-wrap
            sealed = store.keyring.rewrap(
                Sealed(row.ciphertext, row.wrapped_key, row.master_key_id),
                row.credential_id,
                row.id,
                new,
            )
            row.wrapped_key = sealed.wrapped_key
            row.master_key_id = sealed.master_key_id
            count += 1
        store.audit(
            s,
            actor=actor,
            action="keys.master_rotated",
            subject="master-key",
            details={"old_key_id": old.key_id, "new_key_id": new.key_id, "rewrapped": count},
        )
    if from_env:
        store.keyring = Keyring(new, [old])
    else:
        finish_master_rotation(store.home, old, new)
        store.keyring = load_keyring(store.home, store.env)
    return MasterRotation(old.key_id, new.key_id, count, from_env)
