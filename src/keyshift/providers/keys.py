"""Asymmetric keys that keyshift generates itself (certificate and signing-key versions).

One place makes the key of each `KeyType` and reads a sealed private key back, so the
`x509_ca` and `jwks_signing_key` providers offer the same key types and agree on the
PEM form of a version's value (PKCS#8, unencrypted: the store seals it).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from pydantic import BaseModel, ValidationInfo, field_validator

from keyshift.domain.durations import format_duration
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError

__all__ = [
    "SUPPORTED_KEYS",
    "KeyType",
    "imported_key",
    "key_type_of",
    "load_private_key",
    "new_private_key",
    "private_pem",
    "signature_hash",
]

KeyType = Literal["rsa-2048", "rsa-3072", "ec-p256", "ed25519"]
"""The key types a new version may have."""

SUPPORTED_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
"""The private keys `load_private_key` accepts (a CA may hold an Ed448 key)."""


def new_private_key(key_type: str) -> Any:
    """A fresh private key of `key_type` (RSA with exponent 65537; EC on P-256)."""
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: Any) -> Secret:
    """The key as unencrypted PKCS#8 PEM, the value a version is sealed with."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Secret(data.decode("ascii"))


def load_private_key(text: Secret) -> Any:
    """The PEM private key in `text`, or None when it holds none of `SUPPORTED_KEYS` (the
    parser's error is dropped: it could quote the key)."""
    try:
        key = serialization.load_pem_private_key(text.reveal().encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, SUPPORTED_KEYS) else None


_KEY_BLOCK = re.compile(
    r"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)


def key_type_of(key: Any) -> KeyType | None:
    """The `KeyType` of a private key, or None when a new version could not have it (an
    RSA key of another size, another curve, Ed448)."""
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size in (2048, 3072):
        return "rsa-2048" if key.key_size == 2048 else "rsa-3072"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ec-p256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    return None


def imported_key(value: Secret, where: str) -> tuple[Any, KeyType]:
    """The one unencrypted PEM private key (PKCS#8 or traditional) in `value`, which may
    also hold certificates, and its `KeyType`: what `keyshift import` takes. PermanentError
    naming `where` (never quoting the value) when it holds none, several, an encrypted one
    or one of a type or size no version may have."""
    blocks = list(_KEY_BLOCK.finditer(value.reveal()))
    if not blocks:
        raise PermanentError(f"{where}: holds no PEM private key")
    if len(blocks) > 1:
        raise PermanentError(f"{where}: holds {len(blocks)} private keys; give one")
    match = blocks[0]
    if match.group(1) == "ENCRYPTED PRIVATE KEY":
        raise PermanentError(f"{where}: the private key is encrypted; give it unencrypted")
    try:
        key = serialization.load_pem_private_key(match.group(0).encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The parser's message is dropped: it could quote the key.
        raise PermanentError(f"{where}: the PEM private key does not parse") from None
    key_type = key_type_of(key)
    if key_type is None:
        size = getattr(key, "key_size", None)
        what = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise PermanentError(
            f"{where}: a {what}{f' {size}-bit' if size else ''} key is not one of the key "
            "types a version may have (rsa-2048, rsa-3072, ec-p256, ed25519)"
        )
    return key, key_type


def signature_hash(key: Any) -> hashes.SHA256 | None:
    """Ed25519 and Ed448 keys sign without a separate hash; RSA and EC with SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


class Validity(BaseModel):
    """The check of a certificate-making config's `validity` (its subclasses declare the
    field): longer than zero."""

    @field_validator("validity", check_fields=False)
    @classmethod
    def _validity(cls, validity: timedelta) -> timedelta:
        if validity <= timedelta(0):
            raise ValueError("validity must be longer than 0s")
        return validity


class Renewal(Validity):
    """The checks of a certificate-making config's `validity` and `renew_before` (its
    subclasses declare both): renewal is due inside the certificate's validity."""

    @field_validator("renew_before", check_fields=False)
    @classmethod
    def _renewal_inside_validity(cls, renew_before: timedelta, info: ValidationInfo) -> timedelta:
        if renew_before <= timedelta(0):
            raise ValueError("renew_before must be longer than 0s")
        validity = info.data.get("validity")
        if isinstance(validity, timedelta) and renew_before >= validity:
            raise ValueError(
                f"renew_before ({format_duration(renew_before)}) must be shorter than "
                f"validity ({format_duration(validity)})"
            )
        return renew_before
