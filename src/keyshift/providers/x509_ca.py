"""`x509_ca`: TLS certificates issued by an internal certificate authority.

keyshift holds the CA's key (through a reference: `env:`, `file:`, `credential:`) and
signs each new leaf itself with `cryptography`. A version is one certificate: its
private key is the sealed secret value; the certificate and the CA chain are public and
stored with the version (`attributes`), as is what operators read (subject, SANs,
`not_after`, serial, thumbprint). The fingerprint is the certificate's SHA-256
thumbprint, as `openssl x509 -fingerprint -sha256` prints it (without the colons).

Overlap: a new certificate is independent of the old one, so both are valid at once
(dual) until the old one's `not_after`. Revoking the old version cannot un-issue it: this
CA publishes no CRL or OCSP, so a verifier that trusts the CA accepts the old certificate
until it expires. keyshift records the revocation (the version is revoked, its private
key erased, the serial named in the audit) and nothing more; see docs/certificates.md.

Due: renewal is due `renew_before` the certificate's `not_after`. The provider gives the
`not_after` as the version's `expires_at` and `renew_before` as the credential's
`rotate_before_expiry` (`rotate_before_expiry` below), so the schedule, `status`, the
expiry alerts and the dashboard treat a certificate like any expiring secret.

A CA that keyshift makes, holds sealed and rotates trust first is a `trust_bundle`
credential (`keyshift.providers.trust_bundle`): its leaves name it in both references,
`credential:NAME`, whose value holds the CA's key and then its certificate. Out of scope
here: CRL/OCSP publishing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.providers import base
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightResult,
    Readiness,
    RevokeResult,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.keys import (
    KeyType,
    Renewal,
    imported_key,
    load_private_key,
    new_private_key,
    private_pem,
    signature_hash,
)
from keyshift.sources import SecretRef

BACKDATE: Final = timedelta(minutes=5)
"""A new certificate is valid from this long before it was issued, so a consumer whose
clock runs a little behind does not refuse it as not yet valid."""
FINGERPRINT_PREFIX: Final = "sha256:"
Usage = Literal["server_auth", "client_auth", "code_signing"]
_USAGES: Final = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
}

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _san(text: str) -> x509.GeneralName:
    """A SAN entry: an IP address, or a DNS name (a leading `*.` for a wildcard)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.removeprefix("*.")
    labels = name.split(".")
    if len(text) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"'{text}' is not a DNS name or IP address")
    return x509.DNSName(text.lower())


def valid_names(names: list[str]) -> list[str]:
    """`names` when each is a DNS name or an IP address, listed once (ignoring case);
    ValueError naming the first that is not (a pydantic validator's message)."""
    seen: set[str] = set()
    for text in names:
        _san(text)
        if text.lower() in seen:
            raise ValueError(f"'{text}' is listed twice")
        seen.add(text.lower())
    return names


def san_names(names: list[str]) -> list[x509.GeneralName]:
    """The SAN entries of `names` (checked by `valid_names`)."""
    return [_san(text) for text in names]


def _tls_usage() -> list[Usage]:
    return ["server_auth", "client_auth"]


class X509CaConfig(Renewal):
    """A leaf certificate for `common_name` and `sans`, signed by the CA whose key and
    certificate the two references name."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    common_name: str = Field(min_length=1, max_length=64)
    """The subject's CN, e.g. `web.internal`."""
    sans: list[str] = Field(default_factory=list)
    """Subject alternative names: DNS names (`*.web.internal` for a wildcard) and IP
    addresses. TLS clients match these, not the CN: list every name clients use."""
    key_type: KeyType = "ec-p256"
    """The new key of each version: `rsa-2048`, `rsa-3072`, `ec-p256` or `ed25519`."""
    validity: Duration = timedelta(days=90)
    """How long each certificate is valid; its `not_after` is the version's expiry."""
    renew_before: Duration = timedelta(days=30)
    """Renewal is due this long before `not_after`: for this credential it takes the place
    of the policy's `rotate_before_expiry`. Shorter than `validity`."""
    ca_key_from: SecretRef
    """The CA's private key (unencrypted PEM): `env:NAME`, `file:/path` or
    `credential:NAME`. Read each time a certificate is signed; never stored."""
    ca_cert_from: SecretRef
    """The CA's certificate (PEM), then any certificates above it up to the root; all of
    them are the chain each version carries."""
    extended_key_usage: list[Usage] = Field(default_factory=_tls_usage, min_length=1)
    """What the certificate is for: `server_auth`, `client_auth` (TLS, the default),
    `code_signing` (a signer whose signatures a relay checks by thumbprint)."""

    @field_validator("sans")
    @classmethod
    def _sans(cls, sans: list[str]) -> list[str]:
        return valid_names(sans)

    def names(self) -> list[x509.GeneralName]:
        return san_names(self.sans)


