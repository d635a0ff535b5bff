"""The `x509_ca` provider: leaves signed by an internal CA, with the SANs, validity and key
type the config asks for; a bad config or a bad CA is refused by name."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from keyshift.domain.estate import Policy
from keyshift.errors import ConfigError, PermanentError
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    PreflightRequest,
    Readiness,
    RevokeRequest,
    VerifyRequest,
)
from keyshift.providers.x509_ca import X509CaConfig, X509CaProvider
from keyshift.testing import FakeClock, assert_provider_contract
from tests.certs import START, Ca, make_ca


def config(ca: Ca, **overrides: Any) -> dict[str, Any]:
    return {
        "common_name": "web.internal",
        "sans": ["web.internal", "www.web.internal", "10.0.0.7"],
        "validity": "90d",
        "renew_before": "30d",
        "ca_key_from": f"file:{ca.key_path}",
        "ca_cert_from": f"file:{ca.cert_path}",
        **overrides,
    }


def provider(ca: Ca, clock: FakeClock | None = None, **overrides: Any) -> X509CaProvider:
    clock = clock or FakeClock(START)
    return X509CaProvider(X509CaConfig(**config(ca, **overrides)), clock.context())


def create(p: X509CaProvider) -> IssuedVersion:
    request = CreateRequest(
        credential="web-tls",
        rotation_id="rot-1",
        marker="keyshift:rot-1",
        policy=Policy(),
        current=None,
    )
    return asyncio.run(p.create(request))


def leaf(version: IssuedVersion) -> x509.Certificate:
    return x509.load_pem_x509_certificate(version.attributes["certificate"].encode())


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "ca")


def test_x509_ca_provider_keeps_the_provider_contract(ca: Ca) -> None:
    asyncio.run(assert_provider_contract(provider(ca)))


def test_the_leaf_is_signed_by_the_ca_and_names_the_sans(ca: Ca) -> None:
    version = create(provider(ca))
    cert = leaf(version)
    cert.verify_directly_issued_by(ca.cert)  # raises unless the CA's key signed it
    assert cert.issuer == ca.cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web.internal"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.internal", "www.web.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert version.attributes["chain"] == ca.cert_path.read_text()


def test_validity_runs_from_now_and_expires_at_is_the_not_after(ca: Ca) -> None:
    version = create(provider(ca, validity="10d", renew_before="3d"))
    cert = leaf(version)
    assert cert.not_valid_after_utc == START + timedelta(days=10)
    assert cert.not_valid_before_utc <= START
    assert version.expires_at == cert.not_valid_after_utc
    assert version.attributes["not_after"] == "2030-03-11T12:00:00+00:00"


def test_the_fingerprint_is_the_sha256_thumbprint_of_the_certificate(ca: Ca) -> None:
    version = create(provider(ca))
    thumbprint = leaf(version).fingerprint(hashes.SHA256()).hex()
    assert version.fingerprint == f"sha256:{thumbprint}"
    assert version.attributes["thumbprint"] == thumbprint


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [
        ("rsa-2048", (rsa.RSAPublicKey, 2048)),
        ("rsa-3072", (rsa.RSAPublicKey, 3072)),
        ("ec-p256", (ec.EllipticCurvePublicKey, 256)),
        ("ed25519", (ed25519.Ed25519PublicKey, None)),
    ],
)
def test_the_leaf_key_has_the_configured_type_and_the_value_is_its_private_key(
    ca: Ca, key_type: str, expected: tuple[type, int | None]
) -> None:
    version = create(provider(ca, key_type=key_type))
    public = leaf(version).public_key()
    kind, size = expected
    assert isinstance(public, kind)
    if size is not None:
        assert public.key_size == size  # type: ignore[attr-defined]
    private = serialization.load_pem_private_key(version.value.reveal().encode(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert private.public_key().public_bytes(*spki) == public.public_bytes(*spki)
    assert version.attributes["key_type"] == key_type


def test_an_ed25519_or_rsa_ca_signs_too(tmp_path: Path) -> None:
    for name, key in (
        ("ed", ed25519.Ed25519PrivateKey.generate()),
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        ca = make_ca(tmp_path / name, key=key)
        leaf(create(provider(ca))).verify_directly_issued_by(ca.cert)


def test_two_creates_issue_distinct_certificates_and_keys(ca: Ca) -> None:
    p = provider(ca)
    first, second = create(p), create(p)
    assert first.provider_ref != second.provider_ref
    assert first.value.reveal() != second.value.reveal()
    assert first.attributes["serial_number"] != second.attributes["serial_number"]


def test_capabilities_are_dual_active_and_not_in_place(ca: Ca) -> None:
    caps = provider(ca).capabilities
    assert Capability.DUAL_ACTIVE in caps
    assert Capability.IN_PLACE not in caps
    assert Capability.AUTHENTICATES not in caps


def test_verify_refuses_a_certificate_another_ca_signed(ca: Ca, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other", name="someone else")
    foreign = create(provider(other))
    result = asyncio.run(provider(ca).verify(VerifyRequest("web-tls", foreign)))
    assert not result.ok
    assert "not signed by" in result.detail


def test_verify_refuses_a_key_that_does_not_match_the_certificate(ca: Ca) -> None:
    p = provider(ca)
    one, two = create(p), create(p)
    mixed = IssuedVersion(one.provider_ref, two.value, one.attributes, one.expires_at)
    result = asyncio.run(p.verify(VerifyRequest("web-tls", mixed)))
    assert (result.ok, result.detail) == (False, "the private key does not match the certificate")


def test_verify_refuses_an_expired_certificate(ca: Ca) -> None:
    clock = FakeClock(START)
    p = provider(ca, clock, validity="2d", renew_before="1d")
    version = create(p)
    clock.advance(timedelta(days=3))
    result = asyncio.run(p.verify(VerifyRequest("web-tls", version)))
    assert not result.ok
    assert "expired" in result.detail


def test_revoke_records_the_serial_and_says_the_certificate_stays_valid(ca: Ca) -> None:
    p = provider(ca)
    version = create(p)
    result = asyncio.run(p.revoke(RevokeRequest("web-tls", "rot-2", version)))
    assert result.detail["serial_number"] == version.attributes["serial_number"]
    assert "until its not_after" in result.detail["revocation"]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"key_type": "rsa-1024"}, "key_type", "rsa-2048"),
        ({"sans": ["not a host!"]}, "sans", "not a DNS name or IP address"),
        ({"sans": ["a.internal", "a.internal"]}, "sans", "twice"),
        ({"validity": "0s"}, "validity", "longer than 0s"),
        ({"validity": "90d", "renew_before": "90d"}, "renew_before", "shorter than validity"),
        ({"ca_key_from": "-----BEGIN PRIVATE KEY-----"}, "ca_key_from", "env:NAME"),
        ({"common_name": ""}, "common_name", "at least 1"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
def test_a_bad_config_names_the_bad_field(
    ca: Ca, overrides: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        X509CaConfig(**config(ca, **overrides))
    [error] = caught.value.errors()
    assert error["loc"][0] == field
    assert words in str(error["msg"])


def test_preflight_is_ready_with_a_matching_valid_ca(ca: Ca) -> None:
    result = asyncio.run(provider(ca).preflight(PreflightRequest("web-tls")))
    assert result.readiness == Readiness.READY
    assert "keyshift test root" in result.reason


def test_preflight_blocks_when_the_ca_key_does_not_belong_to_the_ca_cert(
    ca: Ca, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other")
    p = provider(ca, ca_key_from=f"file:{other.key_path}")
    result = asyncio.run(p.preflight(PreflightRequest("web-tls")))
    assert result.readiness == Readiness.BLOCKED
    assert "ca_key_from" in result.reason
    assert "does not belong to" in result.reason
    with pytest.raises(PermanentError, match="does not belong to"):
        create(p)


def test_a_certificate_that_is_not_a_ca_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "leafy", is_ca=False)
    with pytest.raises(PermanentError, match=r"provider\.ca_cert_from: .* is not a CA"):
        create(provider(ca))


def test_a_leaf_that_would_outlive_its_ca_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "short", lifetime=timedelta(days=30))
    with pytest.raises(PermanentError, match="expires before the new certificate would"):
        create(provider(ca, validity="90d"))


def test_a_missing_ca_key_is_a_config_error_naming_the_field(ca: Ca, tmp_path: Path) -> None:
    p = provider(ca, ca_key_from=f"file:{tmp_path / 'nowhere.key'}")
    with pytest.raises(ConfigError) as caught:
        create(p)
    assert caught.value.path == "provider.ca_key_from"


def test_a_ca_key_that_is_not_pem_is_refused_without_quoting_it(ca: Ca, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not-a-key-but-maybe-a-secret-0123456789")
    p = provider(ca, ca_key_from=f"file:{garbage}")
    with pytest.raises(PermanentError) as caught:
        create(p)
    assert "provider.ca_key_from" in str(caught.value)
    assert "maybe-a-secret" not in str(caught.value)


def test_renewal_is_due_renew_before_the_not_after() -> None:
    """`renew_before` becomes the credential's rotate_before_expiry (see the estate)."""
    cfg = X509CaConfig(
        common_name="a",
        validity="90d",
        renew_before="20d",
        ca_key_from="env:K",
        ca_cert_from="env:C",
    )
    assert X509CaProvider.rotate_before_expiry(cfg) == timedelta(days=20)
