"""`file`: write the value at one key of a JSON, YAML, env or ini file on this host, or
a certificate version's key, certificate and chain as whole PEM or PKCS#12 files.

Keys use ASP.NET's `:` for nesting (`Entra:ClientSecret`): nested objects in JSON
and YAML, `Section:key` in ini, `Entra__ClientSecret` in env files. Everything
else in the file stays as it was, in its order. The file is replaced atomically
(temp file in the same directory, fsync, rename, fsync of the directory) and keeps
its mode and owner; a new file is created with mode 0600.

Certificates (`file_format: pem`): `key_path` gets the private key (a new file is
0600), `path` the certificate (with `fullchain`, followed by the chain) and `chain_path`
the chain (new files 0644). `file_format: pkcs12` writes key, certificate and chain in
one bundle at `path` (0600) encrypted with the password `password_from` names. An
existing file keeps its mode and owner, except that a key file or bundle loses any
permission for others. Each file is replaced atomically, one after the other (key
first); the consumer's reload, ordered after this action, reads them together.

What verifiers trust is kept beside whatever else the file holds: a JWKS (`jwks`), a CA
bundle (`pem_bundle`), a certificate credential's accepted thumbprints (`thumbprints`:
whole lines, or a JSON array or env value at one key). They are trust actions: published
before the signers, withdrawn from just before the old version is revoked.

Known limits: YAML and ini comments are not kept (PyYAML and configparser drop
them); env-file comments, blank lines and order are. Files are POSIX files.
"""

from __future__ import annotations

import configparser
import contextlib
import errno
import io
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from keyshift.context import PluginContext
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError
from keyshift.sources import SecretRef
from keyshift.targets import base, jwks
from keyshift.targets.base import (
    FULLCHAIN,
    BaseTarget,
    Delivery,
    PreflightResult,
    Readiness,
    StepResult,
    field_value,
    key_entries,
)
from keyshift.targets.thumbprints import ThumbprintSpec, accepted

FileFormat = Literal["json", "yaml", "env", "ini"]
"""Formats that hold keys, each set to a field of the version (the host agent's too)."""
WHOLE_FILE_FORMATS: Final = ("pem", "pkcs12", "jwks", "pem_bundle", "thumbprints")
TRUST_FORMATS: Final = ("jwks", "pem_bundle", "thumbprints")
"""Formats that hold what verifiers trust (public keys, CA certificates, certificate
thumbprints), never a secret."""
TargetFileFormat = Literal[
    "json", "yaml", "env", "ini", "pem", "pkcs12", "jwks", "pem_bundle", "thumbprints"
]
"""Every format the `file` target writes (one Literal, so a bad one is one error)."""

KEY_SEPARATOR: Final = ":"
"""Separates nesting levels in `key`, as in ASP.NET configuration keys."""
ENV_SEPARATOR: Final = "__"
"""What `:` becomes in an env file (ASP.NET's environment variable convention)."""
NEW_FILE_MODE: Final = 0o600
"""Mode of a file this target creates: readable by its owner only."""
PUBLIC_FILE_MODE: Final = 0o644
"""Mode of a new certificate or chain file: public, readable by every process."""
NO_OTHERS: Final = 0o7770
"""Mask for the mode of a file holding a private key: nothing for others, ever."""

_BOM: Final = "\ufeff"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_ENV_ASSIGNMENT = re.compile(
    r"(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)[ \t]*(?P<eq>=)?"
)
# An unquoted env value that holds any of these is written in double quotes.
_ENV_NEEDS_QUOTES = frozenset(" \t\r\n#\"'$\\`")
_ENV_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}
# errnos after which the same write may succeed later (full disk, busy device).
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETXTBSY, errno.EIO}
)


class ThumbprintList(ThumbprintSpec):
    """`file_format: thumbprints`: where in the file the accepted list goes and how each
    thumbprint is written."""

    format: Literal["lines", "json", "env"] = "lines"
    """`lines`: the whole file, one thumbprint a line (`#` comment lines kept first).
    `json`: a JSON array at `key`; `env`: a comma-separated value of the variable `key`.
    Every other key of a JSON or env file stays as it was."""
    key: str | None = Field(default=None, min_length=1)
    """`json`, `env`: where the list goes; `:` nests (`Relay:AcceptedThumbprints`, in an
    env file `Relay__AcceptedThumbprints`)."""

    @model_validator(mode="after")
    def _key_fits_format(self) -> ThumbprintList:
        if self.format == "lines":
            if self.key is not None:
                raise ValueError("key is for format json or env; lines writes the whole file")
            return self
        if self.key is None:
            raise ValueError(f"format {self.format} needs key (where the list goes)")
        _check_key(self.key, self.format)
        return self


