"""Master key rotation (`keyshift keys rotate-master`): every stored value is re-wrapped
under the new key and still reveals identically, with key files or environment keys."""

from __future__ import annotations

import base64
import gc
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from keyshift.domain.clock import utcnow
from keyshift.domain.states import RotationState, VersionStatus
from keyshift.errors import DecryptionError
from keyshift.store.crypto import (
    ENV_MASTER_KEY,
    ENV_NEW_MASTER_KEY,
    ENV_OLD_MASTER_KEYS,
    MASTER_KEY_FILE,
    NEW_MASTER_KEY_FILE,
    RETIRED_MASTER_KEYS_DIR,
    MasterKey,
)
from keyshift.store.models import AuditEntry, RotationRow, VersionRow
from keyshift.store.store import Store
from tests.conftest import Cli
from tests.helpers import json_value, rotations_of, versions, write_estate

CREDENTIAL = "api-key"


@dataclass(frozen=True)
class AtRest:
    """What one version row holds at rest."""

    ciphertext: bytes | None
    wrapped_key: bytes | None
    master_key_id: str | None


def _at_rest(store: Store) -> dict[str, AtRest]:
    with store.transaction() as s:
        rows = s.execute(select(VersionRow)).scalars().all()
        return {r.id: AtRest(r.ciphertext, r.wrapped_key, r.master_key_id) for r in rows}


def _revealed(store: Store) -> dict[str, str]:
    """Every stored value by version id (rows whose value was erased are left out)."""
    with store.transaction() as s:
        rows = s.execute(select(VersionRow).where(VersionRow.ciphertext.is_not(None))).scalars()
        return {r.id: store.reveal(r).reveal() for r in rows}


