"""Envelope encryption of secret values, master-key handling and version fingerprints.

Every value gets its own random 32-byte data key. The value is sealed with
AES-256-GCM under the data key, and the data key is wrapped (AES-256-GCM again)
by a master key. Both layers bind the row they belong to through associated data:

    value:    b"keyshift/v1/value/" + credential_id + b"/" + version_id
    data key: b"keyshift/v1/dek/"   + credential_id + b"/" + version_id

so a ciphertext or wrapped key copied to another row does not open there.

The master key comes from `KEYSHIFT_MASTER_KEY` or from `<home>/master.key`. A
`Keyring` holds the active key plus every older one still loaded, so values
wrapped before a master rotation keep opening while and after the store re-wraps
them. Master rotation only re-wraps data keys; value ciphertexts never change.

Fingerprints are HMAC-SHA256 under a separate key (`KEYSHIFT_FINGERPRINT_KEY` or
`<home>/fingerprint.key`), so they stay stable across master rotations and show
which version a consumer received without showing the value.

No key or value ever appears in a `repr` or an exception message; keys are named
by their `key_id`, a truncated hash that reveals nothing about the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError, DecryptionError

__all__ = [
    "ENV_FINGERPRINT_KEY",
    "ENV_MASTER_KEY",
    "ENV_NEW_MASTER_KEY",
    "ENV_OLD_MASTER_KEYS",
    "FINGERPRINT_KEY_FILE",
    "MASTER_KEY_FILE",
    "NEW_MASTER_KEY_FILE",
    "RETIRED_MASTER_KEYS_DIR",
    "Fingerprinter",
    "Keyring",
    "MasterKey",
    "Sealed",
    "begin_master_rotation",
    "finish_master_rotation",
    "generate_master_key",
    "load_fingerprinter",
    "load_keyring",
    "new_master_key_from_env",
]

ENV_MASTER_KEY: Final = "KEYSHIFT_MASTER_KEY"
ENV_OLD_MASTER_KEYS: Final = "KEYSHIFT_OLD_MASTER_KEYS"
ENV_NEW_MASTER_KEY: Final = "KEYSHIFT_NEW_MASTER_KEY"
ENV_FINGERPRINT_KEY: Final = "KEYSHIFT_FINGERPRINT_KEY"

MASTER_KEY_FILE: Final = "master.key"
NEW_MASTER_KEY_FILE: Final = "master.key.new"
RETIRED_MASTER_KEYS_DIR: Final = "master-keys"
FINGERPRINT_KEY_FILE: Final = "fingerprint.key"

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_BASE64_HINT: Final = "must be base64 of 32 bytes"
_FINGERPRINT_PREFIX: Final = "hmac-sha256:"


# --- keys -----------------------------------------------------------------------------


def _key_id(label: bytes, key: bytes) -> str:
    return hashlib.sha256(label + key).hexdigest()[:16]


class MasterKey:
    """A 32-byte AES-256 key that wraps data keys. `key_id` names it; `repr` never shows it.

    Two master keys are equal when their bytes are (compared in constant time).
    """

    __slots__ = ("_key", "_key_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError("a master key is exactly 32 bytes")
        self._key = key
        self._key_id = _key_id(b"keyshift-master-key-id", key)

    @classmethod
    def from_base64(cls, text: str) -> MasterKey:
        """Parse urlsafe or standard base64 (padding optional); ValueError if not 32 bytes."""
        return cls(_decode_key(text))

    @property
    def key_id(self) -> str:
        """First 16 hex chars of sha256(b"keyshift-master-key-id" + key); safe to log."""
        return self._key_id

    def to_base64(self) -> str:
        """The key as urlsafe base64. Only for writing it to its key file or to the operator."""
        return base64.urlsafe_b64encode(self._key).decode("ascii")

    def _aead(self) -> AESGCM:
        return AESGCM(self._key)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self._key_id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MasterKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(("MasterKey", self._key_id))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a MasterKey is not picklable")


def generate_master_key() -> MasterKey:
    """A new master key from the operating system's CSPRNG."""
    return MasterKey(secrets.token_bytes(KEY_BYTES))