@dataclass(frozen=True)
class _Ca:
    key: Any
    cert: x509.Certificate
    chain_pem: str
    """The CA certificate and those above it, as PEM (each ends with a newline)."""


def thumbprint(cert: x509.Certificate) -> str:
    """The SHA-256 thumbprint of a certificate's DER encoding, in lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


class X509CaProvider:
    """Signs leaf certificates with an internal CA's key; keyshift is the system of record."""

    kind: ClassVar[str] = "x509_ca"
    Config: ClassVar[type[BaseModel]] = X509CaConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.IMPORTS}
    )

    @classmethod
    def describe(
        cls, config: X509CaConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """What it issues and with which CA (by reference, never the key)."""
        return {
            "issuer": f"internal CA ({config.ca_cert_from})",
            "subject": f"CN={config.common_name}",
            "sans": ", ".join(config.sans) or "-",
            "key_type": config.key_type,
            "validity": format_duration(config.validity),
        }

    @classmethod
    def rotate_before_expiry(cls, config: BaseModel) -> timedelta | None:
        """When renewal is due before a version's expiry (its `not_after`): the config's
        `renew_before`. The estate stores it as the credential's effective policy's
        `rotate_before_expiry`, which the schedule and `status` read."""
        return config.renew_before if isinstance(config, X509CaConfig) else None

    def __init__(self, config: X509CaConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    # The CA --------------------------------------------------------------------------

    def _ca(self) -> _Ca:
        """The CA's key and certificate, read through their references and checked: the
        key belongs to the certificate, which is a CA valid now. PermanentError naming
        the field otherwise (never quoting what was read)."""
        key_text = self.context.secret("provider.ca_key_from", self.config.ca_key_from)
        cert_text = self.context.secret("provider.ca_cert_from", self.config.ca_cert_from)
        key = load_private_key(key_text)
        if key is None:
            raise PermanentError(
                "provider.ca_key_from: not an unencrypted PEM private key (RSA, EC or Ed25519)"
            )
        certs = load_certs(cert_text.reveal())
        if not certs:
            raise PermanentError("provider.ca_cert_from: holds no PEM certificate")
        cert = certs[0]
        where = f"provider.ca_cert_from: {_subject(cert)}"
        if not is_ca(cert):
            raise PermanentError(f"{where} is not a CA (basicConstraints CA:TRUE is missing)")
        if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
            raise PermanentError(
                f"provider.ca_key_from: the key does not belong to the CA certificate "
                f"{_subject(cert)} (ca_cert_from)"
            )
        now = self.context.now()
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise PermanentError(
                f"{where} is not valid now (valid {cert.not_valid_before_utc.isoformat()} "
                f"to {cert.not_valid_after_utc.isoformat()})"
            )
        return _Ca(key, cert, "".join(cert_pem(c) for c in certs))

    def _ca_cert(self) -> x509.Certificate:
        """The CA certificate only (verifying needs no key)."""
        text = self.context.secret("provider.ca_cert_from", self.config.ca_cert_from)
        certs = load_certs(text.reveal())
        if not certs:
            raise PermanentError("provider.ca_cert_from: holds no PEM certificate")
        return certs[0]

    # The contract --------------------------------------------------------------------

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when the CA's key and certificate can be read, belong together, and the
        certificate is a CA valid now that outlives a certificate issued now. Changes
        nothing."""
        try:
            ca = self._ca()
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if ca.cert.not_valid_after_utc < self.context.now() + self.config.validity:
            return PreflightResult(
                Readiness.BLOCKED,
                f"the CA {_subject(ca.cert)} expires "
                f"{ca.cert.not_valid_after_utc.isoformat()}, before a certificate issued "
                f"now would ({format_duration(self.config.validity)})",
            )
        return PreflightResult(
            Readiness.READY,
            f"may sign with the CA {_subject(ca.cert)} "
            f"(valid until {ca.cert.not_valid_after_utc.isoformat()})",
        )

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Generate a key and sign a certificate for it with the CA.

        Nothing leaves the process until the engine stores it (the CA publishes nothing),
        so a crash before storing leaves only a certificate nobody holds; the engine
        looks for a stored version of this rotation before calling, so a resumed
        rotation never signs a second one."""
        ca = self._ca()
        now = self.context.now()
        not_after = now + self.config.validity
        if not_after > ca.cert.not_valid_after_utc:
            raise PermanentError(
                f"the CA {_subject(ca.cert)} expires {ca.cert.not_valid_after_utc.isoformat()}, "
                f"which expires before the new certificate would ({not_after.isoformat()}); "
                "shorten validity or renew the CA"
            )
        key = new_private_key(self.config.key_type)
        cert = self._sign(ca, key, now, not_after)
        return certificate_version(
            "x509",
            key,
            cert,
            chain_pem=ca.chain_pem,
            sans=self.config.sans,
            key_type=self.config.key_type,
        )

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """The certificate in use now, as the version `create` would have made of it
        (`imported_certificate_version`). Calls nothing."""
        return imported_certificate_version("x509", request.value, self.context.now())

    def _sign(self, ca: _Ca, key: Any, now: datetime, not_after: datetime) -> x509.Certificate:
        public = key.public_key()
        usage_for_rsa = isinstance(key, rsa.RSAPrivateKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.config.common_name)])
            )
            .issuer_name(ca.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=usage_for_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [_USAGES[u] for u in dict.fromkeys(self.config.extended_key_usage)]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                critical=False,
            )
        )
        if self.config.sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(self.config.names()), critical=False
            )
        return builder.sign(ca.key, signature_hash(ca.key))

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """The version is a certificate the CA signed, valid now, whose public key is the
        one of the version's private key. keyshift is the issuer: there is no sign-in to
        try, so this checks what a TLS peer would check of the certificate."""
        return verify_certificate(request.version, self._ca_cert(), self.context.now())

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Nothing to call: the engine erases the private key and marks the version
        revoked. The certificate itself cannot be un-issued (no CRL or OCSP here): it
        stays valid to whoever trusts the CA until its not_after, which the detail says.
        Succeeds when already revoked."""
        attributes = request.version.attributes
        return RevokeResult(
            detail={
                "issuer": "keyshift (internal CA)",
                "serial_number": str(attributes.get("serial_number", "")),
                "revocation": (
                    "recorded by keyshift only: this CA publishes no CRL or OCSP, so the "
                    "certificate stays valid to verifiers that trust the CA until its "
                    f"not_after ({attributes.get('not_after', 'unknown')})"
                ),
            }
        )

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """keyshift's store is the only record of what this CA issued."""
        return []

    async def aclose(self) -> None:
        return None


