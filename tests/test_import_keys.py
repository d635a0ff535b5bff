"""`keyshift import` of a signing key or a certificate: the key (with the certificate and
its chain) becomes the credential's current version as the provider would have made it,
so the first rotation is trust first with it as the old version: the JWKS keeps its kid
and the tokens it signed verify throughout; `status` and `versions` show the imported
certificate. Bad input names the field and changes nothing; no key is ever shown."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.providers.acme import AcmeConfig, AcmeProvider
from keyshift.providers.base import ImportRequest, IssuedVersion, VerifyRequest
from keyshift.providers.jwks_signing_key import (
    JwksSigningKeyConfig,
    JwksSigningKeyProvider,
    public_jwk,
)
from keyshift.providers.keys import private_pem
from keyshift.service import imports, rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.api.conftest import open_api
from tests.certs import Ca, certificate_credential, issue, leaf_provider, make_ca
from tests.conftest import Cli
from tests.helpers import audit_details, save_estate, value_of, versions
from tests.providers.test_jwks_rotation import (
    CREDENTIAL,
    TICK,
    Traffic,
    estate,
    kids_in,
    signer_kid,
    verifiers,
    watch,
)

LEGACY_KID = "issuer-2024-01"


def traditional_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """The key as `openssl genrsa` writes it (traditional, not PKCS#8)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def deployed(tmp_path: Path, key: rsa.RSAPrivateKey, kid: str, alg: str) -> None:
    """What the team runs before keyshift: a JWKS holding the key's public JWK under
    `kid`, and a signer signing with it."""
    jwk = {**public_jwk(key, alg), "kid": kid}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    signer = {"key": traditional_pem(key), "kid": kid, "alg": alg}
    (tmp_path / "signer.json").write_text(json.dumps(signer), encoding="utf-8")


def test_a_rotation_after_importing_a_signing_key_keeps_its_kid_until_its_tokens_expire(
    store: Store, tmp_path: Path
) -> None:
    """An RSA key verifiers know by a non-thumbprint kid is imported, then rotated: every
    token it signed before and during the rollover verifies at every verifier; the JWKS
    holds both kids in the window and drops the imported one max_token_lifetime after the
    signers switched; its key is then erased."""
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path)), actor="test")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    deployed(tmp_path, key, LEGACY_KID, "RS256")
    made = asyncio.run(
        imports.import_value(
            store,
            CREDENTIAL,
            Secret(traditional_pem(key)),
            actor="test",
            kid=LEGACY_KID,
            context=clock.context(),
        )
    )
    [imported] = versions(store, CREDENTIAL)
    assert made.fingerprint == f"kid:{LEGACY_KID}"
    assert (imported.attributes["kid"], imported.attributes["alg"]) == (LEGACY_KID, "RS256")
    assert imported.attributes["key_type"] == "rsa-2048"
    assert (
        json.loads(imported.attributes["jwk"])
        == json.loads((tmp_path / "jwks.json").read_text())["keys"][0]
    )
    assert "d" not in json.loads(imported.attributes["jwk"])

    traffic = Traffic(tmp_path, clock, timedelta(minutes=30), [])
    traffic.verifiers = verifiers(tmp_path, clock, timedelta(minutes=5))
    for _ in range(10):  # tokens in flight, signed with the imported key
        clock.advance(TICK)
        traffic()
    asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(), on_event=traffic)
    )
    _, new = versions(store, CREDENTIAL)
    second = new.attributes["kid"]
    assert kids_in(tmp_path / "jwks.json") == [LEGACY_KID, second]
    assert signer_kid(tmp_path) == LEGACY_KID
    switched_at, removed_at = watch(store, tmp_path, clock, traffic, second, minutes=59)

    assert traffic.failures == []
    assert traffic.kids_signed == {LEGACY_KID, second}
    assert switched_at == 5
    assert removed_at == 5 + 30, "the imported kid stays max_token_lifetime after the switch"
    old, current = versions(store, CREDENTIAL)
    assert (old.provenance, old.status, current.status) == ("imported", "revoked", "current")
    assert old.ciphertext is None, "the imported private key is erased"