def _decode_key(text: str) -> bytes:
    """Decode urlsafe or standard base64 of exactly 32 bytes; ValueError otherwise.

    The error never quotes the input: it may be a key with a typo in it.
    """
    compact = "".join(text.split())
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_BASE64_HINT) from None
    if len(raw) != KEY_BYTES:
        raise ValueError(_BASE64_HINT)
    return raw


def _key_from_setting(name: str, text: str) -> bytes:
    try:
        return _decode_key(text)
    except ValueError:
        # `from None`: the chained error adds nothing and must not carry the text.
        raise ConfigError(name, _BASE64_HINT) from None


# --- sealing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """A value at rest: what the store keeps in a version's row.

    `ciphertext` is nonce || AES-GCM(data key, value); `wrapped_key` is
    nonce || AES-GCM(master key, data key); `master_key_id` names the master key.
    """

    ciphertext: bytes
    wrapped_key: bytes
    master_key_id: str

    def __repr__(self) -> str:
        return (
            f"Sealed(master_key_id={self.master_key_id!r}, "
            f"ciphertext=<{len(self.ciphertext)} bytes>, "
            f"wrapped_key=<{len(self.wrapped_key)} bytes>)"
        )


def _row_ids(credential_id: str, version_id: str) -> bytes:
    # "/" separates the two ids in the associated data; allowing it inside an id
    # would make ("a/b", "c") and ("a", "b/c") bind to the same row.
    for name, value in (("credential_id", credential_id), ("version_id", version_id)):
        if not value or "/" in value:
            raise ValueError(f"{name} must be non-empty and contain no '/'")
    return credential_id.encode() + b"/" + version_id.encode()


def _value_aad(row: bytes) -> bytes:
    return b"keyshift/v1/value/" + row


def _dek_aad(row: bytes) -> bytes:
    return b"keyshift/v1/dek/" + row


def _split(blob: bytes) -> tuple[bytes, bytes]:
    return blob[:NONCE_BYTES], blob[NONCE_BYTES:]


def _wrap(master: MasterKey, data_key: bytes, row: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + master._aead().encrypt(nonce, data_key, _dek_aad(row))


class Keyring:
    """The active master key plus older ones, by `key_id`.

    New values are sealed under the active key; a sealed value opens under
    whichever loaded key its `master_key_id` names, so values wrapped before a
    master rotation keep opening while and after the store re-wraps them.
    """

    __slots__ = ("_active", "_keys")

    def __init__(self, active: MasterKey, older: Iterable[MasterKey] = ()) -> None:
        self._active = active
        self._keys: dict[str, MasterKey] = {k.key_id: k for k in older}
        self._keys[active.key_id] = active

    @property
    def active(self) -> MasterKey:
        """The key new values are sealed under."""
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of every loaded key, the active one included."""
        return frozenset(self._keys)

    def seal(self, value: Secret, credential_id: str, version_id: str) -> Sealed:
        """Encrypt `value` for the row (credential_id, version_id) under a fresh data key."""
        row = _row_ids(credential_id, version_id)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(NONCE_BYTES)
        # surrogatepass: any str a Secret holds round-trips, and an encoding error can
        # never quote a character of the value.
        plaintext = value.reveal().encode("utf-8", "surrogatepass")
        ciphertext = nonce + AESGCM(data_key).encrypt(nonce, plaintext, _value_aad(row))
        return Sealed(
            ciphertext=ciphertext,
            wrapped_key=_wrap(self._active, data_key, row),
            master_key_id=self._active.key_id,
        )

    def open(self, sealed: Sealed, credential_id: str, version_id: str) -> Secret:
        """Decrypt a value sealed for exactly this row.

        Raises DecryptionError if its master key is not loaded, or if the value or
        its wrapped key was tampered with or belongs to another row.
        """
        row = _row_ids(credential_id, version_id)
        data_key = self._unwrap(sealed, row, credential_id, version_id)
        nonce, body = _split(sealed.ciphertext)
        try:
            plaintext = AESGCM(data_key).decrypt(nonce, body, _value_aad(row))
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(
                f"credential {credential_id} version {version_id}: "
                "value does not authenticate (tampered, or moved from another row)"
            ) from exc
        return Secret(plaintext.decode("utf-8", "surrogatepass"))

    def rewrap(self, sealed: Sealed, credential_id: str, version_id: str, new: MasterKey) -> Sealed:
        """The same value with its data key wrapped under `new`; `ciphertext` is unchanged.

        Idempotent: a value already wrapped under `new` comes back unchanged once
        its wrapped key is checked, so a re-wrap pass interrupted by a crash can be
        run again from the start. `new` need not be in the keyring.
        """
        row = _row_ids(credential_id, version_id)
        keys = {**self._keys, new.key_id: new}
        data_key = self._unwrap(sealed, row, credential_id, version_id, keys)
        if sealed.master_key_id == new.key_id:
            return sealed
        return Sealed(
            ciphertext=sealed.ciphertext,
            wrapped_key=_wrap(new, data_key, row),
            master_key_id=new.key_id,
        )

    def _unwrap(
        self,
        sealed: Sealed,
        row: bytes,
        credential_id: str,
        version_id: str,
        keys: Mapping[str, MasterKey] | None = None,
    ) -> bytes:
        master = (self._keys if keys is None else keys).get(sealed.master_key_id)
        if master is None:
            raise DecryptionError(
                f"credential {credential_id} version {version_id}: master key "
                f"{sealed.master_key_id} is not loaded (loaded: {', '.join(sorted(self._keys))})"
            )
        nonce, body = _split(sealed.wrapped_key)
        try:
            data_key = master._aead().decrypt(nonce, body, _dek_aad(row))
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(
                f"credential {credential_id} version {version_id}: data key does not "
                f"unwrap under master key {master.key_id} (tampered, or moved from another row)"
            ) from exc
        if len(data_key) != KEY_BYTES:
            raise DecryptionError(
                f"credential {credential_id} version {version_id}: data key has the wrong size"
            )
        return data_key

    def __repr__(self) -> str:
        older = sorted(k for k in self._keys if k != self._active.key_id)
        return f"Keyring(active={self._active.key_id!r}, older={older!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Keyring is not picklable")