class FileConfig(BaseModel):
    """Where the value goes: a file, the key (or keys) inside it and the file's format."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        loc_by_alias=False,
    )

    path: str = Field(alias="target_path", min_length=1)
    """The file to write. A symlink is followed; the file it points to is replaced. With
    `pem`, the certificate file; with `pkcs12`, the bundle."""
    key: str | None = Field(default=None, alias="secret_key", min_length=1)
    """Where the value goes; `:` nests (`Entra:ClientSecret`). In ini files `Section:key`."""
    keys: dict[str, str] | None = None
    """Instead of `key`: several keys, each mapped to `value` (or `password`) or to a version
    attribute such as `username`, e.g. `{DB_USER: username, DB_PASSWORD: password}`. A
    certificate version has `private_key`, `certificate`, `chain` and `fullchain`."""
    file_format: TargetFileFormat
    """`json`, `yaml`, `env`, `ini`: set keys in the file. `pem`, `pkcs12`: write a
    certificate version's files whole (no `key` or `keys`). `jwks`: keep a JWKS document
    holding a signing key's public keys that verifiers must accept (no `key` or `keys`).
    `pem_bundle`: keep a CA bundle (concatenated PEM certificates) holding a trust_bundle
    credential's CAs that verifiers must trust, beside any other certificate in it.
    `thumbprints`: keep the list of a certificate credential's thumbprints that verifiers
    accept (`thumbprints:` says where and how), beside any other entry in it."""
    create: bool = True
    """Create the file (mode 0600; 0644 for a certificate or chain) when it does not
    exist; otherwise a missing file fails."""
    key_path: str | None = Field(default=None, min_length=1)
    """`pem`: the file that gets the private key (required)."""
    chain_path: str | None = Field(default=None, min_length=1)
    """`pem`: the file that gets the CA chain, if the consumer wants it apart."""
    fullchain: bool = False
    """`pem`: `path` gets the certificate followed by the chain (nginx's `ssl_certificate`)."""
    password_from: SecretRef | None = None
    """`pkcs12`: the bundle's password, `env:NAME`, `file:/path` or `credential:NAME`
    (required)."""
    thumbprints: ThumbprintList | None = None
    """`thumbprints`: the list's `format` (`lines`, `json`, `env`), its `key`, and each
    thumbprint's `algorithm` (`sha256`, `sha1`) and `encoding` (`hex`, `hex_upper`,
    `hex_upper_colons`, `base64url`). Default: lines of lowercase SHA-256 hex."""

    @model_validator(mode="after")
    def _keys_fit_format(self) -> FileConfig:
        if self.thumbprints is not None and self.file_format != "thumbprints":
            raise ValueError(f"thumbprints is for file_format thumbprints, not {self.file_format}")
        if self.file_format in WHOLE_FILE_FORMATS:
            _check_whole_file(self)
            return self
        for name in ("key_path", "chain_path", "password_from"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is for file_format pem or pkcs12, not {self.file_format}")
        if self.fullchain:
            raise ValueError(f"fullchain is for file_format pem, not {self.file_format}")
        for key in self.entries():
            _check_key(key, self.file_format)
        return self

    def entries(self) -> dict[str, str]:
        """Every file key and the field of the version written there (none for `pem` and
        `pkcs12`, which write whole files)."""
        if self.file_format in WHOLE_FILE_FORMATS:
            return {}
        return key_entries(self.key, self.keys)

    def whole_files(self) -> list[tuple[str, str, int]]:
        """`pem`: (path, field, mode of a new file) of each file written, key first."""
        if self.file_format != "pem" or self.key_path is None:
            return []
        files = [
            (self.key_path, "private_key", NEW_FILE_MODE),
            (self.path, FULLCHAIN if self.fullchain else "certificate", PUBLIC_FILE_MODE),
        ]
        if self.chain_path is not None:
            files.append((self.chain_path, "chain", PUBLIC_FILE_MODE))
        return files


def _check_whole_file(config: FileConfig) -> None:
    fmt = config.file_format
    if config.key is not None or config.keys is not None:
        raise ValueError(f"file_format {fmt} writes whole files: give no key or keys")
    if fmt in TRUST_FORMATS:
        for name in ("key_path", "chain_path", "password_from"):
            if getattr(config, name) is not None:
                raise ValueError(f"{name} is for file_format pem or pkcs12, not {fmt}")
        if config.fullchain:
            raise ValueError(f"fullchain is for file_format pem, not {fmt}")
        return
    if fmt == "pem":
        if config.key_path is None:
            raise ValueError("file_format pem needs key_path (where the private key goes)")
        if config.password_from is not None:
            raise ValueError("password_from is for file_format pkcs12, not pem")
        paths = [p for p, _, _ in config.whole_files()]
        real = [os.path.normpath(p) for p in paths]
        if len(set(real)) != len(real):
            raise ValueError("path, key_path and chain_path must be three different files")
        return
    if config.password_from is None:
        raise ValueError("file_format pkcs12 needs password_from (the bundle's password)")
    for name in ("key_path", "chain_path"):
        if getattr(config, name) is not None:
            raise ValueError(f"{name} is for file_format pem, not pkcs12")
    if config.fullchain:
        raise ValueError("fullchain is for file_format pem, not pkcs12")


def _check_key(key: str, file_format: str) -> None:
    parts = key.split(KEY_SEPARATOR)
    if any(not part for part in parts):
        raise ValueError(f"key '{key}' has an empty part between ':' separators")
    if any(ch in key for ch in "\r\n"):
        raise ValueError("key must not contain a line break")
    if file_format == "ini":
        if len(parts) != 2:
            raise ValueError(
                f"key '{key}' must be 'Section:key' for an ini file "
                "(exactly one ':' between the section and the key)"
            )
        section, option = parts
        if any(ch in section for ch in "[]") or "=" in option or option != option.strip():
            raise ValueError(f"key '{key}' is not a valid ini section and key")
    elif file_format == "env" and not _ENV_NAME.fullmatch(env_name(key)):
        raise ValueError(
            f"key '{key}' does not make a valid env variable name "
            "(letters, digits, '_', '.', '-'; ':' becomes '__')"
        )


def env_name(key: str) -> str:
    """The env-file name of a key: `Entra:ClientSecret` -> `Entra__ClientSecret`."""
    return key.replace(KEY_SEPARATOR, ENV_SEPARATOR)


class KeyFile:
    """Keys of one file on this host: check that they could be written, set or remove them.

    The core the `file` target and the host agent share. `path` may be a symlink; the
    file it points to is replaced. Messages name the path, format and keys, never a value.
    """

    def __init__(self, path: str, file_format: str, keys: list[str], *, create: bool) -> None:
        if file_format not in _CODECS:
            raise PermanentError(f"{path}: unknown file format {file_format!r}")
        for key in keys:
            try:
                _check_key(key, file_format)
            except ValueError as exc:
                raise PermanentError(f"{path}: {exc}") from None
        self.name = path
        self.file_format = file_format
        self.create = create
        self._path = Path(path)
        self._codec = _CODECS[file_format]
        self._keys = ", ".join(keys)

    def check(self) -> None:
        """Raise PermanentError (or TransientError) unless `apply` could write the file:
        writable, owner keepable, and parseable in its format. Changes nothing."""
        self._check_writable()
        if self._path.exists():
            self._load()

    def exists(self) -> bool:
        return self.real_path().exists()

    def read(self, key: str) -> Any:
        """What the file holds at `key` (None when the key or the file is missing)."""
        path = self.real_path()
        if not path.exists():
            return None
        found = self._codec.get(self._load()[0], tuple(key.split(KEY_SEPARATOR)))
        return None if found is _MISSING else found

    def apply(self, values: Mapping[str, str | list[str] | None]) -> bool:
        """Set each key (`Section:key` or `:`-nested) to its text (a JSON or YAML file's
        also to a list of texts), or remove it for None, in one atomic write; return
        whether the file changed. Removing a nested key also removes the parents it
        leaves empty. Idempotent."""
        self._check_writable()
        path = self.real_path()
        parts_values = {tuple(key.split(KEY_SEPARATOR)): value for key, value in values.items()}
        if not path.exists():
            if all(v is None for v in parts_values.values()):
                return False  # nothing to remove from a file that is not there
            document, bom = self._codec.load("", self._describe()), False
        else:
            document, bom = self._load()
        changed = False
        for parts, value in parts_values.items():
            if value is None:
                changed |= self._codec.remove(document, parts)
            elif self._codec.get(document, parts) != value:
                self._codec.set(document, parts, value, self._describe())
                changed = True
        if not changed:
            return False
        # Keep a byte order mark if the file had one (Visual Studio writes appsettings.json so).
        text = (_BOM if bom else "") + self._codec.dump(document)
        _atomic_write(path, text.encode("utf-8"), self.name)
        return True

    def real_path(self) -> Path:
        """The file written: `path` with every symlink followed."""
        # Follow a symlink so the link survives and the file it points to is replaced.
        return Path(os.path.realpath(self._path))

    def _describe(self) -> str:
        return f"{self.name} ({self.file_format}, key {self._keys})"

    def _load(self) -> tuple[Any, bool]:
        """The parsed file and whether it started with a byte order mark."""
        try:
            raw = self.real_path().read_bytes()
        except OSError as exc:
            raise _os_error(f"cannot read {self.name}", exc) from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:
            # Raised outside the handler so no library error (which quotes bytes) rides along.
            raise PermanentError(f"{self.name} does not parse as {self.file_format}: not UTF-8")
        document = self._codec.load(text.removeprefix(_BOM), self._describe())
        return document, text.startswith(_BOM)

    def _check_writable(self) -> None:
        """Raise PermanentError unless publish could replace (or create) the file."""
        check_replaceable(self.real_path(), self.name, create=self.create)


def check_replaceable(path: Path, name: str, *, create: bool) -> None:
    """Raise PermanentError unless this process could replace the file at `path` (every
    symlink followed) keeping its owner, or create it when it is missing and `create`."""
    directory = path.parent
    if path.exists():
        if not path.is_file():
            raise PermanentError(f"{name} is not a regular file")
        if not os.access(path, os.W_OK):
            raise PermanentError(f"{name} is not writable by this process")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermanentError(
                f"directory {directory} is not writable, so {name} cannot be replaced"
            )
        _check_owner_keepable(path, name)
        return
    if not create:
        raise PermanentError(f"{name} does not exist and create is false")
    if not directory.is_dir():
        raise PermanentError(f"directory {directory} of {name} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermanentError(f"directory {directory} is not writable, so {name} cannot be created")


class WholeFiles:
    """A certificate version's files on this host, each written whole: `pem` (key,
    certificate, chain) or `pkcs12` (one bundle). Messages name paths, never contents."""

    def __init__(self, config: FileConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    def paths(self) -> list[str]:
        if self.config.file_format == "pem":
            return [p for p, _, _ in self.config.whole_files()]
        return [self.config.path]

    def check(self) -> None:
        """Raise PermanentError unless every file could be written. Changes nothing."""
        for name in self.paths():
            check_replaceable(Path(os.path.realpath(name)), name, create=self.config.create)

    def apply(self, wanted: Delivery | None, failed: Delivery | None = None) -> bool:
        """Make the files hold `wanted`; with None, remove each file that still holds what
        `failed` wrote (a file changed since is someone else's and stays). Return whether
        anything changed. Idempotent: a file already right is not rewritten."""
        self.check()
        if self.config.file_format == "pkcs12":
            return self._bundle(wanted, failed)
        changed = False
        for name, field, mode in self.config.whole_files():
            path = Path(os.path.realpath(name))
            private = field == "private_key"
            current = _read_or_none(path, name)
            if wanted is not None:
                data = field_value(wanted, field).encode("utf-8")
                if current != data:
                    _atomic_write(path, data, name, new_mode=mode, private=private)
                    changed = True
            elif failed is not None and current == field_value(failed, field).encode("utf-8"):
                _remove(path, name)
                changed = True
        return changed

    def _bundle(self, wanted: Delivery | None, failed: Delivery | None) -> bool:
        # Imported here: cryptography is needed for PKCS#12 only, and the host agent,
        # which shares this module, never writes one.
        from keyshift.targets.certificate import pkcs12_bundle, pkcs12_holds  # noqa: PLC0415

        name = self.config.path
        path = Path(os.path.realpath(name))
        password = self.context.secret("config.password_from", str(self.config.password_from))
        current = _read_or_none(path, name)
        if wanted is not None:
            if current is not None and pkcs12_holds(current, password, wanted):
                return False
            data = pkcs12_bundle(wanted, password)
            _atomic_write(path, data, name, new_mode=NEW_FILE_MODE, private=True)
            return True
        if failed is not None and current is not None and pkcs12_holds(current, password, failed):
            _remove(path, name)
            return True
        return False


def _read_or_none(path: Path, name: str) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_error(f"cannot read {name}", exc) from exc


def _remove(path: Path, name: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _os_error(f"cannot remove {name}", exc) from exc
    _fsync_directory(path.parent)


class JwksFile:
    """A JWKS document on this host that verifiers read (`file_format: jwks`): the public
    keys of a signing key that must verify now, beside any other keys the document holds
    (`keyshift.targets.jwks`). Written atomically; a new file is 0644 (public keys)."""

    def __init__(self, config: FileConfig) -> None:
        self.config = config

    def check(self) -> None:
        """Raise PermanentError unless the document could be rewritten. Changes nothing."""
        path = Path(os.path.realpath(self.config.path))
        check_replaceable(path, self.config.path, create=self.config.create)
        current = _read_or_none(path, self.config.path)
        jwks.parse(current.decode("utf-8", "replace") if current else None, self.config.path)

    def apply(self, add: list[Delivery], remove: list[Delivery]) -> dict[str, Any]:
        """Make the document hold the keys of `add` and none of `remove`; return what it
        holds now (kids) and whether it changed. Idempotent."""
        self.check()
        name = self.config.path
        path = Path(os.path.realpath(name))
        current = _read_or_none(path, name)
        text, wanted = jwks.rewritten(
            current.decode("utf-8") if current else None, add, remove, name
        )
        data = text.encode("utf-8")
        changed = current != data
        if changed:
            _atomic_write(path, data, name, new_mode=PUBLIC_FILE_MODE)
        return {"path": name, "format": "jwks", "kids": jwks.kids(wanted), "changed": changed}


class PemBundleFile:
    """A CA bundle on this host that verifiers read as their trust store (`file_format:
    pem_bundle`): the CA certificates of a trust_bundle credential that must be trusted
    now, beside any other certificate the file holds (`keyshift.targets.certificate`).
    Written atomically; a new file is 0644 (certificates are public)."""

    def __init__(self, config: FileConfig) -> None:
        self.config = config

    def check(self) -> None:
        """Raise PermanentError unless the bundle could be rewritten. Changes nothing."""
        from keyshift.targets.certificate import bundle_certificates  # noqa: PLC0415

        path = Path(os.path.realpath(self.config.path))
        check_replaceable(path, self.config.path, create=self.config.create)
        current = _read_or_none(path, self.config.path)
        bundle_certificates(current, self.config.path)

    def apply(self, add: list[Delivery], remove: list[Delivery]) -> dict[str, Any]:
        """Make the bundle hold the CAs of `add` and none of `remove`; return the
        thumbprints it holds now and whether it changed. Idempotent."""
        # Imported here: the host agent shares this module and has no cryptography.
        from keyshift.targets.certificate import updated_bundle  # noqa: PLC0415

        self.check()
        name = self.config.path
        path = Path(os.path.realpath(name))
        current = _read_or_none(path, name)
        data, held = updated_bundle(current, add, remove, name)
        changed = current != data
        if changed:
            _atomic_write(path, data, name, new_mode=PUBLIC_FILE_MODE)
        return {"path": name, "format": "pem_bundle", "thumbprints": held, "changed": changed}


class ThumbprintsFile:
    """The accepted-thumbprint list of a certificate credential on this host
    (`file_format: thumbprints`): whole file, one a line, or a JSON array or a
    comma-separated env value at one key, beside every other key of the file
    (`keyshift.targets.thumbprints`). Written atomically; a new lines file is 0644
    (thumbprints are public), a new JSON or env file 0600 (other keys may be secret)."""

    def __init__(self, config: FileConfig) -> None:
        self.config = config
        self.spec = config.thumbprints or ThumbprintList()
        self._file = (
            None
            if self.spec.key is None
            else KeyFile(config.path, self.spec.format, [self.spec.key], create=config.create)
        )

    def check(self) -> None:
        """Raise PermanentError unless the list could be rewritten. Changes nothing."""
        self._held()

    def _held(self) -> list[str]:
        """The entries of the list now (none for a missing file or key)."""
        name = self.config.path
        if self._file is not None:
            self._file.check()
            found = self._file.read(str(self.spec.key))
            if found is None:
                return []
            if self.spec.format == "env" and isinstance(found, str):
                return [t for t in (part.strip() for part in found.split(",")) if t]
            if isinstance(found, list) and all(isinstance(t, str) for t in found):
                return list(found)
            raise PermanentError(f"{name}: {self.spec.key} does not hold a list of thumbprints")
        path = Path(os.path.realpath(name))
        check_replaceable(path, name, create=self.config.create)
        lines = _lines_of(_read_or_none(path, name), name)
        return [line for line in lines if not line.startswith("#")]

    def apply(self, add: list[Delivery], remove: list[Delivery]) -> dict[str, Any]:
        """Make the list hold the thumbprints of `add` (first, in order) and none of
        `remove`; return what it holds now and whether it changed. Idempotent."""
        name = self.config.path
        wanted = accepted(self._held(), add, remove, self.spec)
        if self._file is not None:
            value: str | list[str] = ",".join(wanted) if self.spec.format == "env" else wanted
            changed = self._file.apply({str(self.spec.key): value})
        else:
            path = Path(os.path.realpath(name))
            current = _read_or_none(path, name)
            comments = [line for line in _lines_of(current, name) if line.startswith("#")]
            data = "".join(f"{line}\n" for line in [*comments, *wanted]).encode("ascii")
            changed = current != data
            if changed:
                _atomic_write(path, data, name, new_mode=PUBLIC_FILE_MODE)
        return {"path": name, "format": "thumbprints", "thumbprints": wanted, "changed": changed}


def _lines_of(data: bytes | None, name: str) -> list[str]:
    """The non-blank lines of a thumbprint list, stripped; PermanentError naming `name`
    when it is not ASCII text (never quoting it)."""
    try:
        text = (data or b"").decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is None:
        raise PermanentError(f"{name} does not parse as a thumbprint list: not ASCII text")
    return [line.strip() for line in text.splitlines() if line.strip()]


def field_values(entries: Mapping[str, str], delivery: Delivery | None) -> dict[str, str | None]:
    """The text each file key receives from `delivery` (None for every key without one:
    remove it)."""
    return {
        key: field_value(delivery, field) if delivery is not None else None
        for key, field in entries.items()
    }


class FileTarget(BaseTarget[FileConfig]):
    """Writes the value at one key of a file; rollback restores the previous value or removes it."""

    kind: ClassVar[str] = "file"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = FileConfig

    @classmethod
    def trust_only(cls, config: BaseModel) -> bool:
        """Whether it serves verifiers only (a JWKS document, a CA bundle): a trust-first
        rotation publishes it first, and withdraws the old version from it before
        revoking."""
        return isinstance(config, FileConfig) and config.file_format in TRUST_FORMATS

    @classmethod
    def trust_format(cls, config: BaseModel) -> str | None:
        """What a trust file holds: its `file_format` (`jwks`, `pem_bundle`, `thumbprints`)."""
        return config.file_format if isinstance(config, FileConfig) else None

    @classmethod
    def describe(cls, config: FileConfig) -> dict[str, str]:
        """Where it writes: the file, its format and the keys set in it (on this host), or
        for a certificate the files written whole."""
        if config.file_format in TRUST_FORMATS:
            return {"path": config.path, "format": config.file_format}
        if config.file_format in WHOLE_FILE_FORMATS:
            return {"path": config.path, "format": config.file_format, **_whole_paths(config)}
        return {
            "path": config.path,
            "format": config.file_format,
            "keys": ", ".join(config.entries()),
        }

    def __init__(self, config: FileConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._whole = WholeFiles(config, context)
        self._trust: JwksFile | PemBundleFile | ThumbprintsFile | None = None
        if config.file_format == "jwks":
            self._trust = JwksFile(config)
        elif config.file_format == "pem_bundle":
            self._trust = PemBundleFile(config)
        elif config.file_format == "thumbprints":
            self._trust = ThumbprintsFile(config)
        self._file = (
            None
            if config.file_format in WHOLE_FILE_FORMATS
            else KeyFile(
                config.path, config.file_format, list(config.entries()), create=config.create
            )
        )
        self._keys = ", ".join(config.entries())

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when publish could write: file writable and parseable, owner keepable
        (every file, for a certificate). Changes nothing.
        """
        try:
            if self._trust is not None:
                self._trust.check()
            elif self._file is None:
                self._whole.check()
            else:
                self._file.check()
        except (PermanentError, TransientError) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Write the value at the key (for a certificate: its files). Idempotent: an
        unchanged value is not rewritten."""
        delivery = request.delivery
        if self._trust is not None:
            # Verifiers accept the new key and still the previous one, which signs until
            # the signers switch and whose tokens live on after.
            trusted = [delivery] if request.previous is None else [delivery, request.previous]
            done = self._trust.apply(trusted, [])
            return StepResult({**done, "fingerprint": delivery.fingerprint})
        if self._file is None:
            changed = self._whole.apply(delivery)
            return StepResult(
                {
                    **self.describe(self.config),
                    "fingerprint": delivery.fingerprint,
                    "changed": changed,
                }
            )
        changed = self._file.apply(field_values(self.config.entries(), delivery))
        return StepResult(
            {
                "path": self.config.path,
                "key": self._keys,
                "fingerprint": delivery.fingerprint,
                "changed": changed,
            }
        )

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Write `previous` back at the key, or remove the key when there was none.

        Idempotent: a key already holding `previous`, or already absent, is left alone.
        Removing a nested key also removes the parents it leaves empty.
        """
        previous = request.previous
        if self._trust is not None:
            # The previous key verifies again alone: the failed one is no longer trusted.
            trusted = [] if previous is None else [previous]
            done = self._trust.apply(trusted, [request.failed])
            fingerprint = previous.fingerprint if previous is not None else None
            return StepResult({**done, "fingerprint": fingerprint, "removed": previous is None})
        if self._file is None:
            changed = self._whole.apply(previous, failed=request.failed)
            return StepResult(
                {
                    **self.describe(self.config),
                    "fingerprint": previous.fingerprint if previous is not None else None,
                    "removed": previous is None,
                    "changed": changed,
                }
            )
        changed = self._file.apply(field_values(self.config.entries(), previous))
        return StepResult(
            {
                "path": self.config.path,
                "key": self._keys,
                "fingerprint": previous.fingerprint if previous is not None else None,
                "removed": previous is None,
                "changed": changed,
            }
        )

    async def withdraw(self, request: base.WithdrawRequest) -> StepResult:
        """`jwks`: drop the old key from the document, keeping the current one; `pem_bundle`:
        drop the old CA from the bundle; `thumbprints`: drop the old thumbprint from the
        list. Idempotent."""
        if self._trust is None:
            raise PermanentError(
                f"{self.config.path}: only a jwks, pem_bundle or thumbprints file withdraws "
                "a version"
            )
        done = self._trust.apply([request.current], [request.withdrawn])
        return StepResult({**done, "withdrawn": request.withdrawn.fingerprint})


def _whole_paths(config: FileConfig) -> dict[str, str]:
    if config.file_format == "pkcs12":
        return {}
    out = {"key_path": str(config.key_path)}
    if config.chain_path is not None:
        out["chain_path"] = config.chain_path
    return out


def _check_owner_keepable(path: Path, name: str) -> None:
    """A replaced file must keep its owner; refuse up front when this process cannot set it."""
    st = path.stat()
    if os.geteuid() == 0:
        return
    if st.st_uid != os.geteuid():
        raise PermanentError(
            f"{name} is owned by uid {st.st_uid}; this process (uid {os.geteuid()}) "
            "could not keep that owner when replacing it"
        )
    if st.st_gid != os.getegid() and st.st_gid not in os.getgroups():
        raise PermanentError(
            f"{name} belongs to gid {st.st_gid}, a group this process is not in, "
            "so replacing it could not keep the group"
        )


def _os_error(message: str, exc: OSError) -> PermanentError | TransientError:
    text = f"{message}: {exc.strerror or type(exc).__name__}"
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientError(text)
    return PermanentError(text)


def _atomic_write(
    path: Path, data: bytes, name: str, *, new_mode: int = NEW_FILE_MODE, private: bool = False
) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a partial one.

    The temp file is created 0600 and only then given the target's mode and owner, so it
    is never more readable than the file it replaces. It is removed on any failure. A new
    file gets `new_mode`; a `private` one (a private key) never keeps a permission for
    others. The umask does not apply: the mode is set explicitly.
    """
    directory = path.parent
    try:
        current = path.stat()
    except FileNotFoundError:
        current = None
    mode = (current.st_mode & 0o7777) if current is not None else new_mode
    if private:
        mode &= NO_OTHERS
    temp = directory / f".{path.name}.keyshift-{secrets.token_hex(6)}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as exc:
        raise _os_error(f"cannot create a temp file next to {name}", exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if current is not None:
                _keep_owner(handle.fileno(), current, name)
            # chmod after chown: chown may clear set-id bits that the mode restores.
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _os_error(f"cannot write {name}", exc) from exc
        raise
    _fsync_directory(directory)


def _keep_owner(fd: int, current: os.stat_result, name: str) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (current.st_uid, current.st_gid):
        return
    try:
        os.fchown(fd, current.st_uid, current.st_gid)
    except PermissionError as exc:
        raise PermanentError(
            f"cannot keep owner {current.st_uid}:{current.st_gid} of {name} ({exc.strerror})"
        ) from exc


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. Some filesystems cannot fsync a directory; that is not fatal."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise _os_error(f"cannot sync directory {directory}", exc) from exc
    finally:
        os.close(fd)


# --- formats -------------------------------------------------------------------------------

_MISSING: Final = object()


class _Codec(Protocol):
    def load(self, text: str, where: str) -> Any: ...
    def get(self, document: Any, parts: tuple[str, ...]) -> Any: ...
    def set(self, document: Any, parts: tuple[str, ...], value: Any, where: str) -> None: ...
    def remove(self, document: Any, parts: tuple[str, ...]) -> bool: ...
    def dump(self, document: Any) -> str: ...


def _parse_error(where: str, fmt: str, line: int | None = None) -> PermanentError:
    # Never quote the content: the file may hold this or other secrets. Callers raise this
    # outside their `except` block so the parser's error (which quotes lines) is not chained.
    at = f" at line {line}" if line is not None else ""
    return PermanentError(f"{where} does not parse as {fmt}{at}")


class _TreeCodec:
    """JSON and YAML: a mapping of mappings; `:` parts walk (and create) nested objects."""

    def get(self, document: Any, parts: tuple[str, ...]) -> Any:
        node = document
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def set(self, document: Any, parts: tuple[str, ...], value: Any, where: str) -> None:
        node = document
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                walked = KEY_SEPARATOR.join(parts[: depth + 1])
                raise PermanentError(f"{where}: '{walked}' holds a non-object value")
            node = child
        node[parts[-1]] = value

    def remove(self, document: Any, parts: tuple[str, ...]) -> bool:
        trail: list[dict[str, Any]] = []
        node = document
        for part in parts[:-1]:
            trail.append(node)
            node = node.get(part)
            if not isinstance(node, dict):
                return False
        if parts[-1] not in node:
            return False
        del node[parts[-1]]
        # Prune the parents the removal left empty, innermost first.
        for parent, part in zip(reversed(trail), reversed(parts[:-1]), strict=True):
            if parent[part]:
                break
            del parent[part]
        return True

    @staticmethod
    def _mapping(document: Any, where: str, fmt: str) -> dict[str, Any]:
        if document is None:
            return {}
        if not isinstance(document, dict):
            raise PermanentError(f"{where}: the top level of the {fmt} file is not an object")
        return document


class _JsonCodec(_TreeCodec):
    def load(self, text: str, where: str) -> Any:
        if not text.strip():
            return {}
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            line: int | None = exc.lineno
        else:
            return self._mapping(document, where, "json")
        raise _parse_error(where, "json", line)

    def dump(self, document: Any) -> str:
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


class _YamlCodec(_TreeCodec):
    def load(self, text: str, where: str) -> Any:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
        else:
            return self._mapping(document, where, "yaml")
        raise _parse_error(where, "yaml", line)

    def dump(self, document: Any) -> str:
        return yaml.safe_dump(
            document, sort_keys=False, default_flow_style=False, allow_unicode=True
        )


class _CaseKeepingParser(configparser.ConfigParser):
    """configparser that keeps key case (the default lowercases) and never interpolates `%`."""

    def __init__(self) -> None:
        super().__init__(interpolation=None, strict=True)

    def optionxform(self, optionstr: str) -> str:
        return optionstr


class _IniCodec:
    def load(self, text: str, where: str) -> Any:
        parser = _CaseKeepingParser()
        try:
            parser.read_string(text)
        except configparser.Error as exc:
            line = getattr(exc, "lineno", None)
        else:
            return parser
        raise _parse_error(where, "ini", line)

    def get(self, document: Any, parts: tuple[str, ...]) -> Any:
        section, option = parts
        if not document.has_option(section, option):
            return _MISSING
        return document.get(section, option)

    def set(self, document: Any, parts: tuple[str, ...], value: str, where: str) -> None:
        if any(ch in value for ch in "\r\n") or value != value.strip():
            # configparser would fold the lines or strip the spaces: the file would not
            # hand the consumer the value it was given.
            raise PermanentError(
                f"{where}: the value has line breaks or surrounding spaces, which ini cannot hold"
            )
        section, option = parts
        if section != document.default_section and not document.has_section(section):
            document.add_section(section)
        document.set(section, option, value)

    def remove(self, document: Any, parts: tuple[str, ...]) -> bool:
        section, option = parts
        if not document.has_option(section, option):
            return False
        removed: bool = document.remove_option(section, option)
        if section != document.default_section and not document.options(section):
            document.remove_section(section)
        return removed

    def dump(self, document: Any) -> str:
        out = io.StringIO()
        document.write(out)
        return out.getvalue()


@dataclass
class _EnvEntry:
    """One logical line of an env file: an assignment (maybe spanning lines) or anything else."""

    text: str
    name: str | None = None
    assigned: bool = False
    lead: str = ""
    value: str = ""
    suffix: str = ""
    newline: str = ""


class _EnvCodec:
    """KEY=value files. Only the lines assigning our key are touched; all others stay as written."""

    def load(self, text: str, where: str) -> Any:
        entries: list[_EnvEntry] = []
        position, line = 0, 1
        while position < len(text):
            end = _line_end(text, position)
            body = text[position:end].rstrip("\r\n")
            stripped = body.strip()
            match = _ENV_ASSIGNMENT.match(body)
            if not stripped or stripped.startswith("#"):
                entry = _EnvEntry(text[position:end])
            elif match is None or (match["eq"] is None and body[match.end() :].strip()):
                raise _parse_error(where, "env", line)
            elif match["eq"] is None:
                # A bare NAME line passes the variable through from the environment.
                entry = _EnvEntry(text[position:end], name=match["name"], lead=match["lead"])
                entry.newline = text[position + len(body) : end]
            else:
                value_start = position + match.end()
                value_end = _env_value_end(text, value_start, where, line)
                end = _line_end(text, value_end)  # a quoted value may span lines
                tail = text[value_end:end]
                suffix = tail.rstrip("\r\n")
                entry = _EnvEntry(
                    text[position:end],
                    name=match["name"],
                    assigned=True,
                    lead=match["lead"],
                    value=text[value_start:value_end],
                    suffix=suffix,
                    newline=tail[len(suffix) :],
                )
            entries.append(entry)
            line += text.count("\n", position, end)
            position = end
        return entries

    def get(self, document: Any, parts: tuple[str, ...]) -> Any:
        name = env_name(KEY_SEPARATOR.join(parts))
        found = [entry for entry in document if entry.name == name]
        # Readers (dotenv, compose, a shell) honour the last assignment.
        if not found or not found[-1].assigned:
            return _MISSING
        return _decode_env_value(found[-1].value)

    def set(self, document: Any, parts: tuple[str, ...], value: str, where: str) -> None:
        name = env_name(KEY_SEPARATOR.join(parts))
        written = _encode_env_value(value)
        found = False
        # Every line naming the variable gets the value, so whichever a reader honours is right.
        for entry in document:
            if entry.name == name:
                found = True
                entry.text = f"{entry.lead}{name}={written}{entry.suffix}{entry.newline or chr(10)}"
        if not found:
            if document and not document[-1].text.endswith("\n"):
                document[-1].text += "\n"
            document.append(_EnvEntry(f"{name}={written}\n", name=name, assigned=True))

    def remove(self, document: Any, parts: tuple[str, ...]) -> bool:
        name = env_name(KEY_SEPARATOR.join(parts))
        kept = [entry for entry in document if entry.name != name]
        if len(kept) == len(document):
            return False
        document[:] = kept
        return True

    def dump(self, document: Any) -> str:
        return "".join(entry.text for entry in document)


def _line_end(text: str, position: int) -> int:
    """Index just past the line break of the line holding `position` (or the end of text)."""
    newline = text.find("\n", position)
    return len(text) if newline < 0 else newline + 1


def _env_value_end(text: str, start: int, where: str, line: int) -> int:
    """Where the value that starts at `start` (just after `NAME=`) ends."""
    position = start
    while position < len(text) and text[position] in " \t":
        position += 1
    quote = text[position : position + 1]
    if quote in ("'", '"'):
        position += 1
        while position < len(text):
            char = text[position]
            if quote == '"' and char == "\\":
                position += 2
                continue
            if char == quote:
                return position + 1
            position += 1
        raise _parse_error(where, "env", line)  # a quote that never closes
    end = _line_end(text, start)
    first_line = text[start:end].rstrip("\r\n")
    comment = re.search(r"[ \t]+#", first_line)
    return start + (comment.start() if comment else len(first_line))


def _encode_env_value(value: str) -> str:
    """Write a value so dotenv readers read it back: double-quoted when it has to be."""
    if not any(char in _ENV_NEEDS_QUOTES for char in value):
        return value
    return '"' + "".join(_ENV_ESCAPES.get(char, char) for char in value) + '"'


def _decode_env_value(written: str) -> str:
    """Read a value back the way `_encode_env_value` writes it (enough to see "unchanged")."""
    written = written.strip(" \t")
    if len(written) >= 2 and written[0] == written[-1] == "'":
        return written[1:-1]
    if len(written) >= 2 and written[0] == written[-1] == '"':
        decoded = {"\\\\": "\\", '\\"': '"', "\\n": "\n", "\\r": "\r"}
        return re.sub(r'\\[\\"nr]', lambda m: decoded[m.group(0)], written[1:-1])
    return written


_CODECS: Final[dict[str, _Codec]] = {
    "json": _JsonCodec(),
    "yaml": _YamlCodec(),
    "ini": _IniCodec(),
    "env": _EnvCodec(),
}
