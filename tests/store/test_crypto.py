"""Envelope encryption, master-key files and rotation, fingerprints."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError, DecryptionError
from keyshift.store.crypto import (
    Fingerprinter,
    Keyring,
    MasterKey,
    Sealed,
    begin_master_rotation,
    finish_master_rotation,
    generate_master_key,
    load_fingerprinter,
    load_keyring,
    new_master_key_from_env,
)

VALUE = Secret("s3cr3t-Value-that-must-never-leak")
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def b64(key: MasterKey) -> str:
    return key.to_base64()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(generate_master_key())


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


# --- sealing --------------------------------------------------------------------------


def test_sealed_value_opens_to_the_same_secret(keyring: Keyring) -> None:
    sealed = keyring.seal(VALUE, "cred-1", "ver-1")

    assert keyring.open(sealed, "cred-1", "ver-1") == VALUE
    assert sealed.master_key_id == keyring.active.key_id
    assert VALUE.reveal().encode() not in sealed.ciphertext


def test_each_seal_uses_a_fresh_data_key_and_nonce(keyring: Keyring) -> None:
    a = keyring.seal(VALUE, "cred-1", "ver-1")
    b = keyring.seal(VALUE, "cred-1", "ver-1")

    assert a.ciphertext != b.ciphertext
    assert a.wrapped_key != b.wrapped_key


def test_non_ascii_and_empty_values_round_trip(keyring: Keyring) -> None:
    for text in ["", "pässwörd-🔑", "\ud800lone-surrogate"]:
        sealed = keyring.seal(Secret(text), "cred-1", "ver-1")
        assert keyring.open(sealed, "cred-1", "ver-1").reveal() == text


@pytest.mark.parametrize(
    ("credential_id", "version_id"),
    [
        pytest.param("cred-1", "ver-2", id="moved to another version id"),
        pytest.param("cred-2", "ver-1", id="moved to another credential id"),
    ],
)
def test_ciphertext_moved_to_another_row_does_not_open(
    keyring: Keyring, credential_id: str, version_id: str
) -> None:
    sealed = keyring.seal(VALUE, "cred-1", "ver-1")

    with pytest.raises(DecryptionError) as info:
        keyring.open(sealed, credential_id, version_id)

    message = str(info.value)
    assert credential_id in message
    assert version_id in message
    assert VALUE.reveal() not in message


def test_value_ciphertext_moved_under_another_rows_wrapped_key_does_not_open(
    keyring: Keyring,
) -> None:
    """Each row keeps its wrapped key; only the value ciphertext was copied across."""
    mine = keyring.seal(VALUE, "cred-1", "ver-1")
    other = keyring.seal(Secret("other"), "cred-1", "ver-2")
    moved = replace(other, ciphertext=mine.ciphertext)

    with pytest.raises(DecryptionError, match="value does not authenticate"):
        keyring.open(moved, "cred-1", "ver-2")


def test_swapped_wrapped_keys_between_rows_do_not_open(keyring: Keyring) -> None:
    a = keyring.seal(VALUE, "cred-1", "ver-1")
    b = keyring.seal(Secret("other"), "cred-1", "ver-2")
    a_swapped = replace(a, wrapped_key=b.wrapped_key)
    b_swapped = replace(b, wrapped_key=a.wrapped_key)

    with pytest.raises(DecryptionError, match="data key does not unwrap"):
        keyring.open(a_swapped, "cred-1", "ver-1")
    with pytest.raises(DecryptionError, match="data key does not unwrap"):
        keyring.open(b_swapped, "cred-1", "ver-2")


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_key"])
@pytest.mark.parametrize("where", [0, 12, -1], ids=["nonce", "body", "tag"])
def test_any_tampered_byte_fails_to_open(keyring: Keyring, field: str, where: int) -> None:
    sealed = keyring.seal(VALUE, "cred-1", "ver-1")
    if field == "ciphertext":
        blob = sealed.ciphertext
        tampered = replace(sealed, ciphertext=flip(blob, where % len(blob)))
    else:
        blob = sealed.wrapped_key
        tampered = replace(sealed, wrapped_key=flip(blob, where % len(blob)))

    with pytest.raises(DecryptionError):
        keyring.open(tampered, "cred-1", "ver-1")


def test_truncated_blobs_fail_with_decryption_error(keyring: Keyring) -> None:
    sealed = keyring.seal(VALUE, "cred-1", "ver-1")

    with pytest.raises(DecryptionError):
        keyring.open(replace(sealed, ciphertext=b"short"), "cred-1", "ver-1")
    with pytest.raises(DecryptionError):
        keyring.open(replace(sealed, wrapped_key=b""), "cred-1", "ver-1")


def test_unknown_master_key_id_names_the_missing_key(keyring: Keyring) -> None:
    sealed = Keyring(generate_master_key()).seal(VALUE, "cred-1", "ver-1")

    with pytest.raises(DecryptionError) as info:
        keyring.open(sealed, "cred-1", "ver-1")

    assert sealed.master_key_id in str(info.value)
    assert "not loaded" in str(info.value)


@pytest.mark.parametrize(
    ("credential_id", "version_id"), [("a/b", "c"), ("a", "b/c"), ("", "v"), ("c", "")]
)
def test_ids_that_would_make_associated_data_ambiguous_are_refused(
    keyring: Keyring, credential_id: str, version_id: str
) -> None:
    with pytest.raises(ValueError, match="contain no '/'"):
        keyring.seal(VALUE, credential_id, version_id)


def test_value_sealed_under_an_older_key_opens_with_the_keyring_that_holds_it() -> None:
    old, new = generate_master_key(), generate_master_key()
    sealed = Keyring(old).seal(VALUE, "cred-1", "ver-1")

    keyring = Keyring(new, [old])

    assert keyring.open(sealed, "cred-1", "ver-1") == VALUE
    assert keyring.seal(VALUE, "cred-1", "ver-2").master_key_id == new.key_id
    assert keyring.key_ids == {old.key_id, new.key_id}


# --- rewrap ---------------------------------------------------------------------------


def test_rewrapped_value_opens_with_a_keyring_holding_only_the_new_key() -> None:
    old, new = generate_master_key(), generate_master_key()
    sealed = Keyring(old).seal(VALUE, "cred-1", "ver-1")

    rewrapped = Keyring(old).rewrap(sealed, "cred-1", "ver-1", new)

    assert rewrapped.ciphertext == sealed.ciphertext
    assert rewrapped.wrapped_key != sealed.wrapped_key
    assert rewrapped.master_key_id == new.key_id
    assert Keyring(new).open(rewrapped, "cred-1", "ver-1") == VALUE
    with pytest.raises(DecryptionError, match=new.key_id):
        Keyring(old).open(rewrapped, "cred-1", "ver-1")


def test_rewrap_of_a_value_already_under_the_new_key_returns_it_unchanged() -> None:
    old, new = generate_master_key(), generate_master_key()
    sealed = Keyring(old).seal(VALUE, "cred-1", "ver-1")
    once = Keyring(old).rewrap(sealed, "cred-1", "ver-1", new)

    twice = Keyring(old).rewrap(once, "cred-1", "ver-1", new)

    assert twice == once


def test_rewrap_refuses_a_wrapped_key_from_another_row() -> None:
    old, new = generate_master_key(), generate_master_key()
    keyring = Keyring(old)
    sealed = keyring.seal(VALUE, "cred-1", "ver-1")

    with pytest.raises(DecryptionError):
        keyring.rewrap(sealed, "cred-1", "ver-2", new)


# --- master key files -----------------------------------------------------------------


@posix_only
def test_key_file_is_created_0600_on_first_load_and_reused_on_the_next(tmp_path: Path) -> None:
    home = tmp_path / "home"

    first = load_keyring(home, {})
    second = load_keyring(home, {})

    assert mode(home / "master.key") == 0o600
    assert mode(home) == 0o700
    assert first.active.key_id == second.active.key_id
    assert second.open(first.seal(VALUE, "c", "v"), "c", "v") == VALUE
    assert [p.name for p in home.iterdir()] == ["master.key"]


def test_key_file_holds_base64_of_the_key_and_a_newline(tmp_path: Path) -> None:
    keyring = load_keyring(tmp_path, {})

    text = (tmp_path / "master.key").read_text()

    assert text.endswith("\n")
    assert MasterKey.from_base64(text) == keyring.active


@posix_only
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_group_or_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    load_keyring(tmp_path, {})
    path = tmp_path / "master.key"
    path.chmod(bad_mode)

    with pytest.raises(ConfigError) as info:
        load_keyring(tmp_path, {})

    assert info.value.path == str(path)
    assert "chmod 600" in str(info.value)


def test_key_file_that_is_not_a_key_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"not-a-key-but-maybe-a-secret\n")
    os.close(fd)

    with pytest.raises(ConfigError) as info:
        load_keyring(tmp_path, {})

    assert info.value.path == str(path)
    assert "not-a-key" not in str(info.value)


def test_retired_key_file_whose_name_does_not_match_its_key_is_refused(tmp_path: Path) -> None:
    load_keyring(tmp_path, {})
    (tmp_path / "master-keys").mkdir(mode=0o700)
    wrong = tmp_path / "master-keys" / "0000000000000000.key"
    fd = os.open(wrong, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, generate_master_key().to_base64().encode())
    os.close(fd)

    with pytest.raises(ConfigError) as info:
        load_keyring(tmp_path, {})

    assert info.value.path == str(wrong)


# --- environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda raw: base64.urlsafe_b64encode(raw).decode(), id="urlsafe"),
        pytest.param(lambda raw: base64.b64encode(raw).decode(), id="standard"),
        pytest.param(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="), id="no-pad"),
    ],
)
def test_env_master_key_is_the_active_key_and_no_file_is_written(
    tmp_path: Path, encode: Callable[[bytes], str]
) -> None:
    raw = bytes(range(200, 232))  # has bytes that encode to + / - _ in base64
    home = tmp_path / "home"

    keyring = load_keyring(home, {"KEYSHIFT_MASTER_KEY": encode(raw)})

    assert keyring.active == MasterKey(raw)
    assert not home.exists()


@pytest.mark.parametrize(
    "text", ["", "not base64!", base64.b64encode(b"x" * 16).decode(), "a" * 45]
)
def test_invalid_env_master_key_is_refused_naming_the_variable(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_keyring(tmp_path, {"KEYSHIFT_MASTER_KEY": text})

    assert info.value.path == "KEYSHIFT_MASTER_KEY"
    assert info.value.message == "must be base64 of 32 bytes"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_old_env_master_keys_open_values_sealed_under_them(tmp_path: Path) -> None:
    old1, old2, active = generate_master_key(), generate_master_key(), generate_master_key()
    sealed = Keyring(old2).seal(VALUE, "c", "v")
    env = {
        "KEYSHIFT_MASTER_KEY": b64(active),
        "KEYSHIFT_OLD_MASTER_KEYS": f"{b64(old1)}, {b64(old2)},",
    }

    keyring = load_keyring(tmp_path, env)

    assert keyring.key_ids == {old1.key_id, old2.key_id, active.key_id}
    assert keyring.open(sealed, "c", "v") == VALUE


def test_invalid_old_env_master_key_is_refused_naming_its_position(tmp_path: Path) -> None:
    env = {
        "KEYSHIFT_MASTER_KEY": b64(generate_master_key()),
        "KEYSHIFT_OLD_MASTER_KEYS": f"{b64(generate_master_key())},oops",
    }

    with pytest.raises(ConfigError) as info:
        load_keyring(tmp_path, env)

    assert info.value.path == "KEYSHIFT_OLD_MASTER_KEYS[1]"


def test_new_master_key_from_env_refuses_an_unset_variable_and_says_to_set_it() -> None:
    with pytest.raises(ConfigError) as info:
        new_master_key_from_env({"KEYSHIFT_MASTER_KEY": b64(generate_master_key())})

    assert info.value.path == "KEYSHIFT_NEW_MASTER_KEY"
    assert "set it" in info.value.message


def test_new_master_key_from_env_refuses_the_current_key() -> None:
    key = b64(generate_master_key())

    with pytest.raises(ConfigError, match="same key"):
        new_master_key_from_env({"KEYSHIFT_MASTER_KEY": key, "KEYSHIFT_NEW_MASTER_KEY": key})


def test_env_rotation_crash_before_promotion_still_opens_rewrapped_values(
    tmp_path: Path,
) -> None:
    """Rows re-wrapped under KEYSHIFT_NEW_MASTER_KEY open before the operator promotes it."""
    old, new = generate_master_key(), generate_master_key()
    env = {"KEYSHIFT_MASTER_KEY": b64(old), "KEYSHIFT_NEW_MASTER_KEY": b64(new)}
    before = load_keyring(tmp_path, env)
    untouched = before.seal(VALUE, "c", "v1")
    rewrapped = before.rewrap(
        before.seal(VALUE, "c", "v2"), "c", "v2", new_master_key_from_env(env)
    )

    after_restart = load_keyring(tmp_path, env)

    assert after_restart.active == old
    assert after_restart.open(untouched, "c", "v1") == VALUE
    assert after_restart.open(rewrapped, "c", "v2") == VALUE

    promoted = load_keyring(
        tmp_path,
        {
            "KEYSHIFT_MASTER_KEY": b64(new),
            "KEYSHIFT_OLD_MASTER_KEYS": b64(old),
            "KEYSHIFT_NEW_MASTER_KEY": b64(new),  # left set after promotion: harmless
        },
    )
    assert promoted.open(untouched, "c", "v1") == VALUE
    assert promoted.open(rewrapped, "c", "v2") == VALUE


# --- master rotation with key files ---------------------------------------------------


Stop = Callable[[Path, MasterKey, MasterKey, pytest.MonkeyPatch], None]


def crash_after_begin(
    home: Path, old: MasterKey, new: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """begin wrote master.key.new and the process died before finish."""


def crash_after_retiring_before_rename(
    home: Path, old: MasterKey, new: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(*args: object) -> None:
        raise SystemExit("crash")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", die)
        with pytest.raises(SystemExit):
            finish_master_rotation(home, old, new)


def finished(home: Path, old: MasterKey, new: MasterKey, monkeypatch: pytest.MonkeyPatch) -> None:
    finish_master_rotation(home, old, new)


@pytest.mark.parametrize(
    ("stop", "active_after_crash"),
    [
        pytest.param(crash_after_begin, "old", id="crash after begin, before finish"),
        pytest.param(
            crash_after_retiring_before_rename,
            "old",
            id="crash in finish after retiring the old key, before the rename",
        ),
        pytest.param(finished, "new", id="finish completed"),
    ],
)
def test_master_rotation_crash_at_any_point_loses_no_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop: Stop,
    active_after_crash: str,
) -> None:
    home = tmp_path / "home"
    keyring = load_keyring(home, {})
    old = keyring.active
    untouched = keyring.seal(VALUE, "c", "v1")
    new = begin_master_rotation(home)
    # The database committed the re-wrap of one row before the crash.
    rewrapped = keyring.rewrap(keyring.seal(VALUE, "c", "v2"), "c", "v2", new)

    stop(home, old, new, monkeypatch)
    after_crash = load_keyring(home, {})

    assert after_crash.active == {"old": old, "new": new}[active_after_crash]
    assert after_crash.key_ids == {old.key_id, new.key_id}
    assert after_crash.open(untouched, "c", "v1") == VALUE
    assert after_crash.open(rewrapped, "c", "v2") == VALUE

    # Restart the rotation from the top: begin reuses the pending key, finish completes.
    if (home / "master.key.new").exists():
        assert begin_master_rotation(home) == new
    finish_master_rotation(home, old, new)
    done = load_keyring(home, {})

    assert done.active == new
    assert done.open(untouched, "c", "v1") == VALUE
    assert done.open(rewrapped, "c", "v2") == VALUE
    assert not (home / "master.key.new").exists()
    assert sorted(p.name for p in (home / "master-keys").iterdir()) == [f"{old.key_id}.key"]


@posix_only
def test_master_rotation_writes_pending_and_retired_keys_0600(tmp_path: Path) -> None:
    old = load_keyring(tmp_path, {}).active
    new = begin_master_rotation(tmp_path)
    assert mode(tmp_path / "master.key.new") == 0o600

    finish_master_rotation(tmp_path, old, new)

    assert mode(tmp_path / "master.key") == 0o600
    assert mode(tmp_path / "master-keys") == 0o700
    assert mode(tmp_path / "master-keys" / f"{old.key_id}.key") == 0o600


def test_begin_master_rotation_reuses_the_pending_key_of_a_crashed_attempt(
    tmp_path: Path,
) -> None:
    load_keyring(tmp_path, {})

    first = begin_master_rotation(tmp_path)
    second = begin_master_rotation(tmp_path)

    assert first == second


def test_begin_master_rotation_without_a_master_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no master key"):
        begin_master_rotation(tmp_path)


def test_finish_master_rotation_refuses_keys_that_do_not_match_the_files(
    tmp_path: Path,
) -> None:
    old = load_keyring(tmp_path, {}).active
    new = begin_master_rotation(tmp_path)
    stranger = generate_master_key()

    with pytest.raises(ConfigError, match="expected"):
        finish_master_rotation(tmp_path, stranger, new)
    with pytest.raises(ConfigError, match="expected"):
        finish_master_rotation(tmp_path, old, stranger)

    assert load_keyring(tmp_path, {}).active == old
    assert not (tmp_path / "master-keys").exists()


def test_finish_master_rotation_without_begin_is_refused(tmp_path: Path) -> None:
    old = load_keyring(tmp_path, {}).active

    with pytest.raises(ConfigError, match="begin_master_rotation"):
        finish_master_rotation(tmp_path, old, generate_master_key())


# --- fingerprints ---------------------------------------------------------------------


def test_fingerprint_is_stable_across_a_master_rotation(tmp_path: Path) -> None:
    before = load_fingerprinter(tmp_path, {}).fingerprint(VALUE)
    old = load_keyring(tmp_path, {}).active
    finish_master_rotation(tmp_path, old, begin_master_rotation(tmp_path))

    after = load_fingerprinter(tmp_path, {}).fingerprint(VALUE)

    assert load_keyring(tmp_path, {}).active != old
    assert after == before


def test_fingerprint_has_the_documented_shape_and_differs_per_value() -> None:
    fingerprinter = Fingerprinter(os.urandom(32))

    a = fingerprinter.fingerprint(VALUE)
    b = fingerprinter.fingerprint(Secret(VALUE.reveal() + "x"))

    assert a.startswith("hmac-sha256:")
    assert len(a) == len("hmac-sha256:") + 32
    assert a != b
    assert VALUE.reveal() not in a


def test_fingerprint_depends_on_the_fingerprint_key() -> None:
    assert Fingerprinter(os.urandom(32)).fingerprint(VALUE) != Fingerprinter(
        os.urandom(32)
    ).fingerprint(VALUE)


@posix_only
def test_fingerprint_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    first = load_fingerprinter(tmp_path, {})
    second = load_fingerprinter(tmp_path, {})

    assert mode(tmp_path / "fingerprint.key") == 0o600
    assert first.key_id == second.key_id


@posix_only
def test_group_readable_fingerprint_key_file_is_refused(tmp_path: Path) -> None:
    load_fingerprinter(tmp_path, {})
    path = tmp_path / "fingerprint.key"
    path.chmod(0o640)

    with pytest.raises(ConfigError) as info:
        load_fingerprinter(tmp_path, {})

    assert info.value.path == str(path)
    assert "chmod 600" in str(info.value)


def test_fingerprint_key_from_env_is_used_and_invalid_one_refused(tmp_path: Path) -> None:
    raw = os.urandom(32)
    env = {"KEYSHIFT_FINGERPRINT_KEY": base64.b64encode(raw).decode()}

    assert load_fingerprinter(tmp_path, env).fingerprint(VALUE) == Fingerprinter(raw).fingerprint(
        VALUE
    )
    assert not (tmp_path / "fingerprint.key").exists()
    with pytest.raises(ConfigError) as info:
        load_fingerprinter(tmp_path, {"KEYSHIFT_FINGERPRINT_KEY": "short"})
    assert info.value.path == "KEYSHIFT_FINGERPRINT_KEY"


# --- redaction ------------------------------------------------------------------------


def encodings_of(raw: bytes) -> list[str]:
    return [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        raw.hex().upper(),
        repr(raw),
    ]


def test_reprs_never_show_key_bytes() -> None:
    master_raw, old_raw, fp_raw = os.urandom(32), os.urandom(32), os.urandom(32)
    keyring = Keyring(MasterKey(master_raw), [MasterKey(old_raw)])
    objects = [MasterKey(master_raw), keyring, Fingerprinter(fp_raw)]

    shown = " ".join(repr(o) + str(o) for o in objects)

    for raw in (master_raw, old_raw, fp_raw):
        for encoded in encodings_of(raw):
            assert encoded not in shown
    assert MasterKey(master_raw).key_id in repr(keyring)


def test_sealed_repr_shows_neither_ciphertext_nor_wrapped_key(keyring: Keyring) -> None:
    sealed = keyring.seal(VALUE, "c", "v")

    assert sealed.ciphertext.hex() not in repr(sealed)
    assert repr(sealed.wrapped_key) not in repr(sealed)
    assert sealed.master_key_id in repr(sealed)


def test_keys_are_not_picklable() -> None:
    key = generate_master_key()
    for obj in (key, Keyring(key), Fingerprinter(os.urandom(32))):
        with pytest.raises(TypeError, match="not picklable"):
            pickle.dumps(obj)


def test_master_key_refuses_a_key_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(b"x" * 16)


def test_sealed_is_frozen(keyring: Keyring) -> None:
    sealed: Sealed = keyring.seal(VALUE, "c", "v")

    with pytest.raises(AttributeError):
        sealed.master_key_id = "other"  # type: ignore[misc]