# --- fingerprints ---------------------------------------------------------------------


class Fingerprinter:
    """Computes a version's fingerprint: an HMAC of its value under a key of its own.

    The key is separate from every master key, so fingerprints in evidence and
    audit entries stay the same when the master key rotates.
    """

    __slots__ = ("_key", "_key_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError("a fingerprint key is exactly 32 bytes")
        self._key = key
        self._key_id = _key_id(b"keyshift-fingerprint-key-id", key)

    @property
    def key_id(self) -> str:
        """Names the fingerprint key without revealing it."""
        return self._key_id

    def fingerprint(self, value: Secret) -> str:
        """`hmac-sha256:` followed by the first 32 hex chars of HMAC-SHA256(key, value)."""
        digest = hmac.new(
            self._key, value.reveal().encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()
        return _FINGERPRINT_PREFIX + digest[:32]

    def __repr__(self) -> str:
        return f"Fingerprinter(key_id={self._key_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Fingerprinter is not picklable")


# --- key files ------------------------------------------------------------------------


def _ensure_dir(path: Path) -> None:
    # 0o700: the directory holds key files; umask can only narrow it further.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    """The 32 key bytes in `path`, refusing a file that group or others may read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot open key file: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        # POSIX only: Windows reports synthetic mode bits; its ACLs are not checked here.
        if os.name == "posix" and mode & 0o077:
            raise ConfigError(
                str(path),
                f"key file mode {mode & 0o777:04o} lets group or others read it; "
                f"run `chmod 600 {path}`",
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read(4096)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read key file: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        return _decode_key(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(str(path), f"key file {_BASE64_HINT}") from None


def _write_key_file_once(path: Path, key: bytes) -> bytes:
    """Create `path` holding `key` (0600) unless it exists; return the key the file holds.

    The key is written to a private temporary file and hard-linked into place, so
    `path` never exists half-written: a reader (or a second process racing on
    first run) sees either no file or the whole key. Linking fails if `path`
    exists, so two racers agree on one key.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        try:
            os.write(fd, base64.urlsafe_b64encode(key) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            # Another process (or an earlier run) created it first; its key wins.
            return _read_key_file(path)
    finally:
        # A crash before this line leaves a stray temporary file: either a key
        # nothing was ever sealed under, or a second name of `path`. Neither is needed.
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return key


def _create_or_read_key_file(path: Path) -> bytes:
    if path.exists():
        return _read_key_file(path)
    return _write_key_file_once(path, secrets.token_bytes(KEY_BYTES))


# --- loading --------------------------------------------------------------------------


def load_keyring(home: Path, env: Mapping[str, str]) -> Keyring:
    """The keyring from the environment if `KEYSHIFT_MASTER_KEY` is set, else from `home`.

    Environment: `KEYSHIFT_MASTER_KEY` is active; `KEYSHIFT_OLD_MASTER_KEYS`
    (comma-separated) and `KEYSHIFT_NEW_MASTER_KEY` are loaded as extra keys.
    Files: `home/master.key` is active (created 0600 on first run);
    `home/master.key.new` and `home/master-keys/*.key` are loaded as extra keys.
    Raises ConfigError naming the variable or file that is wrong.
    """
    if ENV_MASTER_KEY in env:
        return _keyring_from_env(env)
    return _keyring_from_files(home)


def _keyring_from_env(env: Mapping[str, str]) -> Keyring:
    active = MasterKey(_key_from_setting(ENV_MASTER_KEY, env[ENV_MASTER_KEY]))
    older: list[MasterKey] = []
    items = [i for i in env.get(ENV_OLD_MASTER_KEYS, "").split(",") if i.strip()]
    for n, item in enumerate(items):
        older.append(MasterKey(_key_from_setting(f"{ENV_OLD_MASTER_KEYS}[{n}]", item)))
    if env.get(ENV_NEW_MASTER_KEY, "").strip():
        # Recovery: an environment rotation re-wraps rows under KEYSHIFT_NEW_MASTER_KEY
        # before the operator promotes it to KEYSHIFT_MASTER_KEY. A restart in between
        # (new key still only in KEYSHIFT_NEW_MASTER_KEY) must open those rows too.
        # Equal to the active key is fine here: after promotion the operator may not
        # have unset it yet, and the keyring holds each key once.
        older.append(MasterKey(_key_from_setting(ENV_NEW_MASTER_KEY, env[ENV_NEW_MASTER_KEY])))
    return Keyring(active, older)


def _keyring_from_files(home: Path) -> Keyring:
    _ensure_dir(home)
    active = MasterKey(_create_or_read_key_file(home / MASTER_KEY_FILE))
    older: list[MasterKey] = []
    pending = home / NEW_MASTER_KEY_FILE
    if pending.exists():
        # Recovery: a master rotation began. Rows may already be re-wrapped under the
        # new key (the database commit happened) while master.key still holds the old
        # one (finish_master_rotation did not run or crashed before its rename).
        # Loading both keys means every row opens whichever side of the crash it is on.
        older.append(MasterKey(_read_key_file(pending)))
    retired = home / RETIRED_MASTER_KEYS_DIR
    if retired.is_dir():
        for path in sorted(retired.glob("*.key")):
            key = MasterKey(_read_key_file(path))
            if key.key_id != path.stem:
                raise ConfigError(
                    str(path), f"holds master key {key.key_id}, not the one its name says"
                )
            older.append(key)
    return Keyring(active, older)


def new_master_key_from_env(env: Mapping[str, str]) -> MasterKey:
    """The master key to rotate to, from `KEYSHIFT_NEW_MASTER_KEY`.

    Raises ConfigError if it is unset, not base64 of 32 bytes, or equal to
    `KEYSHIFT_MASTER_KEY`.
    """
    text = env.get(ENV_NEW_MASTER_KEY, "")
    if not text.strip():
        raise ConfigError(
            ENV_NEW_MASTER_KEY,
            "is not set; set it to a new key (base64 of 32 bytes) to rotate the master key "
            f"held in {ENV_MASTER_KEY}",
        )
    new = MasterKey(_key_from_setting(ENV_NEW_MASTER_KEY, text))
    current = env.get(ENV_MASTER_KEY)
    if current is not None and new == MasterKey(_key_from_setting(ENV_MASTER_KEY, current)):
        raise ConfigError(ENV_NEW_MASTER_KEY, f"is the same key as {ENV_MASTER_KEY}")
    return new


def load_fingerprinter(home: Path, env: Mapping[str, str]) -> Fingerprinter:
    """The fingerprinter from `KEYSHIFT_FINGERPRINT_KEY` if set, else `home/fingerprint.key`.

    The file is created 0600 on first run; a file group or others may read is refused.
    """
    if ENV_FINGERPRINT_KEY in env:
        return Fingerprinter(_key_from_setting(ENV_FINGERPRINT_KEY, env[ENV_FINGERPRINT_KEY]))
    _ensure_dir(home)
    return Fingerprinter(_create_or_read_key_file(home / FINGERPRINT_KEY_FILE))


# --- master rotation (key files) ------------------------------------------------------
#
# The sequence, and why a crash at any point loses nothing:
#   1. begin_master_rotation   writes master.key.new. load_keyring loads it from now on.
#   2. the store re-wraps rows under the new key (Keyring.rewrap), committing as it goes.
#   3. finish_master_rotation  copies the old key to master-keys/<id>.key, then renames
#                              master.key.new over master.key.
# Until the rename, master.key (old) and master.key.new (new) are both loaded; after
# it, master.key (new) and the retired copy (old) are. Every row opens at every point.


def begin_master_rotation(home: Path) -> MasterKey:
    """Write a new master key to `home/master.key.new` (0600) and return it.

    Idempotent: if the file exists from an earlier attempt, its key is returned, so
    rows that attempt already re-wrapped stay under the key that will be promoted.
    """
    current = home / MASTER_KEY_FILE
    if not current.exists():
        raise ConfigError(str(current), "no master key to rotate; load the keyring first")
    # Recovery: an earlier attempt crashed after writing master.key.new, maybe after
    # re-wrapping some rows under it. Reusing the file (never replacing it) keeps them
    # openable; _create_or_read_key_file writes it only if it is absent.
    return MasterKey(_create_or_read_key_file(home / NEW_MASTER_KEY_FILE))


def finish_master_rotation(home: Path, old: MasterKey, new: MasterKey) -> None:
    """Retire `old` to `home/master-keys/<old.key_id>.key` and make `new` the active key.

    Call it after every row is re-wrapped under `new` and committed. Idempotent: a
    run that crashed part-way is completed by running it again.
    Raises ConfigError if the key files hold neither `old` nor `new` as expected.
    """
    current_path = home / MASTER_KEY_FILE
    pending_path = home / NEW_MASTER_KEY_FILE
    retired_dir = home / RETIRED_MASTER_KEYS_DIR
    retired_path = retired_dir / f"{old.key_id}.key"

    current = MasterKey(_read_key_file(current_path))
    if current == new and not pending_path.exists():
        # Recovery: an earlier run got past the rename; only the retired copy may be
        # missing if the files were edited by hand since. Write it if so.
        _ensure_dir(retired_dir)
        _write_key_file_once(retired_path, old._key)
        return
    if current != old:
        raise ConfigError(
            str(current_path),
            f"holds master key {current.key_id}, expected {old.key_id} (or {new.key_id} "
            "once rotated)",
        )
    if not pending_path.exists():
        raise ConfigError(str(pending_path), "is missing; run begin_master_rotation first")
    pending = MasterKey(_read_key_file(pending_path))
    if pending != new:
        raise ConfigError(
            str(pending_path), f"holds master key {pending.key_id}, expected {new.key_id}"
        )

    # Retire the old key before the rename: if we crash between the two, master.key
    # still holds it, so a duplicate copy costs nothing; the other order would leave a
    # window with the old key in no file at all.
    _ensure_dir(retired_dir)
    # Recovery: a rerun after a crash finds the retired copy already there;
    # _write_key_file_once keeps it and returns what it holds, which we check.
    if not hmac.compare_digest(_write_key_file_once(retired_path, old._key), old._key):
        raise ConfigError(str(retired_path), f"holds another key than master key {old.key_id}")
    os.replace(pending_path, current_path)
    # The rename is durable only once the directory entry is on disk.
    _fsync_dir(home)
