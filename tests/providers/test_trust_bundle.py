"""The `trust_bundle` provider and the CA bundle file it publishes to: a version is a CA
whose key is sealed and never in its attributes; the leaves it signs read key and
certificate through `credential:`; a bundle gets the new CA beside the old one and every
other certificate it holds, loses a failed one on rollback and the old one on withdrawal."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from keyshift.domain.estate import Policy
from keyshift.errors import PermanentError
from keyshift.providers.base import CreateRequest, IssuedVersion, VerifyRequest
from keyshift.providers.trust_bundle import TrustBundleConfig, TrustBundleProvider
from keyshift.providers.x509_ca import X509CaConfig, X509CaProvider
from keyshift.targets.base import PublishRequest, RollbackRequest, WithdrawRequest
from keyshift.targets.file import FileConfig, FileTarget
from keyshift.testing import FakeClock, assert_provider_contract
from tests.certs import START, cert_delivery, issue, make_ca

CLOCK = FakeClock(START)


def provider(**config: object) -> TrustBundleProvider:
    settings = {"common_name": "mesh CA", **config}
    return TrustBundleProvider(TrustBundleConfig.model_validate(settings), CLOCK.context())


def new_ca(rotation: str = "rot-1", **config: object) -> IssuedVersion:
    request = CreateRequest("mesh-ca", rotation, f"keyshift:{rotation}", Policy(), None)
    return asyncio.run(provider(**config).create(request))


def certs_in(path: Path) -> list[str]:
    return [
        c.fingerprint(hashes.SHA256()).hex()
        for c in x509.load_pem_x509_certificates(path.read_bytes())
    ]


def test_it_keeps_the_provider_contract() -> None:
    asyncio.run(assert_provider_contract(provider()))


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048", "ed25519"])
def test_a_version_is_a_ca_whose_key_is_sealed_and_never_in_its_attributes(key_type: str) -> None:
    version = new_ca(key_type=key_type)
    cert = x509.load_pem_x509_certificate(version.attributes["certificate"].encode("ascii"))
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert version.fingerprint == "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
    assert version.expires_at == cert.not_valid_after_utc
    assert version.expires_at - START > timedelta(days=1824)
    assert version.value.reveal().startswith("-----BEGIN PRIVATE KEY-----")
    assert not any("PRIVATE KEY" in v for v in version.attributes.values())
    assert "PRIVATE KEY" not in repr(version)
    answer = asyncio.run(provider().verify(VerifyRequest("mesh-ca", version)))
    assert answer.ok, answer.detail


def test_two_cas_never_share_a_subject_and_a_tampered_one_does_not_verify() -> None:
    first = new_ca()
    CLOCK.advance(timedelta(seconds=1))
    second = new_ca("rot-2")
    assert first.attributes["subject"] != second.attributes["subject"]
    swapped = replace(second, attributes={**second.attributes, "thumbprint": "0" * 64})
    answer = asyncio.run(provider().verify(VerifyRequest("mesh-ca", swapped)))
    assert not answer.ok
    assert "not the one the bundles received" in answer.detail


def test_a_leaf_reads_the_cas_key_and_certificate_through_one_credential_reference() -> None:
    ca = new_ca()
    context = replace(CLOCK.context(), resolve_secret=lambda _path, _ref: ca.value)
    config = X509CaConfig(
        common_name="web.internal",
        ca_key_from="credential:mesh-ca",
        ca_cert_from="credential:mesh-ca",
    )
    leaf_provider = X509CaProvider(config, context)
    request = CreateRequest("web-tls", "rot-9", "keyshift:rot-9", Policy(), None)
    leaf = asyncio.run(leaf_provider.create(request))
    assert leaf.attributes["chain"] == ca.attributes["certificate"], "the chain is the CA alone"
    assert asyncio.run(leaf_provider.verify(VerifyRequest("web-tls", leaf))).ok


def bundle(tmp_path: Path) -> FileTarget:
    config = FileConfig(path=str(tmp_path / "ca-bundle.pem"), file_format="pem_bundle")
    return FileTarget(config, CLOCK.context())


def test_a_bundle_gets_the_new_ca_beside_the_old_and_keeps_every_other_certificate(
    tmp_path: Path,
) -> None:
    other = make_ca(tmp_path / "other", name="someone else's root")
    path = tmp_path / "ca-bundle.pem"
    path.write_bytes(other.cert_path.read_bytes())
    old, new = cert_delivery(new_ca(), "v1"), cert_delivery(new_ca("rot-2"), "v2")
    target = bundle(tmp_path)
    done = asyncio.run(target.publish(PublishRequest(delivery=new, previous=old)))
    expected = [
        other.cert.fingerprint(hashes.SHA256()).hex(),
        new.fingerprint.removeprefix("sha256:"),
        old.fingerprint.removeprefix("sha256:"),
    ]
    assert certs_in(path) == expected
    assert done.detail["changed"] is True
    again = asyncio.run(target.publish(PublishRequest(delivery=new, previous=old)))
    assert again.detail["changed"] is False, "publishing again rewrites nothing"
    assert "PRIVATE KEY" not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)

    asyncio.run(target.withdraw(WithdrawRequest(current=new, withdrawn=old)))
    assert certs_in(path) == expected[:2]


def test_a_rolled_back_bundle_holds_the_old_ca_alone_again(tmp_path: Path) -> None:
    old, new = cert_delivery(new_ca(), "v1"), cert_delivery(new_ca("rot-2"), "v2")
    target = bundle(tmp_path)
    asyncio.run(target.publish(PublishRequest(delivery=new, previous=old)))
    asyncio.run(target.rollback(RollbackRequest(failed=new, previous=old)))
    assert certs_in(tmp_path / "ca-bundle.pem") == [old.fingerprint.removeprefix("sha256:")]


def test_a_bundle_refuses_a_leaf_certificate_and_a_file_holding_a_key(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    leaf = cert_delivery(issue(ca))
    target = bundle(tmp_path)
    with pytest.raises(PermanentError, match="holds no CA certificate"):
        asyncio.run(target.publish(PublishRequest(delivery=leaf, previous=None)))
    (tmp_path / "ca-bundle.pem").write_bytes(ca.key_path.read_bytes())
    with pytest.raises(PermanentError, match="holds a private key") as caught:
        asyncio.run(target.publish(PublishRequest(cert_delivery(new_ca()), None)))
    assert "BEGIN" not in str(caught.value)