def test_without_a_kid_the_imported_key_is_named_by_its_thumbprint(
    store: Store, tmp_path: Path
) -> None:
    apply_estate(store, parse_estate(estate(tmp_path)), actor="test")
    key = ec.generate_private_key(ec.SECP256R1())
    asyncio.run(imports.import_value(store, CREDENTIAL, Secret(traditional_pem(key)), actor="t"))
    [imported] = versions(store, CREDENTIAL)
    assert imported.attributes["kid"] == public_jwk(key, "ES256")["kid"]
    assert imported.fingerprint == "kid:" + imported.attributes["kid"]
    # Sealed as PKCS#8, the form every version's key has.
    assert value_of(store, imported).startswith("-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("not a key at all", "value: holds no PEM private key"),
        (
            traditional_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505 (refused)
            "value: a RSA 1024-bit key is not one of the key types",
        ),
        (
            traditional_pem(ec.generate_private_key(ec.SECP384R1())),
            "is not one of the key types",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "value: the PEM private key does not parse",
        ),
    ],
    ids=["not PEM", "RSA 1024", "EC P-384", "garbled PEM"],
)
def test_a_key_the_provider_cannot_take_is_refused_naming_the_value(
    store: Store, tmp_path: Path, value: str, says: str
) -> None:
    apply_estate(store, parse_estate(estate(tmp_path)), actor="test")
    with pytest.raises(PermanentError, match=re.escape(says)) as refused:
        asyncio.run(imports.import_value(store, CREDENTIAL, Secret(value), actor="t"))
    assert "BEGIN" not in str(refused.value)
    assert versions(store, CREDENTIAL) == []
    assert audit_details(store, "version.imported") == []


def test_the_cli_imports_a_signing_key_with_its_kid_and_never_prints_it(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(save_estate(tmp_path, estate(tmp_path)))).exit_code == 0
    # Ed25519: its PEM holds no public part that the JWK may show.
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode("ascii")
    )
    source = tmp_path / "signing.key"
    source.write_text(pem, encoding="utf-8")
    done = cli("import", CREDENTIAL, "--from", f"file:{source}", "--kid", LEGACY_KID)
    assert done.exit_code == 0, done.output
    assert f"kid:{LEGACY_KID}" in done.output
    [audited] = audit_details(store, "version.imported")
    assert audited["attributes"]["kid"] == LEGACY_KID
    assert audited["attributes"]["alg"] == "EdDSA"  # the config's ES256 does not fit it
    body = "".join(pem.splitlines()[1:-1])
    pieces = {body[i : i + 16] for i in range(len(body) - 15)}
    for shown in (done.output, json.dumps(audited)):
        assert not any(piece in shown for piece in pieces)
    assert "PRIVATE KEY" not in done.output + json.dumps(audited)


def test_a_kid_for_a_provider_without_kids_is_refused(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(certificate_estate(tmp_path, ca))).exit_code == 0
    done = cli("import", "web-tls", "--kid", "k1", stdin=bundle(ca))
    assert done.exit_code == 1
    assert "--kid" in done.output
    assert versions(store, "web-tls") == []


# Certificates -------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    # Valid from before the expired leaf one test imports.
    return make_ca(tmp_path / "ca", at=datetime.now(UTC) - timedelta(days=10))


def certificate_estate(tmp_path: Path, ca: Ca) -> Path:
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    provider = leaf_provider(ca, sans=["web.internal"], validity="90d", renew_before="20d")
    return save_estate(tmp_path, {"credentials": [certificate_credential(provider, tls, ["true"])]})


def bundle(ca: Ca, *, validity: str = "60d", at: datetime | None = None) -> str:
    """An existing leaf's key, certificate and chain, one PEM text, as `cat` makes it."""
    leaf = issue(ca, at=at or datetime.now(UTC), validity=validity, renew_before="1d")
    return leaf.value.reveal() + leaf.attributes["certificate"] + ca.cert_path.read_text()


