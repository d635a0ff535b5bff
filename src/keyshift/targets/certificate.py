"""A certificate version as consumers take it: its private key, certificate and chain as
PEM, or the three in one PKCS#12 (PFX) bundle.

A CA bundle (`file_format: pem_bundle`) is the trust of a `trust_bundle` credential:
concatenated PEM certificates that verifiers trust, of which keyshift adds and removes the
credential's CAs (its version's `certificate` attribute, a CA) and keeps every other.

A certificate version (`x509_ca`) is delivered like any version: its value is the
private key (PEM) and its attributes hold `certificate` and `chain` (PEM). Targets read
them through `keyshift.targets.base.field_value` (`private_key`, `certificate`, `chain`,
`fullchain`); this module adds what needs `cryptography`, and is imported only by the
targets that write a PKCS#12 bundle.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.targets.base import Delivery, field_value

__all__ = [
    "CertificateParts",
    "bundle_certificates",
    "parts_of",
    "pkcs12_bundle",
    "pkcs12_holds",
    "updated_bundle",
]

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class CertificateParts:
    """The PEM texts of one certificate version (the key is the secret value)."""

    private_key: str
    certificate: str
    chain: str


def parts_of(delivery: Delivery) -> CertificateParts:
    """The key, certificate and chain of a certificate version; PermanentError naming
    the fields the version has when it is not one (a `random` value, say)."""
    return CertificateParts(
        private_key=field_value(delivery, "private_key"),
        certificate=field_value(delivery, "certificate"),
        chain=str(delivery.attributes.get("chain", "")),
    )


def pkcs12_bundle(delivery: Delivery, password: Secret) -> bytes:
    """The version's key, certificate and chain in one PKCS#12 file encrypted with
    `password` (AES-256, as current OpenSSL and Windows read it), named after the
    credential. Not byte-for-byte repeatable: each bundle has fresh salts."""
    parts = parts_of(delivery)
    key, cert, chain = _load(parts, delivery.version_id)
    if not password.reveal():
        raise PermanentError("password_from: a PKCS#12 bundle needs a non-empty password")
    encryption = serialization.BestAvailableEncryption(password.reveal().encode("utf-8"))
    return pkcs12.serialize_key_and_certificates(
        delivery.credential.encode("utf-8"), key, cert, chain or None, encryption
    )


def pkcs12_holds(data: bytes, password: Secret, delivery: Delivery) -> bool:
    """Whether the PKCS#12 `data`, opened with `password`, holds exactly the version's key,
    certificate and chain (so rewriting it would change nothing but its salts)."""
    try:
        key, cert, chain = pkcs12.load_key_and_certificates(data, password.reveal().encode("utf-8"))
    except (ValueError, TypeError):
        return False
    wanted_key, wanted_cert, wanted_chain = _load(parts_of(delivery), delivery.version_id)
    if key is None or cert is None:
        return False
    same_key = hmac.compare_digest(
        key.public_key().public_bytes(*_SPKI), wanted_key.public_key().public_bytes(*_SPKI)
    )
    return same_key and cert == wanted_cert and list(chain) == wanted_chain


_BUNDLED_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _load(
    parts: CertificateParts, version_id: str
) -> tuple[pkcs12.PKCS12PrivateKeyTypes, x509.Certificate, list[x509.Certificate]]:
    try:
        key = serialization.load_pem_private_key(parts.private_key.encode("utf-8"), None)
        cert = x509.load_pem_x509_certificate(parts.certificate.encode("ascii"))
        chain = x509.load_pem_x509_certificates(parts.chain.encode("ascii")) if parts.chain else []
    except (ValueError, TypeError):
        loaded = None
    else:
        loaded = (key, cert, chain)
    if loaded is None or not isinstance(loaded[0], _BUNDLED_KEYS):
        # Raised outside the handler: the parser's error could quote the key.
        raise PermanentError(f"version {version_id} is not a readable certificate and key")
    return loaded[0], loaded[1], loaded[2]


def bundle_certificates(data: bytes | None, where: str) -> list[x509.Certificate]:
    """The certificates of a CA bundle (none for a missing or empty file); PermanentError
    naming `where` when it holds anything but PEM certificates (never quoting it)."""
    text = (data or b"").decode("utf-8", "replace")
    if not text.strip():
        return []
    if "PRIVATE KEY" in text:
        raise PermanentError(f"{where} holds a private key: a CA bundle holds certificates only")
    try:
        return x509.load_pem_x509_certificates(text.encode("utf-8"))
    except ValueError:
        raise PermanentError(f"{where} does not parse as PEM certificates") from None


def _ca_of(delivery: Delivery) -> x509.Certificate:
    """The CA certificate of a trust_bundle version; PermanentError naming the version
    when it has none (a leaf certificate, a random value)."""
    text = str(delivery.attributes.get("certificate", ""))
    try:
        cert = x509.load_pem_x509_certificate(text.encode("ascii")) if text else None
    except ValueError:
        cert = None
    try:
        is_ca = (
            cert is not None
            and cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        )
    except x509.ExtensionNotFound:
        is_ca = False
    if cert is None or not is_ca:
        raise PermanentError(
            f"version {delivery.version_id} holds no CA certificate (is it a trust_bundle version?)"
        )
    return cert


def updated_bundle(
    data: bytes | None, add: list[Delivery], remove: list[Delivery], where: str
) -> tuple[bytes, list[str]]:
    """The bundle `data` holding every CA of `add` (appended when missing) and none of
    `remove`, every other certificate kept in its order; with the SHA-256 thumbprints it
    holds. Stable: the same CAs give the same bytes, so publishing again rewrites nothing."""
    held = bundle_certificates(data, where)
    wanted = [_ca_of(d) for d in add]
    gone = {c.fingerprint(hashes.SHA256()) for c in (_ca_of(d) for d in remove)}
    out: list[x509.Certificate] = []
    for cert in [*held, *wanted]:
        print_ = cert.fingerprint(hashes.SHA256())
        if print_ in gone or any(c.fingerprint(hashes.SHA256()) == print_ for c in out):
            continue
        out.append(cert)
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in out)
    return pem.encode("ascii"), [c.fingerprint(hashes.SHA256()).hex() for c in out]
