"""The accepted-thumbprint list of a certificate credential: which certificates a verifier
that pins thumbprints (a relay, an ADFS or Windows trust list) accepts now.

A certificate version (`x509_ca`, `acme`, `entra_certificate`) holds its certificate as
PEM in its attributes (`certificate`). Its thumbprint is the SHA-256 (or SHA-1, as
Windows and many relays pin) digest of the certificate's DER encoding, written in one of
`ENCODINGS`. Targets that serve verifiers keep the list holding the thumbprints that must
be accepted now, first the credential's in that order, then every other entry as it was:

- publish: the new thumbprint and the previous one (the signer still presents it);
- rollback: the previous one alone, without the failed new one;
- withdraw (just before the old version is revoked): the current one alone.

Nothing here reads the private key: only the public certificate is hashed, with
`hashlib` (the host agent shares the file target and has no `cryptography`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from keyshift.errors import PermanentError
from keyshift.targets.base import Delivery

__all__ = [
    "ENCODINGS",
    "Algorithm",
    "Encoding",
    "ThumbprintSpec",
    "accepted",
    "encode",
    "thumbprint_of",
]

Algorithm = Literal["sha256", "sha1"]
Encoding = Literal["hex", "hex_upper", "hex_upper_colons", "base64url"]
ENCODINGS: Final = ("hex", "hex_upper", "hex_upper_colons", "base64url")
"""`hex`: lowercase (`openssl x509 -fingerprint` without colons, lowercased); `hex_upper`:
as Windows shows a certificate's Thumbprint; `hex_upper_colons`: as `openssl x509
-fingerprint` prints it; `base64url`: unpadded, as JOSE's `x5t` / `x5t#S256`."""

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


class ThumbprintSpec(BaseModel):
    """How the thumbprints in the list are computed and written."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    algorithm: Algorithm = "sha256"
    """The digest of the certificate's DER: `sha256`, or `sha1` (Windows, ADFS and many
    relays pin SHA-1 thumbprints)."""
    encoding: Encoding = "hex"
    """`hex`, `hex_upper` (Windows), `hex_upper_colons` (OpenSSL) or `base64url`."""


def encode(digest: bytes, encoding: str) -> str:
    """`digest` written as `encoding` (one of `ENCODINGS`)."""
    if encoding == "hex":
        return digest.hex()
    if encoding == "hex_upper":
        return digest.hex().upper()
    if encoding == "hex_upper_colons":
        return digest.hex(":").upper()
    if encoding == "base64url":
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    raise PermanentError(f"unknown thumbprint encoding {encoding!r}")


def thumbprint_of(delivery: Delivery, spec: ThumbprintSpec) -> str:
    """The thumbprint of a certificate version's certificate (its first PEM block, the
    leaf); PermanentError naming the version when it holds no certificate (a `random`
    value, a signing key)."""
    match = _PEM_CERTIFICATE.search(str(delivery.attributes.get("certificate", "")))
    der = None
    if match is not None:
        try:
            der = base64.b64decode("".join(match.group("body").split()), validate=True)
        except (binascii.Error, ValueError):
            der = None
    if not der:
        raise PermanentError(
            f"version {delivery.version_id} holds no certificate (is it a certificate version?)"
        )
    return encode(hashlib.new(spec.algorithm, der).digest(), spec.encoding)


def accepted(
    held: Iterable[str], add: list[Delivery], remove: list[Delivery], spec: ThumbprintSpec
) -> list[str]:
    """The list `held` holding the thumbprints of `add` first, in that order, and none of
    `remove`; every other entry kept after them in its order, each once. Stable: the same
    versions give the same list, so publishing again rewrites nothing, and a rollback
    gives back the list a previous withdrawal wrote."""
    ours = [thumbprint_of(d, spec) for d in add]
    gone = {thumbprint_of(d, spec) for d in remove}
    out: list[str] = []
    for entry in [*ours, *held]:
        if entry in gone or entry in out:
            continue
        out.append(entry)
    return out