def test_an_imported_certificate_is_the_version_status_and_versions_show(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    """Its thumbprint and not_after, not a new certificate's; its not_after sets the
    expiry (a 10-day certificate is Expiring Soon); only its key is sealed."""
    assert cli("apply", "-f", str(certificate_estate(tmp_path, ca))).exit_code == 0
    text = bundle(ca, validity="10d")
    done = cli("import", "web-tls", stdin=text)
    assert done.exit_code == 0, done.output
    [imported] = versions(store, "web-tls")
    leaf = issue_cert(text)
    assert imported.attributes["thumbprint"] == leaf.fingerprint(_sha256()).hex()
    assert imported.fingerprint == "sha256:" + imported.attributes["thumbprint"]
    assert imported.expires_at is not None
    assert imported.expires_at.replace(tzinfo=UTC) == leaf.not_valid_after_utc
    assert imported.attributes["sans"] == "web.internal, 127.0.0.1"
    assert imported.attributes["chain"] == ca.cert_path.read_text()
    assert value_of(store, imported).count("PRIVATE KEY-----") == 2  # the key alone
    assert "CERTIFICATE" not in value_of(store, imported)

    [row] = json.loads(cli("status", "-o", "json").stdout)
    assert row["lifecycle"] == "Expiring Soon"
    assert row["days_left"] in (9, 10)
    [line] = json.loads(cli("versions", "web-tls", "-o", "json").stdout)
    assert line["certificate"]["thumbprint"] == imported.attributes["thumbprint"]
    assert line["certificate"]["not_after"].startswith(leaf.not_valid_after_utc.isoformat()[:19])
    key_lines = value_of(store, imported).splitlines()[1:-1]
    for output in (done.output, json.dumps(row), json.dumps(line)):
        assert not any(k in output for k in key_lines)


def test_the_first_rotation_after_a_certificate_import_retires_the_imported_one(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(certificate_estate(tmp_path, ca))).exit_code == 0
    assert cli("import", "web-tls", stdin=bundle(ca)).exit_code == 0
    assert cli("rotate", "web-tls", "--grace", "0s").exit_code == 0
    old, new = versions(store, "web-tls")
    assert (old.provenance, old.status) == ("imported", "revoked")
    assert new.status == "current"
    assert new.attributes["thumbprint"] != old.attributes["thumbprint"]


def test_a_certificate_not_of_the_key_or_expired_is_refused_changing_nothing(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(certificate_estate(tmp_path, ca))).exit_code == 0
    mine, other = bundle(ca), bundle(ca)
    other_key = other.split("-----END PRIVATE KEY-----")[0] + "-----END PRIVATE KEY-----\n"
    mismatched = other_key + mine.split("-----END PRIVATE KEY-----\n", 1)[1]
    refused = cli("import", "web-tls", stdin=mismatched)
    assert refused.exit_code == 1
    assert "no certificate belongs to the private key" in refused.output
    expired = bundle(ca, validity="2d", at=datetime.now(UTC) - timedelta(days=3))
    late = cli("import", "web-tls", stdin=expired)
    assert late.exit_code == 1
    assert "expired at" in late.output
    no_cert = cli("import", "web-tls", stdin=other_key)
    assert no_cert.exit_code == 1
    assert "holds no PEM certificate" in no_cert.output
    for output in (refused.output, late.output, no_cert.output):
        assert "PRIVATE KEY" not in output
    assert versions(store, "web-tls") == []
    assert audit_details(store, "version.imported") == []


def test_a_trust_bundle_imports_a_ca_and_refuses_a_leaf(store: Store, tmp_path: Path) -> None:
    apply_estate(
        store,
        parse_estate(
            {
                "credentials": [
                    {
                        "name": "root",
                        "owner": "team-pki",
                        "environment": "dev",
                        "provider": {"type": "trust_bundle", "common_name": "root"},
                        "actions": [
                            {
                                "type": "file",
                                "order": 10,
                                "on_failure": "abort",
                                "config": {
                                    "path": str(tmp_path / "bundle.pem"),
                                    "file_format": "pem_bundle",
                                },
                            }
                        ],
                    }
                ]
            }
        ),
        actor="test",
    )
    ca = make_ca(tmp_path / "existing", at=datetime.now(UTC))
    leaf = bundle(ca)
    with pytest.raises(
        PermanentError, match=re.escape("value: the certificate CN=web.internal is not a CA")
    ):
        asyncio.run(imports.import_value(store, "root", Secret(leaf), actor="t"))
    assert versions(store, "root") == []
    text = ca.key_path.read_text() + ca.cert_path.read_text()
    asyncio.run(imports.import_value(store, "root", Secret(text), actor="t"))
    [imported] = versions(store, "root")
    assert imported.attributes["thumbprint"] == ca.cert.fingerprint(_sha256()).hex()
    # Sealed as every trust_bundle version is: the key, then the CA certificate.
    assert value_of(store, imported).endswith(ca.cert_path.read_text())


def issue_cert(text: str) -> x509.Certificate:
    """The leaf (first) certificate of a bundle."""
    return x509.load_pem_x509_certificates(text.encode())[0]


def _sha256() -> hashes.SHA256:
    return hashes.SHA256()


def test_an_imported_key_under_its_own_kid_verifies_as_the_provider_checks_it() -> None:
    """verify compares the JWK with the version's kid, not a recomputed thumbprint: a key
    imported under a kid verifiers know is a valid version (and another key is not)."""
    provider = JwksSigningKeyProvider(JwksSigningKeyConfig(), FakeClock().context())
    key = ec.generate_private_key(ec.SECP256R1())
    request = ImportRequest("tokens", Secret(traditional_pem(key)), kid=LEGACY_KID)
    version = asyncio.run(provider.import_version(request))
    verdict = asyncio.run(provider.verify(VerifyRequest("tokens", version)))
    assert verdict.ok, verdict.detail
    assert LEGACY_KID in verdict.detail
    other = ec.generate_private_key(ec.SECP256R1())
    swapped = IssuedVersion(version.provider_ref, private_pem(other), version.attributes)
    assert not asyncio.run(provider.verify(VerifyRequest("tokens", swapped))).ok


def test_the_api_imports_a_signing_key_under_its_kid_and_never_answers_it(
    store: Store, tmp_path: Path
) -> None:
    for api in open_api(store):
        document = estate(tmp_path)
        assert api.call("POST", "/v1/estate/apply", json=document).status_code == 200
        pem = traditional_pem(ec.generate_private_key(ec.SECP256R1()))
        body = {"value": pem, "kid": LEGACY_KID}
        made = api.call("POST", f"/v1/credentials/{CREDENTIAL}/import", json=body, role="operator")
        assert made.status_code == 201, made.text
        assert made.json()["fingerprint"] == f"kid:{LEGACY_KID}"
        assert "PRIVATE KEY" not in made.text
        assert pem.splitlines()[1] not in made.text


def test_acme_imports_a_certificate_with_its_chain_and_refuses_one_without(
    tmp_path: Path, ca: Ca
) -> None:
    """An ACME certificate in use (from any CA) is taken with its chain, which its verify
    checks it by; without the chain it is refused, naming the value. Calls no CA."""
    config = AcmeConfig(
        directory_url="https://acme.example.test/directory",
        domains=["web.internal"],
        challenge={"type": "http-01", "webroot": str(tmp_path)},
    )
    provider = AcmeProvider(config, FakeClock(datetime.now(UTC)).context())
    text = bundle(ca)
    version = asyncio.run(provider.import_version(ImportRequest("web-tls", Secret(text))))
    assert version.provider_ref.startswith("acme:")
    assert version.attributes["acme_directory"] == "https://acme.example.test/directory"
    assert version.attributes["chain"] == ca.cert_path.read_text()
    assert asyncio.run(provider.verify(VerifyRequest("web-tls", version))).ok
    without_chain = text.removesuffix(ca.cert_path.read_text())
    with pytest.raises(PermanentError, match="value: give the CA's chain"):
        asyncio.run(provider.import_version(ImportRequest("web-tls", Secret(without_chain))))
