"""A throwaway internal CA for the certificate tests, and certificate versions it issued
through the real `x509_ca` provider, as a target receives them."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from keyshift.domain.estate import Policy
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.providers.base import CreateRequest, IssuedVersion
from keyshift.providers.x509_ca import X509CaConfig, X509CaProvider
from keyshift.store.store import Store
from keyshift.targets.base import Delivery
from keyshift.testing import FakeClock
from tests.conftest import run_subprocess
from tests.helpers import rotations_of, steps, value_of, versions

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


def certificate_credential(provider: dict[str, Any], tls: Path, check: list[str]) -> dict[str, Any]:
    """`web-tls` for an nginx-style consumer: key, certificate and chain written as PEM
    files into `tls`, then the `check` argv run on the certificate file (an abort step)."""
    return {
        "name": "web-tls",
        "owner": "team-web",
        "environment": "prod",
        "auto_rotate": True,
        "policy": {"grace_period": "1h"},
        "provider": provider,
        "actions": [
            pem_files(tls, chain=True),
            {
                "type": "command_check",
                "order": 20,
                "on_failure": "abort",
                "config": {"argv": [*check, str(tls / "site.crt")]},
            },
        ],
    }


def pem_thumbprint(pem: bytes) -> str:
    """The SHA-256 thumbprint of a PEM certificate, as a certificate version's fingerprint
    holds it after `sha256:`."""
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def written(directory: Path) -> dict[str, bytes]:
    """The files a certificate's actions wrote into `directory`, by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_renewal_due(store: Store, status_json: str, renew_before: timedelta) -> Any:
    """After a first `web-tls` rotation: `status -o json` (`status_json`) shows it Active
    with the version's fingerprint, and its next rotation on `not_after - renew_before`
    (renew_before is the credential's rotate_before_expiry). Returns the version."""
    [version] = versions(store, "web-tls")
    [row] = json.loads(status_json)
    assert row["fingerprint"] == version.fingerprint
    assert row["lifecycle"] == "Active"
    not_after = version.expires_at
    assert not_after is not None
    due = (not_after.replace(tzinfo=UTC) - renew_before).date().isoformat()
    assert row["next_rotation"] == due, "renew_before is the credential's rotate_before_expiry"
    return version


def assert_renewed(store: Store, tls: Path) -> tuple[Any, Any, dict[str, Any]]:
    """After a second `web-tls` rotation with no grace: the old version is revoked and its
    key erased, the new one is current, its key and certificate are the files in `tls`
    (fingerprint: the thumbprint of the file), and the rotation completed with the check
    and the provider's verification. Returns (old, new, the succeeded steps by name)."""
    old, new = versions(store, "web-tls")
    assert (old.status, new.status) == ("revoked", "current")
    assert old.ciphertext is None, "the revoked version's private key is erased"
    assert (tls / "site.key").read_text() == value_of(store, new)
    assert new.fingerprint == "sha256:" + pem_thumbprint((tls / "site.crt").read_bytes())
    _, rotation = rotations_of(store, "web-tls")
    assert rotation.state == "completed"
    journal = {s.name: s for s in steps(store, rotation.id) if s.status == "succeeded"}
    assert "verifying:20:command_check" in journal
    return old, new, journal


def assert_killed_while_creating_resumes(
    boundary: str, store: Store, ks_env: dict[str, str], tls: Path
) -> None:
    """`rotate web-tls` killed at `boundary` (`creating:issuer`: issued, not stored;
    `creating`: stored, not journaled), then `resume`: the rotation completes with one
    certificate, the stored one when there was one, and its key and certificate are the
    files in `tls`."""
    crashed = run_subprocess(["rotate", "web-tls"], {**ks_env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    stored = versions(store, "web-tls")
    assert len(stored) == (0 if boundary == "creating:issuer" else 1)

    resumed = run_subprocess(["resume"], ks_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [rotation] = rotations_of(store, "web-tls")
    assert rotation.state == "completed"  # a first version has no old one to keep in grace
    [version] = versions(store, "web-tls")
    assert [v.id for v in stored] in ([], [version.id]), "the stored certificate is reused"
    assert version.rotation_id == rotation.id
    assert (tls / "site.key").read_text() == value_of(store, version)
    assert version.fingerprint == "sha256:" + pem_thumbprint((tls / "site.crt").read_bytes())
    creating = [s for s in steps(store, rotation.id) if s.name == "creating"]
    assert [s.status for s in creating][-1] == "succeeded"
    assert creating[-1].detail.get("reused", False) is (boundary == "creating")
