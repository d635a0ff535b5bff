"""The `jwks_signing_key` provider: key pairs of the asked type whose public JWK (kid =
RFC 7638 thumbprint) and alg are public attributes and whose private key is the sealed
value only; a bad config is refused by field."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import ValidationError

from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.errors import EstateInvalid
from keyshift.providers import PROVIDERS, ProviderKind
from keyshift.providers.base import CreateRequest, IssuedVersion, VerifyRequest, trust_first_of
from keyshift.providers.jwks_signing_key import JwksSigningKeyConfig, JwksSigningKeyProvider
from keyshift.providers.keys import load_private_key
from keyshift.service.estate import parse_estate
from keyshift.targets.jwks import PRIVATE_MEMBERS
from keyshift.testing import FakeClock, assert_provider_contract

KEY_CLASSES = {
    "rsa-2048": rsa.RSAPrivateKey,
    "rsa-3072": rsa.RSAPrivateKey,
    "ec-p256": ec.EllipticCurvePrivateKey,
    "ed25519": ed25519.Ed25519PrivateKey,
}


def provider(**config: Any) -> JwksSigningKeyProvider:
    return JwksSigningKeyProvider(JwksSigningKeyConfig(**config), FakeClock().context())


def create(p: JwksSigningKeyProvider) -> IssuedVersion:
    request = CreateRequest("tokens", "rot-1", "keyshift:rot-1", Policy(), None)
    return asyncio.run(p.create(request))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rfc7638_thumbprint(jwk: dict[str, str]) -> str:
    """The thumbprint computed here from RFC 7638's required members, not by joserfc."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {m: jwk[m] for m in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def test_the_type_is_registered_with_its_class() -> None:
    assert PROVIDERS[ProviderKind.JWKS_SIGNING_KEY] is JwksSigningKeyProvider


@pytest.mark.parametrize("key_type", sorted(KEY_CLASSES))
def test_it_keeps_the_provider_contract_for_every_key_type(key_type: str) -> None:
    asyncio.run(assert_provider_contract(provider(key_type=key_type)))


@pytest.mark.parametrize("key_type", sorted(KEY_CLASSES))
def test_a_version_is_a_key_of_the_type_with_its_public_jwk_and_kid(key_type: str) -> None:
    version = create(provider(key_type=key_type))
    key = load_private_key(version.value)
    assert isinstance(key, KEY_CLASSES[key_type])
    jwk = json.loads(version.attributes["jwk"])
    assert not PRIVATE_MEMBERS & jwk.keys(), "the public JWK holds no private member"
    assert jwk["kid"] == rfc7638_thumbprint(jwk) == version.attributes["kid"]
    assert version.fingerprint == "kid:" + jwk["kid"]
    assert version.provider_ref == "jwk:" + jwk["kid"]
    assert jwk["use"] == "sig"
    assert jwk["alg"] == version.attributes["alg"]
    # Nothing public carries the private key.
    body = "".join(line for line in version.value.reveal().splitlines() if "-----" not in line)
    assert all(body[:40] not in text for text in version.attributes.values())


@pytest.mark.parametrize(
    ("key_type", "alg"),
    [("rsa-2048", "RS256"), ("rsa-3072", "RS256"), ("ec-p256", "ES256"), ("ed25519", "EdDSA")],
)
def test_the_alg_defaults_to_the_one_of_the_key_type(key_type: str, alg: str) -> None:
    assert create(provider(key_type=key_type)).attributes["alg"] == alg


def test_an_rsa_key_may_sign_ps256_and_verifies_with_it() -> None:
    p = provider(key_type="rsa-2048", alg="PS256")
    version = create(p)
    assert version.attributes["alg"] == "PS256"
    assert asyncio.run(p.verify(VerifyRequest("tokens", version))).ok


def test_two_versions_are_two_keys_with_two_kids() -> None:
    p = provider()
    first, second = create(p), create(p)
    assert first.attributes["kid"] != second.attributes["kid"]


def test_verify_refuses_a_private_key_that_is_not_the_one_of_the_jwk() -> None:
    p = provider()
    version, other = create(p), create(p)
    swapped = IssuedVersion(version.provider_ref, other.value, version.attributes)
    result = asyncio.run(p.verify(VerifyRequest("tokens", swapped)))
    assert (result.ok, result.detail) == (False, "the private key does not match the JWK")
    empty = IssuedVersion(version.provider_ref, Secret("not a key"), version.attributes)
    assert not asyncio.run(p.verify(VerifyRequest("tokens", empty))).ok


def test_it_declares_trust_first_with_its_cache_ttl_and_token_lifetime() -> None:
    declared = trust_first_of(provider(cache_ttl="10m", max_token_lifetime="2h"))
    assert declared is not None
    assert (declared.signers_after.total_seconds(), declared.keep_old_for.total_seconds()) == (
        600,
        7200,
    )


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"key_type": "ec-p256", "alg": "RS256"}, "alg", "alg RS256 does not fit key_type ec-p256"),
        ({"key_type": "ed25519", "alg": "ES256"}, "alg", "alg ES256 does not fit key_type ed25519"),
        ({"key_type": "dsa-1024"}, "key_type", "Input should be"),
        ({"cache_ttl": "0s"}, "cache_ttl", "cache_ttl must be longer than 0s"),
        ({"max_token_lifetime": "0s"}, "max_token_lifetime", "must be longer than 0s"),
        ({"kid": "mine"}, "kid", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(
    config: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        JwksSigningKeyConfig(**config)
    [error] = raised.value.errors()
    assert error["loc"] == (field,)
    assert message in error["msg"]


def test_the_estate_names_the_provider_field_that_is_bad() -> None:
    estate = {
        "credentials": [
            {
                "name": "tokens",
                "owner": "team-id",
                "environment": "dev",
                "provider": {"type": "jwks_signing_key", "key_type": "ec-p256", "alg": "RS256"},
                "actions": [],
            }
        ]
    }
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(estate)
    paths = [e.path for e in raised.value.problems]
    assert paths == ["credentials[0].provider.alg"]
