"""A throwaway internal CA for the certificate tests, and certificate versions it issued
through the real `x509_ca` provider, as a target receives them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from keyshift.domain.estate import Policy
from keyshift.providers.base import CreateRequest, IssuedVersion
from keyshift.providers.x509_ca import X509CaConfig, X509CaProvider
from keyshift.targets.base import Delivery
from keyshift.testing import FakeClock

START = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Ca:
    key_path: Path
    cert_path: Path
    cert: x509.Certificate


def make_ca(
    directory: Path,
    *,
    at: datetime = START,
    lifetime: timedelta = timedelta(days=3650),
    key: Any = None,
    is_ca: bool = True,
    name: str = "keyshift test root",
) -> Ca:
    """A self-signed CA valid from a day before `at` for `lifetime`, written as PEM files."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(days=1))
        .not_valid_after(at - timedelta(days=1) + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, algorithm)
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Ca(key_path, cert_path, cert)


def issue(ca: Ca, *, at: datetime = START, **config: Any) -> IssuedVersion:
    """A certificate version for `web.internal` signed by `ca` at `at`."""
    settings = {
        "common_name": "web.internal",
        "sans": ["web.internal", "127.0.0.1"],
        "ca_key_from": f"file:{ca.key_path}",
        "ca_cert_from": f"file:{ca.cert_path}",
        **config,
    }
    provider = X509CaProvider(X509CaConfig(**settings), FakeClock(at).context())
    request = CreateRequest("web-tls", "rot-1", "keyshift:rot-1", Policy(), None)
    return asyncio.run(provider.create(request))


def cert_delivery(version: IssuedVersion, version_id: str = "v2") -> Delivery:
    """`version` as a target receives it."""
    return Delivery(
        credential="web-tls",
        rotation_id="rot-1",
        version_id=version_id,
        fingerprint=version.fingerprint or "",
        value=version.value,
        attributes=dict(version.attributes),
    )


def leaf_provider(ca: Ca, **overrides: Any) -> dict[str, Any]:
    """An `x509_ca` provider declaration: a leaf for `web.internal` signed by `ca`."""
    return {
        "type": "x509_ca",
        "common_name": "web.internal",
        "sans": ["web.internal"],
        "ca_key_from": f"file:{ca.key_path}",
        "ca_cert_from": f"file:{ca.cert_path}",
        **overrides,
    }


def pem_files(directory: Path, *, chain: bool = False, order: int = 10) -> dict[str, Any]:
    """A `file` action writing the certificate and its key (and chain) as PEM files."""
    config: dict[str, Any] = {
        "file_format": "pem",
        "path": str(directory / "site.crt"),
        "key_path": str(directory / "site.key"),
    }
    if chain:
        config["chain_path"] = str(directory / "chain.pem")
    return {"type": "file", "order": order, "on_failure": "abort", "config": config}
