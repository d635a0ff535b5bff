"""`trust_bundle`: an internal CA whose rotation is trust first, identity second.

Each version is a new CA that keyshift makes itself with `cryptography`: a self-signed
certificate (public, in the version's `attributes`, with its subject, `not_after` and
thumbprint) and its private key. The sealed value is the key followed by the
certificate, one PEM text: the `x509_ca` leaves the CA signs name it twice,
`ca_key_from: credential:NAME` and `ca_cert_from: credential:NAME`, and read the key and
the certificate of the bundle's current version from it. The key is never written by a
target: a trust_bundle's publish actions write bundles (`file_format: pem_bundle`),
which hold certificates only.

What verifiers trust is a set of CA certificates: the current version's, plus, from the
moment a new version is published until the old one is withdrawn, the previous one. The
bundle files hold that set (beside any other certificate they hold). A rotation runs in
three phases on the ordinary state machine (see `keyshift.engine.bundle`):

1. publishing/reloading/verifying: the bundles get the new CA beside the old one
   (`TrustFirst`: every publish action is a trust action); `reload_within` passes
   (journaled as `waiting:signers`) before the reload and verify actions, which prove
   the verifiers hold it; the new CA is checked and becomes current.
2. grace, first: every leaf (an `x509_ca` credential whose `ca_key_from` names this
   one) is re-issued by a rotation of its own, requested and awaited as journaled
   steps (`reissuing:<leaf>`, `reissued:<leaf>`).
3. revoking, after the grace period and once every leaf presents a certificate of the
   new CA (`checking:leaves`): the old CA is withdrawn from the bundles
   (`withdrawing:<action>`) and its key erased.

A first version has no old CA and no leaf to re-issue: it is published and made current.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
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
    TrustFirst,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.keys import (
    KeyType,
    Validity,
    load_private_key,
    new_private_key,
    signature_hash,
)
from keyshift.providers.x509_ca import (
    BACKDATE,
    certificate_version,
    imported_certificate,
    is_ca,
    thumbprint,
)

__all__ = ["TrustBundleConfig", "TrustBundleProvider", "ca_certificate", "ca_version"]

KIND: Final = "trust_bundle"

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TrustBundleConfig(Validity):
    """An internal CA named `common_name`, rotated trust first: verifiers' bundles get the
    new CA, the leaves it signs are re-issued, then the old CA leaves the bundles."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    common_name: str = Field(min_length=1, max_length=48)
    """The CA's name; each version's subject is `CN=<common_name> <issued date and time>`,
    so that two CAs in one bundle never share a subject."""
    key_type: KeyType = "ec-p256"
    """The new key of each CA: `rsa-2048`, `rsa-3072`, `ec-p256` or `ed25519`."""
    validity: Duration = timedelta(days=1825)
    """How long each CA certificate is valid; its `not_after` is the version's expiry.
    Leaves it signs must expire before it (x509_ca refuses to sign them otherwise)."""
    reload_within: Duration = timedelta(0)
    """How long verifiers may take to read a bundle again by themselves (a client that
    rereads its CA file every few minutes). The reload and verify actions, and so the
    leaves, wait this long after the bundles were written. 0s: verifiers are reloaded
    by the reload actions."""

    @field_validator("reload_within")
    @classmethod
    def _reload_within(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("reload_within must not be negative")
        return value


def ca_certificate(value: Secret) -> x509.Certificate | None:
    """The CA certificate in a trust_bundle version's value (which holds its key first)."""
    try:
        certs = x509.load_pem_x509_certificates(value.reveal().encode("utf-8"))
    except ValueError:
        return None
    return certs[0] if certs else None


def ca_version(key: Any, key_type: str, cert: x509.Certificate) -> IssuedVersion:
    """A trust_bundle version: the key then the CA certificate, one PEM text, sealed (the
    leaves read both from it); the certificate and what operators read public;
    fingerprinted by the SHA-256 thumbprint, expiring at the `not_after`."""
    version = certificate_version("ca", key, cert, chain_pem="", sans=[], key_type=key_type)
    # A CA has no chain above it and no SANs to show.
    public = {k: v for k, v in version.attributes.items() if k not in ("chain", "sans")}
    return replace(version, value=Secret(version.value.reveal() + _pem(cert)), attributes=public)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


class TrustBundleProvider:
    """Makes CAs; keyshift is the system of record, the verifiers' bundles the trust."""

    kind: ClassVar[str] = KIND
    Config: ClassVar[type[BaseModel]] = TrustBundleConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.IMPORTS}
    )

    @classmethod
    def describe(
        cls, config: TrustBundleConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """What it makes and how it rotates."""
        return {
            "issuer": "keyshift (internal CA, key sealed)",
            "subject": f"CN={config.common_name} <date>",
            "key_type": config.key_type,
            "validity": format_duration(config.validity),
            "reload_within": format_duration(config.reload_within),
        }

    def __init__(self, config: TrustBundleConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        # Every publish action is a trust action (the estate checks it): the wait sits
        # between the bundles and the reload and verify actions, and the grace period is
        # the policy's.
        self.trust_first = TrustFirst(signers_after=config.reload_within, keep_old_for=timedelta(0))

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Always ready: keyshift makes the CA itself and calls nothing."""
        return PreflightResult(
            Readiness.READY,
            f"makes {self.config.key_type} CAs valid {format_duration(self.config.validity)}",
        )

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Make a key and a self-signed CA certificate for it. Nothing leaves the process
        until the engine stores it, and the engine looks for a stored version of this
        rotation before calling, so a resumed rotation never makes a second CA."""
        key = new_private_key(self.config.key_type)
        now = self.context.now()
        name = f"{self.config.common_name} {now:%Y-%m-%d %H:%M:%S}"
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + self.config.validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, signature_hash(key))
        )
        return ca_version(key, self.config.key_type, cert)

    async def import_version(self, request: base.ImportRequest) -> IssuedVersion:
        """The CA verifiers trust now (its private key and its certificate, PEM in any
        order), as the version `create` would have made of it, so the first rotation
        keeps it in the bundles beside the new CA until the leaves are re-issued.
        PermanentError naming the value when the certificate does not belong to the key,
        is expired or is not a CA. Calls nothing."""
        key, key_type, cert, _chain = imported_certificate(request.value, self.context.now())
        if not is_ca(cert):
            raise PermanentError(
                f"value: the certificate {cert.subject.rfc4514_string()} is not a CA "
                "(basicConstraints CA:TRUE is missing)"
            )
        return ca_version(key, key_type, cert)

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """The version's key belongs to its certificate, which is a CA valid now and the
        one its attributes show (what the bundles received). Changes nothing."""
        version = request.version
        cert = ca_certificate(version.value)
        key = load_private_key(version.value)
        if cert is None or key is None:
            return VerifyResult(ok=False, detail="the version holds no CA key and certificate")
        if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
            return VerifyResult(ok=False, detail="the private key does not match the CA")
        if thumbprint(cert) != version.attributes.get("thumbprint"):
            return VerifyResult(ok=False, detail="the CA is not the one the bundles received")
        now = self.context.now()
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            return VerifyResult(ok=False, detail="the CA is not valid now")
        return VerifyResult(
            ok=True,
            detail=f"CA {cert.subject.rfc4514_string()} valid until "
            f"{cert.not_valid_after_utc.isoformat()}",
        )

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Nothing to call: the bundles no longer hold the old CA (withdrawn just before)
        and the engine erases its key. Succeeds when already revoked."""
        attributes = request.version.attributes
        return RevokeResult(
            detail={
                "issuer": "keyshift (internal CA)",
                "subject": str(attributes.get("subject", "")),
                "thumbprint": str(attributes.get("thumbprint", "")),
                "revocation": "the CA's key is erased; the bundles no longer hold its "
                "certificate, so verifiers refuse what it signed",
            }
        )

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """keyshift's store is the only record of the CAs it made."""
        return []

    async def aclose(self) -> None:
        return None