def certificate_version(
    scheme: str,
    key: Any,
    cert: x509.Certificate,
    *,
    chain_pem: str,
    sans: list[str],
    key_type: str,
    extra: Mapping[str, str] | None = None,
) -> IssuedVersion:
    """A certificate version as every certificate provider returns it: the private key
    sealed as the value; the certificate, its chain and what operators read (subject,
    SANs, issuer, serial, validity, thumbprint, and `extra`) public; `provider_ref`
    `<scheme>:<serial in hex>`; expiring at the `not_after`; fingerprinted by the
    SHA-256 thumbprint."""
    print_ = thumbprint(cert)
    serial = format(cert.serial_number, "x")
    return IssuedVersion(
        provider_ref=f"{scheme}:{serial}",
        value=private_pem(key),
        attributes={
            "certificate": cert_pem(cert),
            "chain": chain_pem,
            "subject": _subject(cert),
            "sans": ", ".join(sans),
            "issuer": cert.issuer.rfc4514_string(),
            "serial_number": serial,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "key_type": key_type,
            "thumbprint": print_,
            **(extra or {}),
        },
        expires_at=cert.not_valid_after_utc,
        fingerprint=FINGERPRINT_PREFIX + print_,
    )


def verify_certificate(
    version: IssuedVersion, issuer: x509.Certificate, now: datetime
) -> VerifyResult:
    """What a TLS peer checks of a certificate version: `issuer` signed it, it is valid
    `now`, and its public key is the one of the version's private key."""
    certs = load_certs(version.attributes.get("certificate", ""))
    if not certs:
        return VerifyResult(ok=False, detail="the version holds no certificate")
    cert = certs[0]
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return VerifyResult(ok=False, detail=f"not signed by the CA {_subject(issuer)}")
    key = load_private_key(version.value)
    if key is None or key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(
        *_SPKI
    ):
        return VerifyResult(ok=False, detail="the private key does not match the certificate")
    if now >= cert.not_valid_after_utc:
        return VerifyResult(ok=False, detail=f"expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        return VerifyResult(
            ok=False, detail=f"not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    return VerifyResult(
        ok=True,
        detail=f"signed by {_subject(issuer)}, valid until {cert.not_valid_after_utc.isoformat()}",
    )


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of a certificate's SAN extension, in its order."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found: list[Any] = [*names.get_values_for_type(x509.DNSName)]
    found += [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return [str(name) for name in found]


def is_ca(cert: x509.Certificate) -> bool:
    """The certificate says basicConstraints CA:TRUE."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def imported_certificate(
    value: Secret, now: datetime, *, where: str = "value"
) -> tuple[Any, str, x509.Certificate, list[x509.Certificate]]:
    """The private key, its key type, the certificate of that key and the other
    certificates (its chain) of an imported PEM text that holds them in any order: what
    `keyshift import` takes for a certificate credential. PermanentError naming `where`
    (never quoting the key) when it holds no usable key, no certificate, no certificate
    of the key, or one that has expired."""
    key, key_type = imported_key(value, where)
    certs = load_certs(value.reveal())
    if not certs:
        raise PermanentError(f"{where}: holds no PEM certificate beside the private key")
    public = key.public_key().public_bytes(*_SPKI)
    mine = [c for c in certs if c.public_key().public_bytes(*_SPKI) == public]
    if not mine:
        raise PermanentError(
            f"{where}: no certificate belongs to the private key (the certificates are of "
            f"{', '.join(_subject(c) for c in certs)})"
        )
    leaf = mine[0]
    if now >= leaf.not_valid_after_utc:
        raise PermanentError(
            f"{where}: the certificate {_subject(leaf)} expired at "
            f"{leaf.not_valid_after_utc.isoformat()}"
        )
    return key, key_type, leaf, [c for c in certs if c is not leaf]


def imported_certificate_version(
    scheme: str,
    value: Secret,
    now: datetime,
    *,
    chain_required: bool = False,
    extra: Mapping[str, str] | None = None,
) -> IssuedVersion:
    """The `certificate_version` of an imported PEM text holding a private key, its
    certificate and the chain above it, in any order (`imported_certificate` says what is
    refused; with `chain_required`, a certificate without its chain too)."""
    key, key_type, leaf, chain = imported_certificate(value, now)
    if chain_required and not chain:
        raise PermanentError(
            "value: give the CA's chain after the certificate (verify checks the "
            "certificate against its issuing CA)"
        )
    return certificate_version(
        scheme,
        key,
        leaf,
        chain_pem="".join(cert_pem(c) for c in chain),
        sans=certificate_names(leaf),
        key_type=key_type,
        extra=extra,
    )


def load_certs(text: str) -> list[x509.Certificate]:
    """Every PEM certificate in `text`, in order; empty when it holds none."""
    try:
        return x509.load_pem_x509_certificates(text.encode("utf-8"))
    except ValueError:
        return []
