"""The `acme` provider against a real ACME server (Debian's pebble): certificates issued
through http-01 and dns-01 that chain to pebble's CA, one account reused by its key, a
failing challenge refused with a clear error that quotes no key, a flaky CA (badNonce)
held against, a rate limit waited out within a bound, and bad configs named by field."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.errors import PermanentError, TransientError
from keyshift.providers.acme import RATE_LIMIT_WAIT, AcmeConfig, AcmeProvider
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    PreflightRequest,
    Readiness,
    RevokeRequest,
    VerifyRequest,
)
from keyshift.testing import FakeClock, assert_provider_contract, capture_logs
from tests.doubles.acme import rate_limiting_ca
from tests.doubles.tls import TlsFiles
from tests.servers import (
    Pebble,
    dns_hook,
    free_port,
    pebble_installed,
    pebble_server,
    webroot_server,
)

pytestmark = pytest.mark.skipif(not pebble_installed(), reason="pebble is not installed")

DOMAINS = ["web.example.test", "www.example.test"]


def settings(pebble: Pebble, webroot: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "directory_url": pebble.directory_url,
        "ca_bundle": str(pebble.ca_bundle),
        "agree_to_terms": True,
        "contact": ["ops@example.test"],
        "domains": DOMAINS,
        "challenge": {"type": "http-01", "webroot": str(webroot)},
        "renew_before": "10d",
        **overrides,
    }


def provider(
    pebble: Pebble, webroot: Path, context: PluginContext | None = None, **overrides: Any
) -> AcmeProvider:
    return AcmeProvider(
        AcmeConfig(**settings(pebble, webroot, **overrides)), context or PluginContext()
    )


def create(p: AcmeProvider) -> IssuedVersion:
    request = CreateRequest("web-tls", "rot-1", "keyshift:rot-1", Policy(), None)
    return asyncio.run(p.create(request))


def leaf(version: IssuedVersion) -> x509.Certificate:
    return x509.load_pem_x509_certificate(version.attributes["certificate"].encode())


def test_acme_provider_keeps_the_provider_contract(
    pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    asyncio.run(assert_provider_contract(provider(pebble, webroot, revoke_on_retire=True)))


def test_http01_issues_a_certificate_for_the_domains_that_chains_to_the_cas_issuer(
    pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    version = create(provider(pebble, webroot))
    cert = leaf(version)
    intermediate = x509.load_pem_x509_certificate(pebble.issuer_pem("intermediates").encode())
    root = x509.load_pem_x509_certificate(pebble.issuer_pem("roots").encode())
    cert.verify_directly_issued_by(intermediate)  # raises unless pebble's CA signed it
    intermediate.verify_directly_issued_by(root)
    assert version.attributes["chain"] == pebble.issuer_pem("intermediates")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DOMAINS[0]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(DOMAINS)
    # The key is the sealed value and belongs to the certificate.
    private = serialization.load_pem_private_key(version.value.reveal().encode(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key() == cert.public_key()
    thumbprint = cert.fingerprint(hashes.SHA256()).hex()
    assert version.fingerprint == f"sha256:{thumbprint}"
    assert version.expires_at == cert.not_valid_after_utc
    assert version.provider_ref == f"acme:{version.attributes['serial_number']}"
    assert version.attributes["acme_order"].startswith(pebble.directory_url.rsplit("/", 1)[0])
    # pebble really fetched one answer per domain from the webroot, which is empty again.
    fetched = [line for line in served if "/.well-known/acme-challenge/" in line]
    assert len(fetched) >= len(DOMAINS)
    assert all(line.endswith(" 200") for line in fetched)
    assert [p for p in webroot.rglob("*") if p.is_file()] == []
    verified = asyncio.run(provider(pebble, webroot).verify(VerifyRequest("web-tls", version)))
    assert verified.ok, verified.detail


def test_an_order_leaves_the_event_loop_free_for_other_work(
    pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    """The acme library blocks on the network; the loop goes on ticking while it does."""

    async def order_and_tick() -> tuple[IssuedVersion, int]:
        ticks = 0
        task = asyncio.create_task(
            provider(pebble, webroot).create(
                CreateRequest("web-tls", "rot-1", "keyshift:rot-1", Policy(), None)
            )
        )
        while not task.done():
            await asyncio.sleep(0.005)
            ticks += 1
        return await task, ticks

    version, ticks = asyncio.run(order_and_tick())
    assert version.attributes["serial_number"]
    assert ticks >= 20, "an order of several round trips must not hold the loop"


def test_dns01_issues_a_wildcard_through_the_hook_which_presents_and_cleans_up(
    pebble: Pebble, webroot: Path, tmp_path: Path
) -> None:
    challenge, log = dns_hook(pebble, tmp_path)
    domains = ["example.test", "*.example.test"]
    version = create(provider(pebble, webroot, domains=domains, challenge=challenge))
    sans = leaf(version).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(domains)
    calls = log.read_text().splitlines()
    # Both authorizations (the name and its wildcard) have the same record name.
    assert sorted(calls) == sorted(
        ["present _acme-challenge.example.test"] * 2 + ["cleanup _acme-challenge.example.test"] * 2
    )
    assert calls.index("cleanup _acme-challenge.example.test") > max(
        i for i, c in enumerate(calls) if c.startswith("present")
    )


def test_an_http01_answer_nobody_serves_fails_the_order_naming_the_domain_and_no_key(
    pebble: Pebble, webroot: Path
) -> None:
    with capture_logs() as events, pytest.raises(PermanentError) as caught:
        create(provider(pebble, webroot, domains=["unserved.example.test"]))
    message = str(caught.value)
    assert "could not validate unserved.example.test (http-01)" in message
    assert "PRIVATE KEY" not in message
    assert [p for p in webroot.rglob("*") if p.is_file()] == [], "the answer is removed"
    assert not any("PRIVATE KEY" in json.dumps(e, default=str) for e in events)


def test_a_webroot_keyshift_cannot_write_fails_the_order_naming_the_field(
    pebble: Pebble, tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "www"
    not_a_directory.write_text("a file where the webroot should be")
    with pytest.raises(PermanentError, match=r"^provider\.challenge\.webroot: cannot write "):
        create(provider(pebble, not_a_directory))


def test_a_failing_dns_hook_fails_the_order_without_quoting_its_output(
    pebble: Pebble, webroot: Path, tmp_path: Path
) -> None:
    challenge, log = dns_hook(pebble, tmp_path)
    p = provider(pebble, webroot, domains=["fail.example.test"], challenge=challenge)
    with pytest.raises(PermanentError) as caught:
        create(p)
    message = str(caught.value)
    assert message.startswith("provider.challenge.hook: ")
    assert "present _acme-challenge.fail.example.test failed (exit code 3)" in message
    assert "dns-api-token" not in message
    assert log.read_text().splitlines() == [
        "present _acme-challenge.fail.example.test",
        "cleanup _acme-challenge.fail.example.test",
    ]


def test_an_account_key_reuses_one_account_and_without_one_each_order_has_its_own(
    pebble: Pebble, webroot: Path, served: list[str], tmp_path: Path
) -> None:
    key = tmp_path / "account.key"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    kept = provider(pebble, webroot, account_key_from=f"file:{key}")
    first, second = create(kept), create(kept)
    assert first.attributes["acme_account"] == second.attributes["acme_account"]
    assert first.attributes["serial_number"] != second.attributes["serial_number"]
    fresh = provider(pebble, webroot)
    one, two = create(fresh), create(fresh)
    assert (
        len(
            {
                one.attributes["acme_account"],
                two.attributes["acme_account"],
                first.attributes["acme_account"],
            }
        )
        == 3
    )


def test_a_flaky_ca_rejecting_nonces_is_held_against_by_retrying_them(
    webroot: Path, tmp_path: Path
) -> None:
    """pebble refuses 40% of good nonces; each order still succeeds, and the retries
    that made it are counted."""
    with (
        pebble_server(tmp_path / "flaky", nonce_reject=40) as flaky,
        webroot_server(webroot, flaky.http_port),
        capture_logs() as events,
    ):
        p = provider(flaky, webroot)
        versions = [create(p) for _ in range(3)]
    assert len({v.attributes["serial_number"] for v in versions}) == 3
    retries = [e for e in events if e["event"] == "acme bad nonce, retrying"]
    assert len(retries) >= 3, "pebble refused nonces, which were retried"


def test_a_ca_requiring_account_binding_registers_with_eab_and_refuses_without(
    webroot: Path, tmp_path: Path
) -> None:
    hmac_key = base64.urlsafe_b64encode(b"h" * 32).rstrip(b"=").decode()
    wrong = tmp_path / "wrong.hmac"
    wrong.write_text(base64.urlsafe_b64encode(b"w" * 32).rstrip(b"=").decode())
    good = tmp_path / "good.hmac"
    good.write_text(hmac_key)
    eab = {"eab_kid": "kid-1", "eab_hmac_key_from": f"file:{good}"}
    with (
        pebble_server(tmp_path / "eab", eab_keys={"kid-1": hmac_key}) as ca,
        webroot_server(webroot, ca.http_port),
    ):
        bare = provider(ca, webroot)
        blocked = asyncio.run(bare.preflight(PreflightRequest("web-tls")))
        assert blocked.readiness == Readiness.BLOCKED
        assert blocked.reason.startswith("provider.eab_kid: ")
        with pytest.raises(PermanentError, match=r"^provider\.eab_kid: .*external account"):
            create(bare)
        wrong_key = {**eab, "eab_hmac_key_from": f"file:{wrong}"}
        with pytest.raises(PermanentError) as caught:
            create(provider(ca, webroot, **wrong_key))
        assert "registering the ACME account: the ACME server answered" in str(caught.value)
        assert wrong.read_text() not in str(caught.value)
        bound = provider(ca, webroot, **eab)
        ready = asyncio.run(bound.preflight(PreflightRequest("web-tls")))
        assert ready.readiness == Readiness.READY, ready.reason
        version = create(bound)
    assert version.attributes["acme_account"]
    assert hmac_key not in json.dumps(dict(version.attributes))


def test_revoke_only_records_unless_revoke_on_retire_and_then_the_ca_revokes(
    pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    def status(version: IssuedVersion) -> str:
        serial = version.attributes["serial_number"]
        return str(json.loads(pebble.get(f"/cert-status-by-serial/{serial}"))["Status"])

    quiet = provider(pebble, webroot)
    kept = create(quiet)
    result = asyncio.run(quiet.revoke(RevokeRequest("web-tls", "rot-2", kept)))
    assert "stays valid until its not_after" in result.detail["revocation"]
    assert status(kept) == "Valid"

    revoking = provider(pebble, webroot, revoke_on_retire=True)
    gone = create(revoking)
    result = asyncio.run(revoking.revoke(RevokeRequest("web-tls", "rot-2", gone)))
    assert result.detail["revocation"] == "revoked at the CA (reason superseded)"
    assert status(gone) == "Revoked"
    again = asyncio.run(revoking.revoke(RevokeRequest("web-tls", "rot-2", gone)))
    assert again.already_gone


def test_preflight_is_ready_and_blocks_on_terms_not_agreed_or_a_missing_webroot(
    pebble: Pebble, webroot: Path, tmp_path: Path
) -> None:
    ready = asyncio.run(provider(pebble, webroot).preflight(PreflightRequest("web-tls")))
    assert ready.readiness == Readiness.READY, ready.reason
    terms = provider(pebble, webroot, agree_to_terms=False)
    blocked = asyncio.run(terms.preflight(PreflightRequest("web-tls")))
    assert blocked.readiness == Readiness.BLOCKED
    assert blocked.reason.startswith("provider.agree_to_terms: ")
    with pytest.raises(PermanentError, match=r"^provider\.agree_to_terms: "):
        create(terms)
    missing = provider(pebble, tmp_path / "nowhere")
    blocked = asyncio.run(missing.preflight(PreflightRequest("web-tls")))
    assert blocked.readiness == Readiness.BLOCKED
    assert "provider.challenge.webroot" in blocked.reason


def test_an_unreachable_ca_blocks_preflight_as_transient_and_fails_create_as_transient(
    webroot: Path,
) -> None:
    config = {
        "directory_url": f"https://127.0.0.1:{free_port()}/dir",
        "domains": ["web.example.test"],
        "challenge": {"type": "http-01", "webroot": str(webroot)},
    }
    p = AcmeProvider(AcmeConfig(**config), PluginContext())
    result = asyncio.run(p.preflight(PreflightRequest("web-tls")))
    assert (result.readiness, result.transient) == (Readiness.BLOCKED, True)
    assert "cannot reach the ACME server 127.0.0.1:" in result.reason
    with pytest.raises(TransientError, match="cannot reach the ACME server"):
        create(p)


def test_an_untrusted_acme_server_certificate_is_refused_naming_ca_bundle(
    pebble: Pebble, webroot: Path, tls: TlsFiles
) -> None:
    """The `tls` fixture's CA is not the one pebble's certificate chains to."""
    p = provider(pebble, webroot, ca_bundle=str(tls.ca_path))
    with pytest.raises(PermanentError, match=r"is not trusted \(provider\.ca_bundle"):
        create(p)


def test_renew_before_longer_than_the_cas_validity_is_refused(
    pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    """pebble issues for 90 days here: renewal 100 days before not_after is due at once."""
    with pytest.raises(PermanentError, match=r"^provider\.renew_before: .* shorten renew_before"):
        create(provider(pebble, webroot, renew_before="100d"))


def test_a_rate_limit_is_waited_out_within_a_bound_then_retried_later(tls: TlsFiles) -> None:
    clock = FakeClock(datetime.now(UTC))
    with rate_limiting_ca(tls) as ca:
        config = {
            "directory_url": f"{ca.url}/dir",
            "ca_bundle": str(tls.ca_path),
            "domains": ["web.example.test"],
            "challenge": {"type": "http-01", "webroot": "/srv/www"},
        }
        ca.retry_after = "30"
        p = AcmeProvider(AcmeConfig(**config), clock.context())
        with pytest.raises(TransientError) as caught:
            create(p)
        limit = RATE_LIMIT_WAIT.total_seconds()
        assert clock.sleeps == [30.0] * int(limit // 30)
        assert len(ca.posts) == int(limit // 30) + 1
        assert caught.value.retry_after == 30.0
        assert "rate limiting keyshift (rateLimited: too many new registrations" in str(
            caught.value
        )

        ca.posts.clear()
        ca.retry_after = "3600"
        with pytest.raises(TransientError) as caught:
            create(p)
        assert len(ca.posts) == 1, "a wait past the bound is left to the engine"
        assert caught.value.retry_after == 3600.0


def test_capabilities_are_dual_active_and_renewal_is_due_renew_before_the_not_after(
    pebble: Pebble, webroot: Path
) -> None:
    p = provider(pebble, webroot, renew_before="12d")
    assert Capability.DUAL_ACTIVE in p.capabilities
    assert Capability.IN_PLACE not in p.capabilities
    assert AcmeProvider.rotate_before_expiry(p.config) == timedelta(days=12)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"directory_url": "http://ca.example/dir"}, "directory_url", "https://"),
        ({"domains": []}, "domains", "at least 1"),
        ({"domains": ["not a host!"]}, "domains", "not a DNS name or IP address"),
        ({"domains": ["a.example", "A.example"]}, "domains", "twice"),
        ({"domains": ["*.example.test"]}, "domains", "wildcard, which needs dns-01"),
        ({"key_type": "ed25519"}, "key_type", "do not issue for ed25519"),
        ({"contact": ["ops"]}, "contact", "not an email address"),
        ({"renew_before": "0s"}, "renew_before", "longer than 0s"),
        ({"account_key_from": "-----BEGIN PRIVATE KEY-----"}, "account_key_from", "env:NAME"),
        ({"challenge": {"type": "tls-alpn-01"}}, "challenge", "http-01"),
        ({"challenge": {"type": "http-01", "webroot": "www"}}, "challenge", "absolute"),
        ({"challenge": {"type": "dns-01", "hook": []}}, "challenge", "at least 1"),
        ({"eab_kid": "kid-1"}, "eab_hmac_key_from", "set both or neither"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
def test_a_bad_config_names_the_bad_field(
    overrides: dict[str, Any], field: str, words: str
) -> None:
    base = {
        "directory_url": "https://ca.example/dir",
        "domains": ["web.example.test"],
        "challenge": {"type": "http-01", "webroot": "/srv/www"},
    }
    with pytest.raises(ValidationError) as caught:
        AcmeConfig(**{**base, **overrides})
    [error] = caught.value.errors()
    assert error["loc"][0] == field
    assert words in str(error["msg"])