def _audit_count(store: Store) -> int:
    with store.transaction() as s:
        return int(s.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


def _rotate_into_grace(cli: Any, tmp_path: Path) -> None:
    """Three rotations: the first version is revoked, the second stays valid in the grace
    period of the third, so two rows hold a value and one holds none."""
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    assert cli("rotate", CREDENTIAL, "--grace", "0s").exit_code == 0
    result = cli("rotate", CREDENTIAL)
    assert result.exit_code == 0, result.output
    assert "grace" in result.stdout


def _cli(env: dict[str, str]) -> Any:
    """The CLI runner of conftest with an environment of the test's own."""
    return Cli(env)


def _random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def reopen() -> Iterator[list[Store]]:
    """Stores opened by the test after the CLI changed the keys; closed at the end."""
    opened: list[Store] = []
    yield opened
    for s in opened:
        s.close()


def _open(opened: list[Store], env: dict[str, str]) -> Store:
    store = Store.open(env)
    opened.append(store)
    return store


# --- key files ----------------------------------------------------------------------------


def test_rotate_master_rewraps_every_value_and_retires_the_old_key_file(
    store: Store, cli: Any, ks_env: dict[str, str], tmp_path: Path, reopen: list[Store]
) -> None:
    _rotate_into_grace(cli, tmp_path)
    values = _revealed(store)
    before = _at_rest(store)
    assert len(values) == 2
    assert len(before) == 3
    old_id = store.keyring.active.key_id

    result = cli("keys", "rotate-master")

    assert result.exit_code == 0, result.output
    assert f"{old_id} -> " in result.stdout
    assert "2 data keys re-wrapped" in result.stdout
    fresh = _open(reopen, ks_env)
    new_id = fresh.keyring.active.key_id
    assert new_id != old_id
    assert _revealed(fresh) == values
    after = _at_rest(fresh)
    for version_id, was in before.items():
        now = after[version_id]
        if was.ciphertext is None:
            assert now == was  # an erased value stays erased
            continue
        assert now.master_key_id == new_id
        assert now.ciphertext == was.ciphertext  # only the data key is re-wrapped
        assert now.wrapped_key != was.wrapped_key

    home = Path(ks_env["KEYSHIFT_HOME"])
    retired = home / RETIRED_MASTER_KEYS_DIR / f"{old_id}.key"
    assert MasterKey.from_base64(retired.read_text()).key_id == old_id
    assert MasterKey.from_base64((home / MASTER_KEY_FILE).read_text()).key_id == new_id
    assert not (home / NEW_MASTER_KEY_FILE).exists()

    with fresh.transaction() as s:
        entry = s.execute(
            select(AuditEntry).where(AuditEntry.action == "keys.master_rotated")
        ).scalar_one()
        assert json.loads(entry.details) == {
            "old_key_id": old_id,
            "new_key_id": new_id,
            "rewrapped": 2,
        }
    assert cli("audit", "verify").exit_code == 0


def test_rotations_after_a_master_rotation_revoke_and_deliver_with_rewrapped_values(
    store: Store, cli: Any, ks_env: dict[str, str], tmp_path: Path, reopen: list[Store]
) -> None:
    _rotate_into_grace(cli, tmp_path)
    assert cli("keys", "rotate-master").exit_code == 0
    in_grace = rotations_of(store, CREDENTIAL)[-1]
    assert in_grace.state == RotationState.GRACE.value
    with store.transaction() as s:
        s.execute(
            update(RotationRow)
            .where(RotationRow.id == in_grace.id)
            .values(grace_until=utcnow() - timedelta(seconds=1))
        )

    resumed = cli("resume")  # revoking reads the old value, wrapped under the old key before
    rotated = cli("rotate", CREDENTIAL, "--grace", "0s")

    assert resumed.exit_code == 0, resumed.output
    assert rotated.exit_code == 0, rotated.output
    fresh = _open(reopen, ks_env)
    assert [r.state for r in rotations_of(fresh, CREDENTIAL)] == ["completed"] * 4
    rows = versions(fresh, CREDENTIAL)
    assert [r.status for r in rows] == [VersionStatus.REVOKED.value] * 3 + [
        VersionStatus.CURRENT.value
    ]
    newest = rows[-1]
    assert newest.master_key_id == fresh.keyring.active.key_id
    assert json_value(tmp_path / "app.json") == fresh.reveal(newest).reveal()


def test_second_master_rotation_keeps_every_value_and_both_old_keys_retired(
    store: Store, cli: Any, ks_env: dict[str, str], tmp_path: Path, reopen: list[Store]
) -> None:
    _rotate_into_grace(cli, tmp_path)
    values = _revealed(store)
    first_id = store.keyring.active.key_id

    assert cli("keys", "rotate-master").exit_code == 0
    second_id = _open(reopen, ks_env).keyring.active.key_id
    assert cli("keys", "rotate-master").exit_code == 0

    fresh = _open(reopen, ks_env)
    assert _revealed(fresh) == values
    assert {r.master_key_id for r in _at_rest(fresh).values() if r.ciphertext} == {
        fresh.keyring.active.key_id
    }
    retired = Path(ks_env["KEYSHIFT_HOME"]) / RETIRED_MASTER_KEYS_DIR
    assert sorted(p.name for p in retired.iterdir()) == sorted(
        [f"{first_id}.key", f"{second_id}.key"]
    )


# --- environment keys ---------------------------------------------------------------------


NEW_KEY_PROBLEMS: dict[str, Callable[[str], str | None]] = {
    "unset": lambda _current: None,
    "blank": lambda _current: "   ",
    "not base64 of 32 bytes": lambda _current: base64.b64encode(b"too short").decode(),
    "the same key as KEYSHIFT_MASTER_KEY": lambda current: current,
}


@pytest.mark.parametrize("case", NEW_KEY_PROBLEMS)
def test_env_rotate_master_without_a_usable_new_key_fails_in_one_line_and_changes_nothing(
    ks_env: dict[str, str], tmp_path: Path, reopen: list[Store], case: str
) -> None:
    current = _random_key()
    env = {**ks_env, ENV_MASTER_KEY: current}
    _rotate_into_grace(_cli(env), tmp_path)
    store = _open(reopen, env)
    before, entries = _at_rest(store), _audit_count(store)
    new_key = NEW_KEY_PROBLEMS[case](current)
    if new_key is not None:
        env = {**env, ENV_NEW_MASTER_KEY: new_key}

    result = _cli(env)("keys", "rotate-master")
    exit_code, output = result.exit_code, result.output
    # A database connection the failed command left open is reported here, as a
    # ResourceWarning (an error in this suite), rather than in whichever test runs next.
    del result
    gc.collect()

    assert exit_code == 1, case
    lines = output.strip().splitlines()
    assert len(lines) == 1, lines
    assert ENV_NEW_MASTER_KEY in lines[0]
    assert current not in output
    assert _at_rest(store) == before
    assert _audit_count(store) == entries
    home = Path(ks_env["KEYSHIFT_HOME"])
    for name in (MASTER_KEY_FILE, NEW_MASTER_KEY_FILE, RETIRED_MASTER_KEYS_DIR):
        assert not (home / name).exists()


def test_env_rotate_master_rewraps_so_the_new_key_alone_reveals_every_value(
    ks_env: dict[str, str], tmp_path: Path, reopen: list[Store]
) -> None:
    old_key, new_key = _random_key(), _random_key()
    env = {**ks_env, ENV_MASTER_KEY: old_key}
    _rotate_into_grace(_cli(env), tmp_path)
    values = _revealed(_open(reopen, env))
    assert len(values) == 2

    result = _cli({**env, ENV_NEW_MASTER_KEY: new_key})("keys", "rotate-master")

    assert result.exit_code == 0, result.output
    assert "2 data keys re-wrapped" in result.stdout
    assert old_key not in result.output
    assert new_key not in result.output
    only_new = {**ks_env, ENV_MASTER_KEY: new_key}
    assert ENV_OLD_MASTER_KEYS not in only_new
    assert ENV_NEW_MASTER_KEY not in only_new
    promoted = _open(reopen, only_new)
    assert promoted.keyring.key_ids == {MasterKey.from_base64(new_key).key_id}
    assert _revealed(promoted) == values
    new_id = MasterKey.from_base64(new_key).key_id
    assert {r.master_key_id for r in _at_rest(promoted).values() if r.ciphertext} == {new_id}

    old_only = _open(reopen, env)
    with old_only.transaction() as s:
        rows = s.execute(select(VersionRow).where(VersionRow.ciphertext.is_not(None))).scalars()
        for row in rows:
            with pytest.raises(DecryptionError):
                old_only.reveal(row)


# --- rows are bound to their place ----------------------------------------------------------


@pytest.mark.parametrize(
    "columns",
    [("ciphertext",), ("ciphertext", "wrapped_key", "master_key_id")],
    ids=["the ciphertext alone", "the ciphertext with its wrapped key"],
)
def test_a_value_copied_to_another_version_row_fails_to_reveal(
    store: Store, cli: Any, tmp_path: Path, columns: tuple[str, ...]
) -> None:
    _rotate_into_grace(cli, tmp_path)
    values = _revealed(store)
    target_id, source_id = [v.id for v in versions(store, CREDENTIAL) if v.ciphertext]
    with store.transaction() as s:
        source = s.get(VersionRow, source_id)
        assert source is not None
        s.execute(
            update(VersionRow)
            .where(VersionRow.id == target_id)
            .values({c: getattr(source, c) for c in columns})
        )

    with store.transaction() as s:
        target = s.get(VersionRow, target_id)
        assert target is not None
        with pytest.raises(DecryptionError) as raised:
            store.reveal(target)
        untouched = s.get(VersionRow, source_id)
        assert untouched is not None
        assert store.reveal(untouched).reveal() == values[source_id]

    assert target_id in str(raised.value)
    assert all(v not in str(raised.value) for v in values.values())
